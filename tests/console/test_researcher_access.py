"""The researcher console without a running coordinator: access, refusals audited, the form's errors
name the field, an unreachable coordinator is said on the page."""

from __future__ import annotations

import grpc
import pytest
from starlette.testclient import TestClient

from compliance.audit import Event, read_log
from compliance.node_log import AUDIT_LOG_FILE
from console.audit_view import AuditSources
from console.researcher import accounts_in, create_app, spec_from_form
from fedcare.researcher import ResearcherClient

PASSWORD = "correct horse battery"


@pytest.fixture
def console_dir(tmp_path):
    return tmp_path / "console"


@pytest.fixture
def app(console_dir, node_config):
    accounts = accounts_in(console_dir)
    accounts.add("dr-who", PASSWORD, "researcher")
    accounts.add("officer", PASSWORD, "auditor")
    target = "127.0.0.1:1"  # nothing listens there
    client = ResearcherClient(grpc.insecure_channel(target), target=target)
    return create_app(client, state_dir=console_dir, coordinator=target,
                      audit_sources=AuditSources(logs=[node_config.state_dir / AUDIT_LOG_FILE]))


def refusals(console_dir) -> list[dict]:
    return [e.fields for e in read_log(console_dir / AUDIT_LOG_FILE).entries if e.event == Event.CONSOLE_REFUSED]


def test_form_errors_name_the_field(app, sign_in, csrf_of):
    client = TestClient(app)
    sign_in(client, "dr-who")
    form = client.get("/studies/new")
    r = client.post("/studies/new", data={"csrf_token": csrf_of(form.text), "name": "hf/risk",
                                          "training.rounds": "0", "modalities": ["ehr"]})
    assert r.status_code == 422
    assert "name: " in r.text and "hf/risk" in r.text and "training.rounds: Input should be greater than or equal to 1" in r.text
    r = client.post("/studies/new", data={"csrf_token": csrf_of(form.text), "toml": 'name = "x"\n[training]\nrounds = "many"'})
    assert r.status_code == 422 and "training.rounds: Input should be a valid integer" in r.text


def test_form_builds_the_spec_the_cli_would():
    spec = spec_from_form({"name": "hf", "training.rounds": "3", "privacy.dp": "on", "privacy.encryption": "none",
                           "aggregation.rule": "median", "modalities": ["ehr", "signal"]})
    assert (spec.training.rounds, spec.privacy.encryption, spec.aggregation.rule, spec.modalities) == (
        3, "none", "median", ("ehr", "signal"))


def test_unreachable_coordinator_is_said_on_the_page(app, sign_in, csrf_of):
    client = TestClient(app)
    sign_in(client, "dr-who")
    page = client.get("/")
    client.post("/studies/follow", data={"csrf_token": csrf_of(page.text), "study_id": "s-1"})
    assert "unreachable" in client.get("/").text
    form = client.get("/studies/new")
    r = client.post("/studies/new", data={"csrf_token": csrf_of(form.text), "name": "hf"})
    assert r.status_code == 422 and "unreachable" in r.text


def test_roles_sessions_and_csrf_are_enforced_and_audited(app, console_dir, sign_in, csrf_of):
    assert TestClient(app).get("/studies/new", follow_redirects=False).status_code == 303
    assert refusals(console_dir)[-1]["reason"].startswith("no session")
    researcher = TestClient(app)
    sign_in(researcher, "dr-who")
    assert researcher.get("/audit").status_code == 403
    assert refusals(console_dir)[-1] == {"user": "dr-who", "role": "researcher", "client": "testclient",
                                         "path": "/audit", "reason": "role researcher may not open /audit (it needs auditor)"}
    assert researcher.post("/studies/new", data={"name": "hf"}).status_code == 403
    assert "CSRF" in refusals(console_dir)[-1]["reason"]
    auditor = TestClient(app)
    sign_in(auditor, "officer")
    assert auditor.get("/studies/new").status_code == 403
    assert "intact" in auditor.get("/audit").text


def test_an_uploaded_toml_file_is_validated_like_the_form(app, sign_in, csrf_of):
    client = TestClient(app)
    sign_in(client, "dr-who")
    token = csrf_of(client.get("/studies/new").text)
    r = client.post("/studies/new", data={"csrf_token": token},
                    files={"toml_file": ("study.toml", b'name = "hf"\n[privacy]\nencryption = "rot13"\n')})
    assert r.status_code == 422 and "privacy.encryption: Input should be" in r.text
    r = client.post("/studies/new", data={"csrf_token": token}, files={"toml_file": ("study.toml", b"name = ")})
    assert r.status_code == 422 and "the TOML is not valid" in r.text
