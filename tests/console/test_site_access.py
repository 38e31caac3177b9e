"""Access to the site console: each refusal is answered and written to the node's audit log."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from compliance.audit import Event, read_log
from compliance.node_log import AUDIT_LOG_FILE
from compliance.verify import verify_log
from console.site import accounts_of, create_app
from console.web import Sessions
from silo_node.approval import ApprovalBook

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(node_config, clock):
    accounts = accounts_of(node_config)
    accounts.add("it-admin", PASSWORD, "site-admin")
    accounts.add("officer", PASSWORD, "auditor")
    accounts.add("dr-who", PASSWORD, "researcher")
    return create_app(node_config, sessions=Sessions(ttl_s=600, clock=clock))


def local(app) -> TestClient:
    return TestClient(app, client=("127.0.0.1", 50000))


def events(node_config, event: str) -> list[dict]:
    log = read_log(node_config.state_dir / AUDIT_LOG_FILE)
    return [e.fields for e in log.entries if e.event == event]


def test_admin_signs_in_and_approves_with_the_cli_records(app, node_config, sign_in, csrf_of):
    client = local(app)
    assert sign_in(client, "it-admin").status_code == 303
    page = client.get("/proposals/hf-risk-1")
    assert "heart failure" in page.text and "target ε 8.0" in page.text
    r = client.post("/proposals/hf-risk-1/decide", data={"decision": "approve", "reason": "IRB 2026-14",
                                                         "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    decision = ApprovalBook(node_config.state_dir).decision("hf-risk-1")
    assert decision.approved and decision.reason == "IRB 2026-14" and decision.by == "it-admin (site console)"
    assert events(node_config, Event.CONSOLE_SIGN_IN)[-1]["outcome"] == "accepted"
    assert events(node_config, Event.CONSOLE_DECISION)[-1]["study"] == "hf-risk-1"
    assert verify_log(node_config.state_dir / AUDIT_LOG_FILE).ok


def test_wrong_password_is_refused_and_audited(app, node_config, sign_in):
    r = sign_in(local(app), "it-admin", "not the password at all")
    assert r.status_code == 401 and "wrong password" in r.text
    assert events(node_config, Event.CONSOLE_SIGN_IN)[-1] == {
        "user": "it-admin", "role": None, "client": "127.0.0.1", "outcome": "refused",
        "reason": "unknown user or wrong password"}


def test_no_session_is_refused_and_audited(app, node_config):
    r = local(app).get("/proposals/hf-risk-1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    refused = events(node_config, Event.CONSOLE_REFUSED)[-1]
    assert refused["reason"].startswith("no session") and refused["path"] == "/proposals/hf-risk-1"


def test_wrong_role_is_refused_and_audited(app, node_config, sign_in, csrf_of):
    client = local(app)
    sign_in(client, "dr-who")
    r = client.get("/")
    assert r.status_code == 403 and "role researcher may not open /" in r.text
    assert events(node_config, Event.CONSOLE_REFUSED)[-1]["role"] == "researcher"
    # an auditor may read, but not decide
    client = local(app)
    sign_in(client, "officer")
    page = client.get("/proposals/hf-risk-1")
    assert page.status_code == 200 and "Approve" not in page.text
    r = client.post("/proposals/hf-risk-1/decide", data={"decision": "approve", "reason": "x",
                                                         "csrf_token": csrf_of(page.text)})
    assert r.status_code == 403
    assert ApprovalBook(node_config.state_dir).decision("hf-risk-1") is None
    assert events(node_config, Event.CONSOLE_REFUSED)[-1]["path"] == "/proposals/hf-risk-1/decide"


def test_expired_session_is_refused_and_audited(app, node_config, clock, sign_in):
    client = local(app)
    sign_in(client, "it-admin")
    assert client.get("/").status_code == 200
    clock.now += 601
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303
    assert events(node_config, Event.CONSOLE_REFUSED)[-1]["reason"] == "session expired"


def test_post_without_csrf_token_is_refused_and_audited(app, node_config, sign_in):
    client = local(app)
    sign_in(client, "it-admin")
    r = client.post("/proposals/hf-risk-1/decide", data={"decision": "approve", "reason": "ok"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert ApprovalBook(node_config.state_dir).decision("hf-risk-1") is None
    assert "CSRF" in events(node_config, Event.CONSOLE_REFUSED)[-1]["reason"]
    # and a sign-in without the sign-in form's token
    r = TestClient(app, client=("127.0.0.1", 50001)).post("/login", data={"user": "it-admin", "password": PASSWORD})
    assert r.status_code == 403


def test_remote_client_is_refused_and_audited(app, node_config):
    remote = TestClient(app, client=("10.20.30.40", 50000))
    login = remote.post("/login", data={"user": "it-admin", "password": PASSWORD, "csrf_token": "x"},
                        cookies={"fedcare_login_csrf": "x"})
    for r in (remote.get("/login"), login, remote.get("/")):
        assert r.status_code == 403
    refused = events(node_config, Event.CONSOLE_REFUSED)[-1]
    assert refused["client"] == "10.20.30.40" and "local connections only" in refused["reason"]
    assert not [e for e in events(node_config, Event.CONSOLE_SIGN_IN) if e["outcome"] == "accepted"]


def test_remote_client_allowed_when_configured(node_config, sign_in):
    accounts_of(node_config).add("it-admin", PASSWORD, "site-admin")
    client = TestClient(create_app(node_config, allow_remote=True), client=("10.20.30.40", 50000))
    assert sign_in(client, "it-admin").status_code == 303
    assert client.get("/").status_code == 200


def test_auditor_reads_the_log_and_its_verification(app, node_config, sign_in):
    client = local(app)
    sign_in(client, "officer")
    page = client.get("/audit")
    assert page.status_code == 200 and "intact" in page.text
    entries = client.get("/audit/logs/st-mary")
    assert "console_sign_in" in entries.text
    report = client.get("/audit/report.html")
    assert report.status_code == 200 and "st-mary" in report.text


def test_a_decision_without_reason_or_with_an_identifier_is_sent_back(app, node_config, sign_in, csrf_of):
    client = local(app)
    sign_in(client, "it-admin")
    token = csrf_of(client.get("/proposals/hf-risk-1").text)
    for reason in ("", "patient SSN 123-45-6789 consented"):
        r = client.post("/proposals/hf-risk-1/decide", data={"decision": "approve", "reason": reason,
                                                             "csrf_token": token})
        assert r.status_code == 200 and "Approve" in r.text  # back on the proposal's page, with the error
        assert ApprovalBook(node_config.state_dir).decision("hf-risk-1") is None
    assert "SSN" in r.text or "identifier" in r.text.lower()


def test_pages_may_not_be_framed_or_load_anything_foreign(app):
    r = local(app).get("/login")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"


def test_password_guessing_locks_the_user_out_for_a_while(app, node_config, clock, sign_in):
    client = local(app)
    for _ in range(5):
        assert sign_in(client, "it-admin", "guess guess guess").status_code == 401
    r = sign_in(client, "it-admin")  # the right password, too late
    assert r.status_code == 429 and "5 failed sign-ins" in r.text
    assert "5 failed sign-ins" in events(node_config, Event.CONSOLE_SIGN_IN)[-1]["reason"]
    assert sign_in(client, "officer").status_code == 303  # other users are not affected
    clock.now += 15 * 60 + 1
    assert sign_in(client, "it-admin").status_code == 303


def test_ledger_and_proposal_show_epsilon_against_what_remains(app, node_config, sign_in):
    from compliance.ledger import PrivacyLedger
    from silo_node.node import LEDGER_FILE

    with PrivacyLedger(node_config.state_dir / LEDGER_FILE) as ledger:
        for rnd, eps in ((1, 2.5), (2, 4.25)):
            ledger.record(silo="st-mary", dataset="st-mary-2026", study="earlier", round=rnd, epsilon=eps,
                          delta=1e-6, noise_multiplier=1.1, sample_rate=0.05, steps=20 * rnd, accountant="rdp")
    client = local(app)
    sign_in(client, "officer")
    page = " ".join(client.get("/ledger").text.split())
    assert "ε 4.250 spent of the cap 10.000" in page and "5.750 remaining" in page and "2.5000" in page
    # the proposal's target ε 8.0 is more than the 5.75 left: said before anyone approves
    assert "exceeds what remains" in client.get("/proposals/hf-risk-1").text
