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
from compliance.report_words import describe_kind, plain_fields, plain_time
from compliance.verify import VerifyResult, verify_logs

APPROVAL_EVENTS = {Event.STUDY_RECEIVED, Event.STUDY_APPROVED, Event.STUDY_REJECTED}
REFUSAL_EVENTS = {Event.STUDY_REJECTED, Event.ROUND_SKIPPED, Event.BUDGET_REFUSED,
                  Event.UPDATE_REFUSED, Event.AUTH_FAILURE, Event.STREAM_REFUSED}


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
class MessageLine:
    """One message a silo's log says it sent, with what protected it."""

    index: int
    time: str
    study: str
    round: int | None
    kind: str
    size: int
    sha256: str
    dp_noised: bool | None   # an update whose entry names the ε it was trained under; None: the log does not say
    encrypted: bool | None   # from the coordinator's aggregation of that round; None: no coordinator log for it

    @property
    def protection(self) -> str:
        if self.kind != "update":
            return "-"
        words = {True: "", False: "not ", None: "? "}
        return f"{words[self.dp_noised]}DP-noised, {words[self.encrypted]}encrypted"


@dataclass(frozen=True)
class KindTotal:
    kind: str
    description: str
    count: int
    size: int


@dataclass(frozen=True)
class Budget:
    dataset: str
    epsilon: float        # PrivacyLedger.spent for this silo and dataset (study filter applied)
    delta: float          # sum of each study's latest delta (sequential composition)
    accountants: str
    cap: float | None = None  # the node's epsilon_cap for this dataset, from its node_configured entries

    @property
    def within_cap(self) -> bool | None:
        return None if self.cap is None else self.epsilon <= self.cap


@dataclass
class SiloSection:
    name: str
    has_log: bool
    messages: list[MessageLine] = field(default_factory=list)
    approvals: list[EventLine] = field(default_factory=list)
    refusals: list[EventLine] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    reconciliation: Reconciliation | None = None
    ledger_rows: list[LedgerRow] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    epsilon_caps: dict[str, float] = field(default_factory=dict)  # dataset -> cap, as the node was configured

    @property
    def bytes_sent(self) -> int:
        return sum(m.size for m in self.messages)

    @property
    def kinds(self) -> list[KindTotal]:
        """Messages per kind: what it is, how many, how many bytes."""
        kinds = sorted({m.kind for m in self.messages})
        return [KindTotal(k, describe_kind(k), sum(1 for m in self.messages if m.kind == k),
                          sum(m.size for m in self.messages if m.kind == k)) for k in kinds]


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
    rounds: list[int]  # training rounds: aggregated at the coordinator (or, without its log, with an update sent)

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
    aggregations = [] if coordinator is None else [
        e for e in coordinator.entries if e.event == Event.AGGREGATION and _in_study(e, study)]
    encrypted = {(e.fields.get("study"), e.fields.get("round")): e.fields.get("encrypted") for e in aggregations}

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
            _from_silo_log(section, silo_logs[name], verified[id(silo_logs[name])], study, encrypted)
        else:
            section.anomalies.append(f"no audit log of silo {name} was supplied; what it sent "
                                     "is known only from the coordinator's side")
        if coordinator is not None:
            _from_coordinator(section, coordinator, silo_logs.get(name), study)
        section.ledger_rows = [r for r in rows if r.silo == name]
        section.budgets = _budgets(section.ledger_rows, section.epsilon_caps)
        sections.append(section)

    if aggregations:
        rounds = sorted({e.fields["round"] for e in aggregations if isinstance(e.fields.get("round"), int)})
    else:
        rounds = sorted({m.round for s in sections for m in s.messages if m.kind == "update" and m.round is not None})
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


def _from_silo_log(section: SiloSection, log: LogContents, result: VerifyResult, study: str | None,
                   encrypted: dict[tuple[object, object], object]) -> None:
    if not result.ok:
        section.anomalies.append(f"the silo's audit log failed verification: {result.reason}")
    for e in log.entries:
        cap = e.fields.get("epsilon_cap")
        if e.event == Event.NODE_CONFIGURED and isinstance(cap, (int, float)):
            section.epsilon_caps[str(e.fields.get("dataset", ""))] = float(cap)
    entries = [e for e in log.entries if _in_study(e, study)]
    section.messages = [_message(e, encrypted) for e in entries if e.event == Event.MESSAGE_SENT]
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


def _message(entry: AuditEntry, encrypted: dict[tuple[object, object], object]) -> MessageLine:
    f = entry.fields
    kind, rnd, size = str(f.get("kind", "")), f.get("round"), f.get("size")
    dp_noised = encrypted_flag = None
    if kind == "update":
        if "epsilon" in f:
            dp_noised = isinstance(f["epsilon"], (int, float)) and f["epsilon"] > 0
        flag = encrypted.get((f.get("study"), rnd))
        encrypted_flag = flag if isinstance(flag, bool) else None
    return MessageLine(entry.index, plain_time(entry.timestamp), str(f.get("study", "")),
                       rnd if isinstance(rnd, int) else None, kind, size if isinstance(size, int) else 0,
                       str(f.get("sha256", "")), dp_noised, encrypted_flag)


def _budgets(rows: list[LedgerRow], caps: dict[str, float]) -> list[Budget]:
    latest: dict[tuple[str, str], LedgerRow] = {}
    for row in rows:  # oldest first
        latest[(row.dataset, row.study)] = row
    budgets = []
    for dataset in sorted({d for d, _ in latest}):
        last = [r for (d, _), r in latest.items() if d == dataset]
        budgets.append(Budget(dataset, sum(r.epsilon for r in last), sum(r.delta for r in last),
                              ", ".join(sorted({r.accountant for r in last})), caps.get(dataset)))
    return budgets


def _in_study(entry: AuditEntry, study: str | None) -> bool:
    return study is None or entry.fields.get("study", study) == study


def _details(entry: AuditEntry) -> str:
    return plain_fields(entry.fields)


def _line(entry: AuditEntry) -> EventLine:
    return EventLine(entry.node, entry.index, plain_time(entry.timestamp), entry.event.replace("_", " "), _details(entry))
