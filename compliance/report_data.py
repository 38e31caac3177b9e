"""What a compliance report says, gathered from audit logs and the privacy ledger.

Plain data, no HTML: :mod:`compliance.report` renders it. Filtering by study keeps the
events of that study plus node-level events that name no study (an authentication
failure belongs to every study running at the time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from compliance.audit import AuditEntry, Event, LogContents, read_log
from compliance.ledger import LedgerRow, PrivacyLedger
from compliance.reconcile import Reconciliation, reconcile
from compliance.verify import VerifyResult, verify_logs

APPROVAL_EVENTS = {Event.STUDY_RECEIVED, Event.STUDY_APPROVED, Event.STUDY_REJECTED}
REFUSAL_EVENTS = {Event.STUDY_REJECTED, Event.ROUND_SKIPPED, Event.BUDGET_REFUSED,
                  Event.UPDATE_REFUSED, Event.AUTH_FAILURE}


@dataclass(frozen=True)
class LogSummary:
    path: Path
    node: str
    role: str
    public_key: str
    verification: VerifyResult


@dataclass(frozen=True)
class EventLine:
    node: str
    index: int
    timestamp: str
    event: str
    details: str


@dataclass(frozen=True)
class Budget:
    dataset: str
    epsilon: float        # PrivacyLedger.spent for this silo and dataset (study filter applied)
    delta: float          # sum of each study's latest delta (sequential composition)
    accountants: str


@dataclass
class SiloSection:
    name: str
    has_log: bool
    messages: list[AuditEntry] = field(default_factory=list)
    approvals: list[EventLine] = field(default_factory=list)
    refusals: list[EventLine] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    reconciliation: Reconciliation | None = None
    ledger_rows: list[LedgerRow] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)

    @property
    def bytes_sent(self) -> int:
        return sum(m.fields.get("size", 0) for m in self.messages if isinstance(m.fields.get("size"), int))


@dataclass
class ReportData:
    generated_at: str
    study: str | None
    silo: str | None
    ledger: list[Path]
    logs: list[LogSummary]
    silos: list[SiloSection]
    coordinator: str | None
    coordinator_events: list[EventLine]
    rounds: list[int]

    @property
    def all_verified(self) -> bool:
        return all(log.verification.ok for log in self.logs)

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes_sent for s in self.silos)

    @property
    def anomaly_count(self) -> int:
        return sum(len(s.anomalies) for s in self.silos)


def collect(*, logs: Sequence[Path], study: str | None = None, silo: str | None = None,
            ledger: Path | Sequence[Path] | None = None, keys: Mapping[str, str] | None = None) -> ReportData:
    """``keys``: each node's registered public key (hex); each log is verified against it and
    against every head the other logs witnessed for it (compliance.verify.verify_logs)."""
    contents = [read_log(Path(p)) for p in logs]
    summaries = [LogSummary(c.path, c.node, c.role, c.public_key, result)
                 for c, result in zip(contents, verify_logs(contents, keys=keys))]
    verified = {id(c): s.verification for c, s in zip(contents, summaries)}
    coordinator = _find_coordinator(contents)
    silo_logs = {c.node: c for c in contents if c is not coordinator}
    ledgers = [] if ledger is None else [Path(ledger)] if isinstance(ledger, (str, Path)) else [Path(p) for p in ledger]
    rows = [row for path in ledgers for row in _ledger_rows(path, study)]

    names = set(silo_logs) | {r.silo for r in rows}
    if coordinator is not None:
        names |= {e.fields["silo"] for e in coordinator.entries
                  if isinstance(e.fields.get("silo"), str) and _in_study(e, study)}
    if silo is not None:
        names &= {silo}

    sections = []
    for name in sorted(names):
        section = SiloSection(name, has_log=name in silo_logs)
        if name in silo_logs:
            _from_silo_log(section, silo_logs[name], verified[id(silo_logs[name])], study)
        else:
            section.anomalies.append(f"no audit log of silo {name} was supplied; what it sent "
                                     "is known only from the coordinator's side")
        if coordinator is not None:
            _from_coordinator(section, coordinator, silo_logs.get(name), study)
        section.ledger_rows = [r for r in rows if r.silo == name]
        section.budgets = _budgets(section.ledger_rows)
        sections.append(section)

    everything = [e for c in contents for e in c.entries if _in_study(e, study)]
    rounds = sorted({e.fields["round"] for e in everything if isinstance(e.fields.get("round"), int)})
    coord_events = [] if coordinator is None else [
        _line(e) for e in coordinator.entries if _in_study(e, study)
        and e.event in {Event.AGGREGATION, Event.MODEL_RELEASED, Event.AUTH_FAILURE, Event.UPDATE_REFUSED}
        and (silo is None or e.fields.get("silo") in (None, silo))]
    return ReportData(
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), study=study, silo=silo,
        ledger=ledgers, logs=summaries, silos=sections,
        coordinator=coordinator.node if coordinator else None, coordinator_events=coord_events,
        rounds=rounds,
    )


def _find_coordinator(contents: list[LogContents]) -> LogContents | None:
    """The log whose header says role=coordinator, else the one that records aggregations."""
    marked = [c for c in contents if c.role == "coordinator"]
    if marked:
        return marked[0]
    aggregating = [c for c in contents if any(e.event == Event.AGGREGATION for e in c.entries)]
    return aggregating[0] if aggregating else None


def _from_silo_log(section: SiloSection, log: LogContents, result: VerifyResult, study: str | None) -> None:
    if not result.ok:
        section.anomalies.append(f"the silo's audit log failed verification: {result.reason}")
    entries = [e for e in log.entries if _in_study(e, study)]
    section.messages = [e for e in entries if e.event == Event.MESSAGE_SENT]
    section.approvals = [_line(e) for e in entries if e.event in APPROVAL_EVENTS]
    section.refusals = [_line(e) for e in entries if e.event in REFUSAL_EVENTS]
    for before, after in zip(entries, entries[1:]):
        if after.timestamp < before.timestamp:
            section.anomalies.append(f"entry {after.index} is timestamped {after.timestamp}, "
                                     f"before entry {before.index} ({before.timestamp}): clock went back")


def _from_coordinator(section: SiloSection, coordinator: LogContents, silo_log: LogContents | None,
                      study: str | None) -> None:
    about = [e for e in coordinator.entries if e.fields.get("silo") == section.name and _in_study(e, study)]
    section.refusals += [_line(e) for e in about if e.event in REFUSAL_EVENTS]
    for e in about:
        if e.event == Event.AUTH_FAILURE:
            section.anomalies.append(f"coordinator entry {e.index}: authentication failure "
                                     f"claiming to be {section.name} ({_details(e)})")
    if silo_log is not None:
        rec = reconcile(silo_log, coordinator, study=study)
        section.reconciliation = rec
        section.anomalies += [rec.describe(e) for e in rec.only_at_silo + rec.only_at_coordinator]


def _ledger_rows(ledger: Path, study: str | None) -> list[LedgerRow]:
    with PrivacyLedger(ledger) as book:
        return book.rows(study)


def _budgets(rows: list[LedgerRow]) -> list[Budget]:
    latest: dict[tuple[str, str], LedgerRow] = {}
    for row in rows:  # oldest first
        latest[(row.dataset, row.study)] = row
    budgets = []
    for dataset in sorted({d for d, _ in latest}):
        last = [r for (d, _), r in latest.items() if d == dataset]
        budgets.append(Budget(dataset, sum(r.epsilon for r in last), sum(r.delta for r in last),
                              ", ".join(sorted({r.accountant for r in last}))))
    return budgets


def _in_study(entry: AuditEntry, study: str | None) -> bool:
    return study is None or entry.fields.get("study", study) == study


def _details(entry: AuditEntry) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(entry.fields.items()))


def _line(entry: AuditEntry) -> EventLine:
    return EventLine(entry.node, entry.index, entry.timestamp, entry.event, _details(entry))
