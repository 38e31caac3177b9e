"""The site console (`fedcare silo console --config node.toml`): hospital IT decides in the browser.

It shows the proposals waiting for a decision in plain words (silo_node.approval.describe:
modalities and features read, rounds, ε against the remaining budget, what is sent), records
approve/reject through the node's own approval store (the same decision records as
`fedcare silo approve|reject`; the running node answers the coordinator and writes
study_approved/study_rejected at its next poll), and shows the last ingestion report, the
privacy ledger and the node's audit log with its verification. Bound to 127.0.0.1 and refusing
non-local clients unless started with allow_remote. Sign-ins, refusals and decisions are
written to the node's own audit log.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from compliance.audit import Event
from compliance.errors import AuditFieldError
from compliance.ledger import PrivacyLedger
from compliance.node_log import AUDIT_LOG_FILE, open_node_log
from console import audit_view
from console.accounts import ACCOUNTS_FILE, AccountStore, Role
from console.client_certs import ConsoleTLS
from console.web import DEFAULT_SESSION_TTL_S, ConsoleCore, Session, Sessions
from silo_node.approval import ApprovalBook
from silo_node.config import NodeConfig
from silo_node.state_files import LEDGER_FILE, STATE_FILES

SITE_ROLES = (Role.SITE_ADMIN, Role.AUDITOR)
MAX_REASON_CHARS = 500


def accounts_of(config: NodeConfig) -> AccountStore:
    return AccountStore(Path(config.state_dir) / ACCOUNTS_FILE)


def budget_view(config: NodeConfig) -> dict[str, Any]:
    """ε spent on this node's dataset against its cap, and the ledger's rows."""
    with PrivacyLedger(Path(config.state_dir) / LEDGER_FILE) as ledger:
        rows = ledger.rows()
        spent = ledger.spent(dataset=config.data.dataset)
    cap = config.privacy.epsilon_cap
    return {"dataset": config.data.dataset, "cap": cap, "spent": spent, "remaining": max(cap - spent, 0.0),
            "delta": config.privacy.delta, "rows": rows}


def create_app(config: NodeConfig, *, allow_remote: bool = False, session_ttl_s: float = DEFAULT_SESSION_TTL_S,
               sessions: Sessions | None = None, tls: ConsoleTLS | None = None) -> Starlette:
    """`tls`: the console is served over TLS (console.serve with the same ConsoleTLS); a client certificate
    pinned to one of the site's accounts then signs its user in too, and cookies are marked Secure."""
    state = Path(config.state_dir)
    audit = open_node_log(state, node=config.name, role="silo", state_files=STATE_FILES)
    book = ApprovalBook(state)
    accounts = accounts_of(config)
    core = ConsoleCore(title=f"fedcare site console — {config.name}", accounts=accounts, audit=audit,
                       sessions=sessions or Sessions(ttl_s=session_ttl_s), allow_remote=allow_remote,
                       certificates=tls.pinned(accounts) if tls else None, secure_cookies=tls is not None,
                       nav=[("Proposals", "/", frozenset(SITE_ROLES)),
                            ("Privacy ledger", "/ledger", frozenset(SITE_ROLES)),
                            ("Audit log", "/audit", frozenset(SITE_ROLES))])

    async def home(request: Request, session: Session) -> Response:
        proposals = await run_in_threadpool(book.proposals)
        budget = await run_in_threadpool(budget_view, config)
        ingested = await run_in_threadpool(_last, audit, Event.DATA_INGESTED)
        return core.page(request, "site_home.html.j2", {
            "pending": [p for p in proposals if p["decision"] is None],
            "decided": [p for p in proposals if p["decision"] is not None],
            "budget": budget, "ingested": ingested, "node": config.name,
            "flash": request.query_params.get("done", "")}, session=session)

    async def proposal(request: Request, session: Session) -> Response:
        study = request.path_params["study"]
        found = [p for p in await run_in_threadpool(book.proposals) if p["study_id"] == study]
        if not found:
            return core.page(request, "refused.html.j2", {"reason": f"no proposal for study {study!r} at this node"},
                             session=session, status=404)
        budget = await run_in_threadpool(budget_view, config)
        return core.page(request, "site_proposal.html.j2", {"p": found[0], "budget": budget,
                                                           "error": request.query_params.get("error", "")},
                         session=session)

    async def decide(request: Request, session: Session) -> Response:
        study = request.path_params["study"]
        form = await request.form()
        choice, reason = str(form.get("decision", "")), str(form.get("reason", "")).strip()[:MAX_REASON_CHARS]
        if choice not in ("approve", "reject") or not reason:
            return _back(study, "choose approve or reject and give a reason")
        try:
            d = await run_in_threadpool(book.decide, study, approved=choice == "approve", reason=reason,
                                        by=f"{session.user} (site console)")
        except KeyError as e:
            return core.page(request, "refused.html.j2", {"reason": str(e).strip("'\"")}, session=session, status=404)
        except (AuditFieldError, ValueError) as e:
            return _back(study, str(e))
        audit.append(Event.CONSOLE_DECISION, study=study, approved=d.approved, by=d.by, reason=d.reason,
                     spec_sha256=d.spec_sha256)
        return RedirectResponse(f"/?done={study} {'approved' if d.approved else 'rejected'}", status_code=303)

    async def ledger(request: Request, session: Session) -> Response:
        return core.page(request, "site_ledger.html.j2", {"budget": await run_in_threadpool(budget_view, config)},
                         session=session)

    sources = audit_view.AuditSources(logs=[state / AUDIT_LOG_FILE], ledgers=[state / LEDGER_FILE],
                                      keys={config.name: audit.public_key_hex})
    routes = [Route("/", core.guarded(home, SITE_ROLES)),
              Route("/proposals/{study}", core.guarded(proposal, SITE_ROLES)),
              Route("/proposals/{study}/decide", core.guarded(decide, (Role.SITE_ADMIN,)), methods=["POST"]),
              Route("/ledger", core.guarded(ledger, SITE_ROLES)),
              *audit_view.routes(core, sources, SITE_ROLES)]
    return core.app(routes)


def _back(study: str, error: str) -> RedirectResponse:
    """Back to the proposal's page, saying what was wrong."""
    return RedirectResponse(f"/proposals/{quote(study)}?{urlencode({'error': error})}", status_code=303)


def _last(audit: Any, event: str) -> Any:
    matches = [e for e in audit.entries() if e.event == event]
    return matches[-1] if matches else None
