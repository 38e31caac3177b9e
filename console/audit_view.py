"""The auditor's view, in both consoles: each log verified, silo and coordinator logs reconciled,
every anomaly linked to the entry behind it, the compliance report for download.

Verification and reconciliation are compliance's (compliance.verify.verify_logs, which also
checks each log against the heads its peers witnessed; compliance.reconcile); this module only
lays them out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from compliance.audit import LogContents, read_log
from compliance.errors import AuditLogError
from compliance.reconcile import reconcile
from compliance.report import build_report
from compliance.verify import verify_logs
from console.accounts import Role
from console.web import ConsoleCore, Session



@dataclass(frozen=True)
class AuditSources:
    """The logs an auditor may read here: audit logs (silo and coordinator), privacy ledgers, registered keys."""

    logs: Sequence[Path]
    ledgers: Sequence[Path] = ()
    keys: Mapping[str, str] | None = None


def _read(paths: Sequence[Path]) -> tuple[list[tuple[Path, LogContents]], list[dict[str, str]]]:
    contents, unreadable = [], []
    for p in paths:
        try:
            contents.append((Path(p), read_log(p)))
        except AuditLogError as e:
            unreadable.append({"path": str(p), "reason": str(e)})
    return contents, unreadable


def overview(sources: AuditSources) -> dict[str, Any]:
    """Verification of each log and, for each silo log, its reconciliation with the coordinator's."""
    read, unreadable = _read(sources.logs)
    contents = [c for _, c in read]
    results = verify_logs(contents, keys=sources.keys)
    logs = [{"node": c.node, "role": c.role, "path": str(p), "entries": len(c.entries), "ok": r.ok,
             "reason": r.reason, "first_bad": r.first_bad, "witnessed": r.witnessed}
            for (p, c), r in zip(read, results)]
    coordinators = [c for c in contents if c.role == "coordinator"]
    reconciliations = []
    for silo in (c for c in contents if c.role == "silo"):
        for coord in coordinators:
            rec = reconcile(silo, coord)
            anomalies = [{"node": node, "index": e.index, "text": rec.describe(e)}
                         for node, entries in ((rec.silo, rec.only_at_silo), (rec.coordinator, rec.only_at_coordinator))
                         for e in entries]
            reconciliations.append({"silo": rec.silo, "coordinator": rec.coordinator, "matched": rec.matched,
                                    "ok": rec.ok, "anomalies": anomalies})
    return {"logs": logs, "unreadable": unreadable, "reconciliations": reconciliations}


def entries_of(sources: AuditSources, node: str) -> tuple[LogContents | None, Any]:
    contents = [c for _, c in _read(sources.logs)[0]]
    for c, r in zip(contents, verify_logs(contents, keys=sources.keys)):
        if c.node == node:
            return c, r
    return None, None


def routes(core: ConsoleCore, sources: AuditSources, roles: Iterable[Role] = (Role.AUDITOR,)) -> list[Route]:
    """/audit (overview), /audit/logs/{node} (entries, each anchored #entry-N), /audit/report.html."""
    roles = tuple(roles)

    async def audit_page(request: Request, session: Session) -> Response:
        data = await run_in_threadpool(overview, sources)
        return core.page(request, "audit.html.j2", data, session=session)

    async def log_page(request: Request, session: Session) -> Response:
        node = request.path_params["node"]
        contents, result = await run_in_threadpool(entries_of, sources, node)
        if contents is None:
            return core.page(request, "refused.html.j2", {"reason": f"no audit log of node {node!r} is read here"},
                             session=session, status=404)
        return core.page(request, "audit_log.html.j2", {"log": contents, "result": result,
                                                        "mark": request.query_params.get("entry")}, session=session)

    async def report(request: Request, session: Session) -> Response:
        out = Path(tempfile.mkdtemp(prefix="fedcare-console-report-")) / "audit-report.html"
        # A node that has not started yet has no log or ledger: the report covers those that exist.
        await run_in_threadpool(build_report, logs=[p for p in sources.logs if Path(p).is_file()], out=out,
                                fmt="html", ledger=[p for p in sources.ledgers if Path(p).is_file()] or None,
                                keys=sources.keys)
        return FileResponse(out, media_type="text/html", filename="audit-report.html",
                            content_disposition_type="attachment")

    return [Route("/audit", core.guarded(audit_page, roles)),
            Route("/audit/logs/{node}", core.guarded(log_page, roles)),
            Route("/audit/report.html", core.guarded(report, roles))]
