"""Every refused stream message counted and written to the node's audit log, in bounded space.

A refusal is a message the silo did not store: malformed (quarantined with its reason) or over its
device's rate limit. Each is one `stream_refused` event in the node's hash-chained audit log
(`compliance.audit`, Crosby & Wallach 2009), but not one entry per message: the first refusal of a
(outcome, reason, receiver) is written at once with count 1; those that follow within `interval_s`
are counted in memory and written as one event with their count when the interval ends (the next
interval then starts, and one with no refusals closes it). A flood of refusals therefore writes at
most one entry per reason and receiver per interval, whatever its rate, and the log still holds
every refusal: the counts of one reason's events add up to the number of its refused messages.
A kill -9 loses at most one interval of counts from the log; the store's own quarantine and refusal
counts (`StreamStore.counts`) are committed before the sender hears the answer.
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

log = logging.getLogger(__name__)
#: (outcome, reason, receiver): "quarantined" / "refused", a reason code, "mqtt" / "http"
RefusalKey = tuple[str, str, str]


@dataclass
class _Tally:
    count: int
    first: float  # POSIX seconds
    last: float


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RefusalAudit:
    """`record` each refusal; a background thread writes the counts of each interval; `close` writes the rest."""

    def __init__(self, audit: AuditLog, *, interval_s: float) -> None:
        self.audit, self.interval_s = audit, interval_s
        self.totals: Counter[RefusalKey] = Counter()  # every refusal since start, by key
        self._ends: dict[RefusalKey, float] = {}  # monotonic end of each open interval
        self._pending: dict[RefusalKey, _Tally] = {}  # counted, not yet written
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-refusal-audit", daemon=True)
        self._thread.start()

    def record(self, outcome: str, reason: str, via: str) -> None:
        key, now = (outcome, reason, via), time.time()
        with self._lock:
            self.totals[key] += 1
            tally = self._pending.get(key)
            if tally is not None:
                tally.count, tally.last = tally.count + 1, now
            else:
                self._pending[key] = _Tally(1, now, now)
            if key not in self._ends:  # the first of an interval: in the log at once
                self._ends[key] = time.monotonic() + self.interval_s
                self._write(key)

    def flush_due(self, *, every: bool = False) -> None:
        """Write the counts of intervals that ended (all of them with `every`); close intervals without refusals."""
        now = time.monotonic()
        with self._lock:
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
        tally = self._pending.pop(key)
        outcome, reason, via = key
        try:
            self.audit.append(Event.STREAM_REFUSED, outcome=outcome, reason=reason, via=via, count=tally.count,
                              first=_iso(tally.first), last=_iso(tally.last))
        except (AuditLogError, sqlite3.Error, OSError) as e:  # kept, and tried again at the next flush: a count is never dropped
            log.error("stream refusals (%s %s via %s, %d) not yet in the audit log: %s", outcome, reason, via,
                      tally.count, e)
            self._pending[key] = tally

    def _run(self) -> None:
        tick = min(1.0, self.interval_s / 4)
        while not self._stopped.wait(tick):
            self.flush_due()
