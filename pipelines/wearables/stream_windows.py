"""Incremental windowing of streamed recordings: windows kept up to date as samples arrive, read per snapshot.

A study windows each (patient, device) recording of the stream store the way it windows a file
(`recordings.window` after `mapping.to_recording`). Re-windowing every recording at every snapshot
grows with the store; instead the windows of each registered `WindowSpec` (the study's channels,
rate, length and the node's `[wearables]` mapping) are kept in the store:

- a study's ingestion registers its spec (`register`), windows the snapshot once and caches the
  window of each recording under its *version*, the recording's newest row sequence number in the
  snapshot (`read_snapshot`);
- while samples arrive, the receiver's `WindowKeeper` re-windows only the recordings that received
  samples, at most every `every_s`, for every registered spec, and caches the new versions;
- a later snapshot takes a recording's cached window when its version is the recording's version in
  that snapshot, and windows only the others (`reused` / `windowed` in the ingest report's signal counts).

A cached window is the window of exactly the rows of that recording up to its version, computed by the
same function, so a snapshot reads the same windows whether they came from the cache or not, however
much data arrives meanwhile (the cache keeps the newest `KEEP_VERSIONS` per recording; an older snapshot
windows again). Cached windows have no index-date cut; one is used only for a patient whose index date
ends after the recording's last sample (where the cut changes nothing); the others are windowed with the cut.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from ..errors import SignalError
from .device import DeviceRecording, series
from .mapping import WearableMapping, to_recording
from .sampled import cutoff

log = logging.getLogger(__name__)
KEEP_VERSIONS = 2  # cached windows per (spec, recording): the newest, and the one a snapshot taken just before may name

SCHEMA = """
CREATE TABLE IF NOT EXISTS window_specs (key TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (spec TEXT NOT NULL, patient TEXT NOT NULL, device TEXT NOT NULL,
    version INTEGER NOT NULL, last REAL NOT NULL, window TEXT NOT NULL, values_f32 BLOB,
    PRIMARY KEY (spec, patient, device, version));
"""
Pair = tuple[str, str]  # (patient pseudonym, device token): one streamed recording


@dataclass(frozen=True)
class WindowSpec:
    """What a study's windows depend on besides the samples."""

    channels: tuple[str, ...]
    rate_hz: float
    length: int
    mapping: WearableMapping

    def to_json(self) -> str:
        return json.dumps({"channels": list(self.channels), "rate_hz": self.rate_hz, "length": self.length,
                           "mapping": self.mapping.model_dump(mode="json")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WindowSpec:
        d = json.loads(text)
        return cls(tuple(d["channels"]), float(d["rate_hz"]), int(d["length"]), WearableMapping(**d["mapping"]))

    @property
    def key(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StreamWindow:
    """One recording windowed: the window's fields, or the refusal (`reason`, `message`); `used`/`unused` channels."""

    used: dict[str, str]  # native -> study channel
    unused: list[str]
    values: np.ndarray | None = None  # float32 [C, L]
    coverage: float = 0.0
    end: float = 0.0
    hours: float = 0.0
    reason: str | None = None
    message: str | None = None
    source: str | None = None

    def error(self) -> SignalError | None:
        """The refusal as the quarantine records it, or None."""
        return None if self.reason is None else SignalError(self.message or "", reason=self.reason, source=self.source)

    def _fields(self) -> str:
        return json.dumps({"used": self.used, "unused": self.unused, "coverage": self.coverage, "end": self.end,
                           "hours": self.hours, "reason": self.reason, "message": self.message, "source": self.source,
                           "shape": list(self.values.shape) if self.values is not None else None})

    @classmethod
    def _load(cls, fields: str, blob: bytes | None) -> StreamWindow:
        d = json.loads(fields)
        shape = d.pop("shape")
        values = np.frombuffer(blob, dtype=np.float32).reshape(shape).copy() if shape is not None else None
        return cls(values=values, **d)


def source_of(device: str) -> str:
    """How a streamed recording is named in quarantine entries and windows (the device's keyed token)."""
    return f"stream device {device}"


def _recording(db: sqlite3.Connection, pair: Pair, upto: int) -> tuple[DeviceRecording, int, float]:
    """The recording's rows up to sequence number `upto`: as a device recording, its version and its last sample."""
    rows = db.execute("SELECT channel, t, v, seq FROM samples WHERE patient = ? AND device = ? AND seq <= ? "
                      "ORDER BY channel, t", (*pair, upto)).fetchall()
    names = np.array([r[0] for r in rows], dtype=object)
    t, v, seq = (np.array([r[k] for r in rows], dtype=np.float64) for k in (1, 2, 3))
    chans = {str(n): series(t[names == n], v[names == n]) for n in dict.fromkeys(names.tolist())}
    version, last = (int(seq.max()), float(t.max())) if rows else (0, float("-inf"))
    return DeviceRecording(pair[0], chans, source_of(pair[1])), version, last


def recordings(db: sqlite3.Connection, upto: int) -> Iterator[DeviceRecording]:
    """Every recording of the snapshot of rows 1..`upto`, by (pseudonym, device)."""
    for pair in db.execute("SELECT DISTINCT patient, device FROM samples WHERE seq <= ? ORDER BY patient, device",
                           (upto,)).fetchall():
        yield _recording(db, pair, upto)[0]


def window_of(dev: DeviceRecording, spec: WindowSpec, index_date: date | None) -> StreamWindow:
    """`dev` windowed for `spec` (cut at the index date, unless None), or the reason it cannot be."""
    from .recordings import (
        window,  # pandas: only when windowing, not in the receivers' start-up
    )

    try:
        rec, used = to_recording(dev, spec.channels, spec.mapping)
        unused = sorted(set(dev.channels) - set(used))
        w = window(rec, spec.channels, rate_hz=spec.rate_hz, length=spec.length, index_date=index_date)
    except SignalError as e:
        return StreamWindow({}, [], reason=e.reason, message=str(e).removeprefix(f"{e.source}: "), source=e.source)
    if w is None:
        return StreamWindow(used, unused)
    return StreamWindow(used, unused, w.values, w.coverage, w.end, w.hours)


def _cache(db: sqlite3.Connection, spec: WindowSpec, pair: Pair, version: int, last: float, w: StreamWindow) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT OR IGNORE INTO windows VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (spec.key, *pair, version, last, w._fields(),
                    w.values.astype(np.float32).tobytes() if w.values is not None else None))
        db.execute("DELETE FROM windows WHERE spec = ? AND patient = ? AND device = ? AND version NOT IN "
                   "(SELECT version FROM windows WHERE spec = ? AND patient = ? AND device = ? "
                   "ORDER BY version DESC LIMIT ?)", (spec.key, *pair, spec.key, *pair, KEEP_VERSIONS))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def register(db: sqlite3.Connection, spec: WindowSpec) -> None:
    """From now on the receivers keep `spec`'s windows up to date."""
    db.executescript(SCHEMA)
    db.execute("INSERT OR IGNORE INTO window_specs VALUES (?, ?)", (spec.key, spec.to_json()))


@dataclass
class SnapshotWindows:
    """`read_snapshot`'s counts: windows taken from the cache, and windowed now."""

    reused: int = 0
    windowed: int = 0


def read_snapshot(db: sqlite3.Connection, upto: int, spec: WindowSpec, index_date_of: Callable[[str], date],
                  counts: SnapshotWindows) -> Iterator[tuple[str, str, StreamWindow]]:
    """(pseudonym, device, window) of every recording in the snapshot of rows 1..`upto`, cut at each patient's
    index date; cached windows are used where they stand for exactly the snapshot's rows (module docstring)."""
    register(db, spec)
    pairs = db.execute("SELECT patient, device, MAX(seq), MAX(t) FROM samples WHERE seq <= ? GROUP BY patient, device "
                       "ORDER BY patient, device", (upto,)).fetchall()
    for patient, device, version, last in pairs:
        own = index_date_of(patient)
        uncut = cutoff(own) > last  # the index date ends after the last sample: the cut changes nothing
        row = db.execute("SELECT window, values_f32 FROM windows WHERE spec = ? AND patient = ? AND device = ? AND "
                         "version = ?", (spec.key, patient, device, version)).fetchone() if uncut else None
        if row is not None:
            counts.reused += 1
            yield patient, device, StreamWindow._load(*row)
            continue
        dev, _, _ = _recording(db, (patient, device), version)
        w = window_of(dev, spec, None if uncut else own)
        if uncut:
            _cache(db, spec, (patient, device), version, last, w)
        counts.windowed += 1
        yield patient, device, w


class WindowKeeper:
    """In the receiver: re-windows the recordings that received samples, for every registered spec, every `every_s`.

    `touched(batches)` is called by the store's writer after each commit; the work runs on this
    thread with its own connection, so acknowledgements never wait for windowing."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, every_s: float) -> None:
        self._connect, self.every_s = connect, every_s
        self._touched: set[Pair] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.refreshed = 0  # windows computed and cached
        self._thread = threading.Thread(target=self._run, name="stream-window-keeper", daemon=True)
        self._thread.start()

    def touched(self, pairs: Iterable[Pair]) -> None:
        with self._lock:
            self._touched.update(pairs)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()

    def refresh(self, db: sqlite3.Connection) -> None:
        """Window every touched recording for every registered spec, at its newest version."""
        with self._lock:
            pairs, self._touched = sorted(self._touched), set()
        if not pairs:
            return
        db.executescript(SCHEMA)
        specs = [WindowSpec.from_json(s) for (s,) in db.execute("SELECT spec FROM window_specs").fetchall()]
        if not specs:
            return
        for pair in pairs:
            dev, version, last = _recording(db, pair, 2**62)
            for spec in specs:
                _cache(db, spec, pair, version, last, window_of(dev, spec, None))
                self.refreshed += 1

    def _run(self) -> None:
        db = self._connect()
        try:
            while not self._stopped.wait(self.every_s):
                try:
                    self.refresh(db)
                except (sqlite3.Error, OSError) as e:  # a cache only: the next snapshot windows these itself
                    log.error("stream windows not refreshed (%s); snapshots window these recordings themselves", e)
        finally:
            db.close()


def pairs_of(batches: Sequence) -> set[Pair]:
    """The recordings a group of `SampleBatch`es added samples to."""
    return {(b.patient, b.device) for b in batches}
