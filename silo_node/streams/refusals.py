"""Every refused stream message counted, and recorded in the store and the node's audit log in bounded space.

A refusal is a message the silo did not store: malformed (quarantined with its reason) or over its
device's rate limit. Each is counted in a `stream_refused` event of the node's hash-chained audit log
(`compliance.audit`, Crosby & Wallach 2009) and in the stream store's quarantine or refusals table,
but not one entry per message: the first refusal of an (outcome, reason, receiver) is written at once,
in the log with count 1 and in the store as its own row with its message (`record` returns True and
the caller writes that row before answering the sender); those that follow within `interval_s` are
counted in memory and written when the interval ends as one event and one store row with their number
(the next interval then starts; one with no refusals closes it). A flood of refusals therefore writes
at most two log entries and two store rows per reason and receiver per interval, whatever its rate,
and the counts of one reason still add up to the number of its refused messages. A kill -9 loses the
counts of at most one interval (the refused messages carried no samples: nothing stored is lost).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from compliance.audit import AuditLog, Event
from compliance.errors import AuditLogError
from pipelines.wearables.stream_store import StreamStore

from .outcome import Outcome

log = logging.getLogger(__name__)
#: (outcome, reason, receiver): Outcome.QUARANTINED / REFUSED, a reason code, "mqtt" / "http"
RefusalKey = tuple[str, str, str]


@dataclass
class _Tally:
    count: int
    first: float  # POSIX seconds
    last: float
    samples: int = 0  # of the refused messages (a rate-limited message's samples)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RefusalAudit:
    """`record` each refusal; a background thread writes the counts of each interval; `close` writes the rest."""

    def __init__(self, audit: AuditLog, store: StreamStore, *, interval_s: float) -> None:
        self.audit, self.store, self.interval_s = audit, store, interval_s
        self.totals: Counter[RefusalKey] = Counter()  # every refusal since start, by key
        self._ends: dict[RefusalKey, float] = {}  # monotonic end of each open interval
        self._pending: dict[RefusalKey, _Tally] = {}  # counted, not yet written
        self._unaudited: list[tuple[RefusalKey, _Tally]] = []  # written to the store, the audit log failed: retried
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-refusal-audit", daemon=True)
        self._thread.start()

    def record(self, outcome: str, reason: str, via: str, *, samples: int = 0) -> bool:
        """Count one refusal; True when it is the first of its interval (the caller stores it as its own row)."""
        key, now = (outcome, reason, via), time.time()
        with self._lock:
            self.totals[key] += 1
            if key not in self._ends:  # the first of an interval: in the log at once
                self._ends[key] = time.monotonic() + self.interval_s
                self._audit(key, _Tally(1, now, now, samples))
                return True
            tally = self._pending.get(key)
            if tally is not None:
                tally.count, tally.last, tally.samples = tally.count + 1, now, tally.samples + samples
            else:
                self._pending[key] = _Tally(1, now, now, samples)
            return False

    def flush_due(self, *, every: bool = False) -> None:
        """Write the counts of intervals that ended (all of them with `every`); close intervals without refusals."""
        now = time.monotonic()
        with self._lock:
            retry, self._unaudited = self._unaudited, []
            for key, tally in retry:
                self._audit(key, tally)
            for key, end in list(self._ends.items()):
                if not every and end > now:
                    continue
                if key in self._pending:
                    self._write(key)
                    self._ends[key] = now + self.interval_s
                else:
                    del self._ends[key]

    def close(self) -> None:
        """Stop the background writer and write every count not yet in the log."""
        self._stopped.set()
        self._thread.join()
        self.flush_due(every=True)

    def _write(self, key: RefusalKey) -> None:
        """The pending count of `key`: one store row, one audit event."""
        tally = self._pending.pop(key)
        outcome, reason, via = key
        try:
            if outcome == Outcome.QUARANTINED:
                self.store.quarantine_more(reason, tally.count, f"{via} (devices not kept for counted messages)")
            else:
                self.store.refuse_more(reason, tally.count, tally.samples)
        except (sqlite3.Error, OSError) as e:  # kept, and tried again at the next flush
            log.error("stream refusals (%s %s via %s, %d) not yet in the stream store: %s", outcome, reason, via,
                      tally.count, e)
            self._pending[key] = tally
            return
        self._audit(key, tally)

    def _audit(self, key: RefusalKey, tally: _Tally) -> None:
        outcome, reason, via = key
        try:
            self.audit.append(Event.STREAM_REFUSED, outcome=outcome, reason=reason, via=via, count=tally.count,
                              first=_iso(tally.first), last=_iso(tally.last))
        except (AuditLogError, sqlite3.Error, OSError) as e:  # kept, and tried again at the next flush
            log.error("stream refusals (%s %s via %s, %d) not yet in the audit log: %s", outcome, reason, via,
                      tally.count, e)
            self._unaudited.append((key, tally))

    def _run(self) -> None:
        tick = min(1.0, self.interval_s / 4)
        while not self._stopped.wait(tick):
            self.flush_due()
