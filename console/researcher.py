"""The researcher console (`fedcare console --coordinator HOST:PORT`): studies, live curves, submission.

It talks to the coordinator as a client over the wire contract (a :class:`StudyClient`, which
`fedcare` builds: fedcare.researcher.ResearcherClient), so it can run next to the coordinator
or anywhere the researcher may reach it. A study page follows the study live over server-sent
events (one `summary.json` per change, as coordinator/summary.py shapes it) and draws it with
uPlot, shipped in console/static. Studies are submitted from a form or a TOML upload, both
validated with the same StudySpec as `fedcare study submit`; an error names the field.
Auditors get the audit view over the logs the console is given (console/audit_view.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from compliance.node_log import open_node_log
from console import audit_view
from console.accounts import ACCOUNTS_FILE, AccountStore, Role
from console.client_certs import ClientCertificates
from console.web import DEFAULT_SESSION_TTL_S, SESSION_COOKIE, ConsoleCore, Session, Sessions
from coordinator.api.protocol import Encryption, Rule
from coordinator.api.study import ALL_MODALITIES, StudySpec, describe_validation_error

log = logging.getLogger(__name__)

CONSOLE_NODE = "researcher-console"  # the name in this console's own audit log
FOLLOWED_FILE = "followed-studies.json"
STUDY_ROLES = (Role.RESEARCHER, Role.AUDITOR)
MAX_TOML_BYTES = 1 << 20
SSE_POLL_S = 1.0
FINISHED = ("done", "failed")
# The form's fields: StudySpec paths (dotted) a researcher sets most; the rest keep their defaults
# or come from an uploaded TOML file.
FORM_FIELDS = ("name", "description", "training.rounds", "training.min_silos", "training.expected_silos",
               "training.local_epochs", "privacy.target_epsilon", "privacy.encryption", "aggregation.rule")


class StudyClient(Protocol):
    """What the console needs from the coordinator (fedcare.researcher.ResearcherClient has it)."""

    def submit(self, spec: StudySpec) -> str: ...

    def status(self, study_id: str) -> tuple[Any, dict[str, Any]]: ...

    def studies(self) -> Any: ...  # a StudyList: every study at the coordinator, newest first

    def results(self, study_id: str, out: Path) -> dict[str, Path]: ...


class FollowedStudies:
    """Studies submitted through this console or opened by id: listed even when the coordinator's
    list cannot be read (it is then said on the page)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ids(self) -> list[str]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def add(self, study_id: str) -> None:
        ids = self.ids()
        if study_id not in ids:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps([*ids, study_id]))
            tmp.replace(self.path)


def spec_from_form(form: dict[str, Any]) -> StudySpec:
    """A StudySpec from the form's dotted fields (empty ones keep their defaults) and modality boxes."""
    data: dict[str, Any] = {}
    for key in FORM_FIELDS:
        value = str(form.get(key, "")).strip()
        if value:
            section, _, name = key.rpartition(".")
            (data.setdefault(section, {}) if section else data)[name] = value
    data["modalities"] = list(form.get("modalities", ())) or list(ALL_MODALITIES)
    if "privacy.dp" in form:
        data.setdefault("privacy", {})["dp"] = form["privacy.dp"] == "on"
    return StudySpec.model_validate(data)


def form_defaults() -> dict[str, Any]:
    """The form's fields as StudySpec defaults them (placeholders: what an empty field means)."""
    spec, out = StudySpec(name="study"), {}
    for key in FORM_FIELDS:
        value: Any = spec
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = getattr(value, "value", value)
    return out


def spec_from_toml(text: str) -> StudySpec:
    return StudySpec.model_validate(tomllib.loads(text))


def accounts_in(state_dir: Path) -> AccountStore:
    return AccountStore(Path(state_dir) / ACCOUNTS_FILE)


def create_app(client: StudyClient, *, state_dir: Path, coordinator: str, audit_sources: audit_view.AuditSources,
               session_ttl_s: float = DEFAULT_SESSION_TTL_S, sessions: Sessions | None = None,
               allow_remote: bool = True, certificates: ClientCertificates | None = None) -> Starlette:
    """`certificates`: sign users in by their `fedcare pki` client certificate too (served over TLS:
    console.serve with a ConsoleTLS); cookies are then marked Secure."""
    state_dir = Path(state_dir)
    audit = open_node_log(state_dir, node=CONSOLE_NODE, role="coordinator", state_files=(FOLLOWED_FILE,))
    followed = FollowedStudies(state_dir / FOLLOWED_FILE)
    core = ConsoleCore(title=f"fedcare — studies at {coordinator}", accounts=accounts_in(state_dir), audit=audit,
                       sessions=sessions or Sessions(ttl_s=session_ttl_s), allow_remote=allow_remote,
                       certificates=certificates, secure_cookies=certificates is not None,
                       nav=[("Studies", "/", frozenset(STUDY_ROLES)),
                            ("New study", "/studies/new", frozenset({Role.RESEARCHER})),
                            ("Audit", "/audit", frozenset({Role.AUDITOR}))])

    def row_of(st: Any) -> dict[str, Any]:
        return {"study_id": st.study_id, "name": st.name, "state": st.state, "round": st.current_round,
                "rounds": st.rounds, "silos": list(st.silos), "error": st.error}

    def status_row(study_id: str) -> dict[str, Any]:
        try:
            st, _ = client.status(study_id)
        except Exception as e:  # noqa: BLE001 - shown in the row: one study's error must not hide the others
            return {"study_id": study_id, "name": "", "state": "unknown", "error": str(e)}
        return row_of(st)

    def all_rows() -> tuple[list[dict[str, Any]], str]:
        """The coordinator's studies (ListStudies), newest first; if it cannot be asked, the followed ones
        one by one and the reason."""
        try:
            listed = client.studies()
        except Exception as e:  # noqa: BLE001 - said on the page, with the studies this console knows
            return [status_row(s) for s in followed.ids()], f"the coordinator's study list could not be read: {e}"
        rows = [row_of(st) for st in listed.studies]
        note = f"the newest {len(rows)} studies are shown" if listed.truncated else ""
        return rows, note

    async def studies(request: Request, session: Session) -> Response:
        rows, note = await run_in_threadpool(all_rows)
        return core.page(request, "studies.html.j2", {"rows": rows, "note": note}, session=session)

    async def follow(request: Request, session: Session) -> Response:
        study_id = str((await request.form()).get("study_id", "")).strip()
        if study_id:
            followed.add(study_id)
        return RedirectResponse(f"/studies/{study_id}" if study_id else "/", status_code=303)

    def form_page(request: Request, session: Session, *, errors: str = "", values: dict | None = None,
                  status: int = 200) -> Response:
        return core.page(request, "new_study.html.j2", {
            "errors": errors.split("; ") if errors else [], "values": values or {}, "modalities": ALL_MODALITIES,
            "encryptions": [e.value for e in Encryption], "rules": [r.value for r in Rule],
            "defaults": form_defaults()}, session=session, status=status)

    async def new_study(request: Request, session: Session) -> Response:
        return form_page(request, session)

    async def submit(request: Request, session: Session) -> Response:
        form = await request.form()
        upload = form.get("toml_file")
        toml_text = str(form.get("toml", "")).strip()
        try:
            if isinstance(upload, UploadFile) and upload.filename:
                raw = await upload.read(MAX_TOML_BYTES + 1)
                if len(raw) > MAX_TOML_BYTES:
                    raise ValueError(f"{upload.filename} is over {MAX_TOML_BYTES} bytes; a study spec is a few KB")
                spec = spec_from_toml(raw.decode("utf-8"))
            elif toml_text:
                spec = spec_from_toml(toml_text)
            else:
                values = {k: v for k, v in form.multi_items() if k != "modalities"}
                values["modalities"] = form.getlist("modalities")
                spec = spec_from_form(values)
        except ValidationError as e:
            return form_page(request, session, errors=describe_validation_error(e), values=dict(form), status=422)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as e:
            return form_page(request, session, errors=f"the TOML is not valid: {e}", values=dict(form), status=422)
        try:
            study_id = await run_in_threadpool(client.submit, spec)
        except Exception as e:  # noqa: BLE001 - the coordinator's refusal, shown to the researcher as it came
            return form_page(request, session, errors=str(e), values=dict(form), status=422)
        followed.add(study_id)
        log.info("console: %s submitted study %s (%s)", session.user, study_id, spec.name)
        return RedirectResponse(f"/studies/{study_id}", status_code=303)

    async def study_page(request: Request, session: Session) -> Response:
        study_id = request.path_params["study"]
        return core.page(request, "study.html.j2", {"row": await run_in_threadpool(status_row, study_id)},
                         session=session)

    async def summary(request: Request, session: Session) -> Response:
        _, data = await run_in_threadpool(client.status, request.path_params["study"])
        return JSONResponse(data)

    async def events(request: Request, session: Session) -> Response:
        """Server-sent events: the study's summary each time it changes, until the study finishes
        or the session expires."""
        study_id = request.path_params["study"]
        token = request.cookies.get(SESSION_COOKIE)

        async def stream():  # noqa: ANN202 - an async generator of SSE frames
            last = None
            yield "retry: 2000\n\n"
            while True:
                if core.sessions.lookup(token)[0] is None:
                    yield "event: expired\ndata: {}\n\n"
                    return
                try:
                    st, data = await run_in_threadpool(client.status, study_id)
                except Exception as e:  # noqa: BLE001 - told to the page, which keeps listening
                    yield f"event: problem\ndata: {json.dumps(str(e))}\n\n"
                    await asyncio.sleep(SSE_POLL_S * 5)
                    continue
                frame = json.dumps({"state": st.state, "round": st.current_round, "rounds": st.rounds,
                                    "error": st.error, "summary": data}, sort_keys=True)
                if frame != last:
                    last = frame
                    yield f"event: summary\ndata: {frame}\n\n"
                if st.state in FINISHED:
                    return
                await asyncio.sleep(SSE_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def results(request: Request, session: Session) -> Response:
        study_id = request.path_params["study"]
        work = Path(tempfile.mkdtemp(prefix="fedcare-console-results-"))
        try:
            await run_in_threadpool(client.results, study_id, work / study_id)
        except Exception as e:  # noqa: BLE001 - e.g. the study is not done yet: said on the page
            shutil.rmtree(work, ignore_errors=True)
            return core.page(request, "refused.html.j2", {"reason": str(e)}, session=session, status=409)
        archive = shutil.make_archive(str(work / f"{study_id}-results"), "zip", root_dir=work, base_dir=study_id)
        return FileResponse(archive, media_type="application/zip", filename=f"{study_id}-results.zip")

    routes = [Route("/", core.guarded(studies, STUDY_ROLES)),
              Route("/studies/follow", core.guarded(follow, STUDY_ROLES), methods=["POST"]),
              Route("/studies/new", core.guarded(new_study, (Role.RESEARCHER,))),
              Route("/studies/new", core.guarded(submit, (Role.RESEARCHER,)), methods=["POST"]),
              Route("/studies/{study}", core.guarded(study_page, STUDY_ROLES)),
              Route("/studies/{study}/summary.json", core.guarded(summary, STUDY_ROLES)),
              Route("/studies/{study}/events", core.guarded(events, STUDY_ROLES)),
              Route("/studies/{study}/results.zip", core.guarded(results, STUDY_ROLES)),
              *audit_view.routes(core, audit_sources)]
    return core.app(routes)

