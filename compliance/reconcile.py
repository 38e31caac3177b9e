"""Reconcile a silo's audit log with the coordinator's: every message has two ends.

A silo records ``message_sent`` (fields ``kind, size, sha256, round, study``) for each
message it sends and ``message_received`` for each it receives; the coordinator records
the same events with one more field, ``silo``, naming the peer. Each message must appear
at both ends with the same fields. A message only the silo logged was lost or dropped; a
message only the coordinator logged as coming *from* the silo is the one an auditor must
chase first (the silo never sent it: impersonation, or a silo that logs nothing).
Matching is one-to-one, so a message logged twice at one end shows up as unmatched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from compliance.audit import AuditEntry, Event, LogContents, canonical_json, read_log

MESSAGE_FIELDS = ("kind", "size", "sha256", "round", "study")


@dataclass(frozen=True)
class Reconciliation:
    silo: str
    coordinator: str
    matched: int
    only_at_silo: list[AuditEntry] = field(default_factory=list)
    only_at_coordinator: list[AuditEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.only_at_silo and not self.only_at_coordinator

    def describe(self, entry: AuditEntry) -> str:
        """One line an auditor can read.

        e.g. 'entry 9: update of round 3 (1,204 bytes, sha256 …) sent by silo-a; coordinator logged no receipt'
        """
        f = entry.fields
        size = f"{f['size']:,} bytes" if isinstance(f.get("size"), int) else "size unknown"
        what = (f"{f.get('kind', 'message')} of round {f.get('round')} "
                f"({size}, sha256 {str(f.get('sha256', '?'))[:12]}…)")
        here, peer = (self.silo, self.coordinator)
        if not any(e is entry for e in self.only_at_silo):
            here, peer = peer, here
        if entry.event == Event.MESSAGE_SENT:
            return f"entry {entry.index}: {what} sent by {here}; {peer} logged no receipt"
        return f"entry {entry.index}: {what} received by {here}; {peer} logged no such send"


def reconcile(silo_log: Path | LogContents, coordinator_log: Path | LogContents, *,
              study: str | None = None) -> Reconciliation:
    """Match the silo's messages with the coordinator's, both directions, one-to-one."""
    silo = silo_log if isinstance(silo_log, LogContents) else read_log(silo_log)
    coord = coordinator_log if isinstance(coordinator_log, LogContents) else read_log(coordinator_log)

    def at_silo(event: Event) -> list[AuditEntry]:
        return [e for e in silo.entries if e.event == event and _in_study(e, study)]

    def at_coordinator(event: Event) -> list[AuditEntry]:
        return [e for e in coord.entries if e.event == event and e.fields.get("silo") == silo.node
                and _in_study(e, study)]

    up, silo_sent, coord_received = _match(at_silo(Event.MESSAGE_SENT),
                                           at_coordinator(Event.MESSAGE_RECEIVED))
    down, coord_sent, silo_received = _match(at_coordinator(Event.MESSAGE_SENT),
                                             at_silo(Event.MESSAGE_RECEIVED))
    only_silo, only_coord = silo_sent + silo_received, coord_received + coord_sent
    return Reconciliation(silo.node, coord.node, up + down,
                          sorted(only_silo, key=lambda e: e.index),
                          sorted(only_coord, key=lambda e: e.index))


def _key(entry: AuditEntry) -> str:
    return canonical_json([entry.fields.get(name) for name in MESSAGE_FIELDS])


def _in_study(entry: AuditEntry, study: str | None) -> bool:
    return study is None or entry.fields.get("study") == study


def _match(sent: list[AuditEntry],
           received: list[AuditEntry]) -> tuple[int, list[AuditEntry], list[AuditEntry]]:
    """Pair sends with receipts of identical fields; return (pairs, lone sends, lone receipts)."""
    waiting: dict[str, list[AuditEntry]] = defaultdict(list)
    for entry in received:
        waiting[_key(entry)].append(entry)
    unmatched_sent = []
    matched = 0
    for entry in sent:
        candidates = waiting.get(_key(entry))
        if candidates:
            candidates.pop(0)
            matched += 1
        else:
            unmatched_sent.append(entry)
    return matched, unmatched_sent, [e for rest in waiting.values() for e in rest]
