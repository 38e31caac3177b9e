"""The silo's store of streamed wearable samples, and the snapshot a study is windowed from.

Live streams (MQTT, HTTPS: `silo_node.streams`) arrive as `SampleBatch`es already de-identified
(the patient is the keyed pseudonym of `pipelines.deid`, the device an opaque keyed token). They
are appended to one SQLite database in WAL mode with `synchronous=FULL` (https://sqlite.org/wal.html):
a batch is acknowledged to its sender only after the transaction holding it has committed, so
an acknowledged sample survives a kill -9 or a power cut. One writer thread takes batches from a
bounded queue (`StreamWriter`): when the queue is full the receivers refuse to acknowledge
(backpressure reaches the devices), and batches waiting together commit together (group commit).
A sample redelivered by an at-least-once transport (MQTT QoS 1) is stored once:
(patient, device, channel, time) is unique and the first value wins, as in `device.series`.

A round does not read the live table: `StreamStore.snapshot(at)` fixes the rows that had committed
by `at` (arrival time, monotone in the row sequence), with their count and SHA-256, so the same
snapshot always gives the same windows however much data arrives later, and the audit names
exactly what a study trained on. `snapshot.recordings()` yields `DeviceRecording`s like the file
readers (`pipelines.wearables.registry`), keyed by pseudonym; `snapshot_step` windows them inside
ingestion (`pipelines.ingest.STEPS`) exactly as a recording file is windowed: before each patient's own
index date, taking the windows the receivers keep up to date as samples arrive where they stand for
exactly the snapshot's rows (incremental windowing: `pipelines.wearables.stream_windows`).
Malformed messages and refused ones (rate limits) are recorded with their reason, never stored as samples;
the receivers write the first of each reason in an interval as its own row and the rest as one row
with their number (`messages`), so a flood of refusals cannot fill the disk (`silo_node.streams.refusals`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from ..errors import PipelineError, SignalError
from .device import DeviceRecording

if TYPE_CHECKING:  # windowing needs pandas and torch; the stream receivers only store, and start fast without them
    from ..steps import IngestRun, Step

log = logging.getLogger(__name__)
DB_NAME = "streams.sqlite"
STREAM_DEVICE = "stream"  # the device name in the ingest report's signal sources
MAX_DETAIL = 500  # characters of a quarantine or refusal message kept

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY, received REAL NOT NULL, patient TEXT NOT NULL,
    device TEXT NOT NULL, channel TEXT NOT NULL, t REAL NOT NULL, v REAL NOT NULL, UNIQUE (patient, device, channel, t));
CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, received REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL, messages INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS refusals (id INTEGER PRIMARY KEY, received REAL NOT NULL, device TEXT NOT NULL,
    reason TEXT NOT NULL, samples INTEGER NOT NULL, messages INTEGER NOT NULL DEFAULT 1);
"""
REFUSAL_TABLES = ("quarantine", "refusals")  # `messages`: how many refused messages a row stands for


class StreamStoreError(PipelineError):
    """The stream store cannot be opened or a snapshot cannot be taken."""


class StoreBusy(StreamStoreError):
    """The writer's queue is full: the sender must retry later (it was not acknowledged)."""


@dataclass(frozen=True)
class SampleBatch:
    """De-identified samples of one channel from one device: `seconds` (POSIX, UTC) and `values`, both float64 [n]."""

    patient: str  # keyed pseudonym
    device: str  # keyed device token
    channel: str  # the device's channel name (mapped to the study's channels at windowing)
    seconds: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.seconds.size)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns: acks follow commits
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        for table in REFUSAL_TABLES:  # a store written before rows could stand for several messages
            if "messages" not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN messages INTEGER NOT NULL DEFAULT 1")
    except sqlite3.Error as e:
        raise StreamStoreError(f"stream store {path} cannot be opened ({e}); expected a writable SQLite file under the "
                               "node's state_dir. Check the disk and the file's permissions") from None
    return db


@dataclass(frozen=True)
class Snapshot:
    """The rows committed by `at` (POSIX seconds): sequence numbers 1..`upto`, `samples` rows, their SHA-256; the
    messages quarantined and refused by then, by reason."""

    path: Path
    at: float
    upto: int
    samples: int
    sha256: str
    quarantined: dict[str, int]
    refused: dict[str, int]

    def audit(self) -> dict:
        """What the audit log records about the snapshot a study trained on (counts and a digest, no identifiers)."""
        return {"at": self.at, "upto_seq": self.upto, "samples": self.samples, "sha256": self.sha256,
                "quarantined": self.quarantined, "refused": self.refused}

    def recordings(self) -> Iterator[DeviceRecording]:
        """One `DeviceRecording` per (pseudonym, device): the snapshot's samples, channels by the device's names."""
        from .stream_windows import recordings

        db = _connect(self.path)
        try:
            yield from recordings(db, self.upto)
        finally:
            db.close()


class StreamStore:
    """Append-only SQLite store of streamed samples under the node's state_dir (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._db = _connect(self.path)
        self._lock = threading.Lock()
        last = self._db.execute("SELECT MAX(received) FROM samples").fetchone()[0]
        self._clock = float(last or 0.0)

    def close(self) -> None:
        self._db.close()

    def connect(self) -> sqlite3.Connection:
        """A connection of its own to the store's database, for work on another thread (`stream_windows`)."""
        return _connect(self.path)

    def __enter__(self) -> "StreamStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> float:
        """Arrival time, never earlier than a stored one (a snapshot bound must cut the sequence once)."""
        self._clock = max(self._clock, time.time())
        return self._clock

    def append(self, batches: Sequence[SampleBatch]) -> int:
        """Commit `batches` in one durable transaction; the number of new samples (redelivered ones are not new)."""
        with self._lock:
            received = self._now()
            rows = [(received, b.patient, b.device, b.channel, float(ti), float(vi))
                    for b in batches for ti, vi in zip(b.seconds.tolist(), b.values.tolist())]
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO samples (received, patient, device, channel, t, v) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def quarantine(self, source: str, error: SignalError) -> None:
        """A malformed message: its reason and message (never its payload), committed before the sender hears no."""
        with self._lock:
            self._db.execute("INSERT INTO quarantine (received, source, reason, message) VALUES (?, ?, ?, ?)",
                             (time.time(), source[:MAX_DETAIL], error.reason, str(error)[:MAX_DETAIL]))

    def refuse(self, device: str, reason: str, samples: int) -> None:
        """A well-formed message refused (a device over its rate limit), recorded for the audit."""
        with self._lock:
            self._db.execute("INSERT INTO refusals (received, device, reason, samples) VALUES (?, ?, ?, ?)",
                             (time.time(), device, reason, samples))

    def quarantine_more(self, reason: str, messages: int, detail: str) -> None:
        """`messages` more malformed messages of `reason` in one row (a flood is counted, not written row by row)."""
        with self._lock:
            self._db.execute("INSERT INTO quarantine (received, source, reason, message, messages) VALUES (?, ?, ?, ?, ?)",
                             (time.time(), detail[:MAX_DETAIL], reason, f"{messages} more messages refused as {reason}",
                              messages))

    def refuse_more(self, reason: str, messages: int, samples: int) -> None:
        """`messages` more refusals of `reason` (`samples` in all, from any device) in one row."""
        with self._lock:
            self._db.execute("INSERT INTO refusals (received, device, reason, samples, messages) VALUES (?, ?, ?, ?, ?)",
                             (time.time(), "", reason, samples, messages))

    def counts(self) -> dict[str, object]:
        """Samples stored, quarantined messages and refusals by reason."""
        with self._lock:
            q = self._db.execute("SELECT reason, SUM(messages) FROM quarantine GROUP BY reason").fetchall()
            r = self._db.execute("SELECT reason, SUM(messages) FROM refusals GROUP BY reason").fetchall()
            n = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        return {"samples": int(n), "quarantined": dict(q), "refused": dict(r)}

    def snapshot(self, at: float | None = None) -> Snapshot:
        """The rows committed by `at` (default: now); the same `at` later gives the same rows."""
        with self._lock:
            now = self._now()
            at = now if at is None else float(at)
            if at > now:
                raise StreamStoreError(f"snapshot time {at:.3f} is in the future (now {now:.3f}); expected a time "
                                       "already passed, so the rows it names can no longer change")
            upto = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM samples WHERE received <= ?", (at,)).fetchone()[0]
            h, n = hashlib.sha256(), 0
            for row in self._db.execute("SELECT patient, device, channel, t, v FROM samples WHERE seq <= ? ORDER BY seq",
                                        (upto,)):
                h.update("\0".join(row[:3]).encode() + struct.pack("<dd", row[3], row[4]))
                n += 1
            by_reason = {table: dict(self._db.execute(f"SELECT reason, SUM(messages) FROM {table} WHERE received <= ? "
                                                      "GROUP BY reason ORDER BY reason", (at,)).fetchall())
                         for table in REFUSAL_TABLES}
        return Snapshot(self.path, at, int(upto), n, h.hexdigest(), by_reason["quarantine"], by_reason["refusals"])


@dataclass
class _Pending:
    batches: Sequence[SampleBatch]
    done: Callable[[BaseException | None], None]  # called once committed (None) or failed (the error)


class StreamWriter:
    """One thread appending batches from a bounded queue to the store, then calling each batch's `done`.

    `submit` raises `StoreBusy` when `capacity` batches are waiting: the receivers then withhold the
    acknowledgement (MQTT) or answer 503 (HTTP), so a slow disk slows the senders instead of growing memory.
    """

    def __init__(self, store: StreamStore, *, capacity: int = 1000, max_group: int = 256,
                 on_commit: Callable[[Sequence[SampleBatch]], None] | None = None) -> None:
        self.store, self.on_commit = store, on_commit  # on_commit(batches) after they committed (the window keeper)
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=capacity)
        self._max_group = max_group
        self.stats: Counter = Counter()
        self._thread = threading.Thread(target=self._run, name="stream-writer", daemon=True)
        self._thread.start()

    def submit(self, batches: Sequence[SampleBatch], done: Callable[[BaseException | None], None], *,
               wait_s: float = 0.0) -> None:
        """Queue `batches`; `done(None)` once committed. Waits up to `wait_s` for room, then raises `StoreBusy`."""
        try:
            self._queue.put(_Pending(batches, done), timeout=wait_s) if wait_s > 0 else self._queue.put_nowait(
                _Pending(batches, done))
        except queue.Full:
            self.stats["busy"] += 1
            raise StoreBusy(f"the stream store's queue is full ({self._queue.maxsize} batches waiting); retry later")

    def close(self) -> None:
        """Commit what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(item)
            try:
                batches = [b for p in group for b in p.batches]
                self.stats["stored"] += self.store.append(batches)
                error: BaseException | None = None
                if self.on_commit is not None:
                    self.on_commit(batches)
            except (sqlite3.Error, OSError) as e:  # nothing of the group is acknowledged; senders retry
                log.error("stream store commit failed (%s); %d messages not acknowledged", e, len(group))
                error = e
            for p in group:
                p.done(error)


def snapshot_step(snapshot: Snapshot) -> "Step":
    """The ingestion step windowing the snapshot's recordings as `pipelines.wearables.signals` windows files, taking
    the windows the receivers kept up to date where they stand for the snapshot's rows (`stream_windows`)."""

    from .sampled import cutoff
    from .signals import ChosenSignal
    from .stream_windows import SnapshotWindows, WindowSpec, read_snapshot, source_of

    def read_stream_snapshot(run: "IngestRun") -> None:
        assert run.latest is not None, "allocate_rows runs before read_stream_snapshot"
        spec = WindowSpec(tuple(run.cohort.signal_channels), run.cohort.signal_rate_hz, run.cohort.signal_length,
                          run.sources.wearable_mapping)

        def index_date_of(patient: str) -> date:
            return run.index_date + timedelta(days=run.index_days.get(patient, 0))

        counts = SnapshotWindows()
        db = _connect(snapshot.path)
        try:
            for patient, _device, w in read_snapshot(db, snapshot.upto, spec, index_date_of, counts):
                run.signal_stats["records"] += 1
                run.wearable_notes.devices[STREAM_DEVICE] += 1
                error = w.error()
                if error is not None:
                    run.quarantine.add("signal", error)
                    continue
                run.wearable_notes.add(STREAM_DEVICE, w.used, w.unused)
                if w.values is None:
                    run.signal_stats["unused_after_index_date"] += 1
                    continue
                run.latest.offer(patient, ChosenSignal(w.values, w.coverage, w.end - cutoff(index_date_of(patient)),
                                                       source_of(_device), w.hours))
        finally:
            db.close()
        run.signal_stats["cached"] += counts.reused  # windows the receivers kept up to date, not windowed again

    return read_stream_snapshot


def with_snapshot(steps: Sequence["Step"], snapshot: Snapshot | None) -> tuple["Step", ...]:
    """`steps` (unchanged without a snapshot) with the snapshot read right after the wearable files (before the signal report is made)."""
    if snapshot is None:
        return tuple(steps)
    from ..steps import read_wearable_files

    at = list(steps).index(read_wearable_files) + 1
    return (*steps[:at], snapshot_step(snapshot), *steps[at:])
