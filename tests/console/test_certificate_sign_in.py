"""Mutual-TLS sign-in to the researcher console, over a real TLS server (uvicorn): a researcher's or
auditor's certificate from `fedcare pki` signs its holder in; a silo's, a revoked one and a connection
without a certificate are refused and audited; a password still works for users without a certificate."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest
import uvicorn

from compliance.audit import Event, read_log
from compliance.node_log import AUDIT_LOG_FILE
from console.audit_view import AuditSources
from console.client_certs import ConsoleTLS
from console.researcher import accounts_in, create_app
from fedcare import pki
from fedcare.demo import free_port
from fedcare.researcher import ResearcherClient

PASSWORD = "correct horse battery"



@pytest.fixture
def console(tmp_path):
    """(url, pki dir, console state dir) of a researcher console served over TLS with the study CA."""
    ca_dir = tmp_path / "pki"
    pki.init_ca(ca_dir)
    server_cert, server_key = pki.issue(ca_dir, name="localhost", role="coordinator")
    for name, role in (("alice", "researcher"), ("audrey", "auditor"), ("st-mary", "silo"), ("mallory", "researcher")):
        pki.issue(ca_dir, name=name, role=role)
    crl = pki.revoke(ca_dir, ca_dir / "researcher" / "mallory.pem")
    tls = ConsoleTLS(cert=server_cert, key=server_key, ca_cert=ca_dir / "ca.pem", crl=crl)
    state = tmp_path / "console"
    accounts_in(state).add("dr-who", PASSWORD, "researcher")
    target = "127.0.0.1:1"  # no coordinator: the pages say so, sign-in does not need one
    app = create_app(ResearcherClient(grpc.insecure_channel(target), target=target), state_dir=state,
                     coordinator=target, audit_sources=AuditSources(logs=[]), certificates=tls.certificates())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **tls.uvicorn_options()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"https://127.0.0.1:{port}", ca_dir, state
    server.should_exit = True
    thread.join(timeout=10)



def _certificate_sign_in(client: httpx.Client, csrf_of) -> httpx.Response:
    page = client.get("/login")
    return client.post("/login/certificate", data={"csrf_token": csrf_of(page.text)})


def _sign_ins(state) -> list[dict]:
    return [e.fields for e in read_log(state / AUDIT_LOG_FILE).entries if e.event == Event.CONSOLE_SIGN_IN]


def test_a_pki_certificate_signs_its_holder_in(console, csrf_of, tls_client) -> None:
    url, ca_dir, state = console
    with tls_client(url, ca_dir, ("researcher", "alice")) as alice:
        assert "Sign in with your certificate" in alice.get("/login").text
        assert _certificate_sign_in(alice, csrf_of).headers["location"] == "/"
        assert alice.get("/").status_code == 200 and "New study" in alice.get("/").text
    with tls_client(url, ca_dir, ("auditor", "audrey")) as audrey:
        _certificate_sign_in(audrey, csrf_of)
        assert audrey.get("/audit").status_code == 200
    assert [(e["user"], e["role"], e["reason"]) for e in _sign_ins(state)] == [
        ("alice", "researcher", "certificate"), ("audrey", "auditor", "certificate")]


def test_wrong_role_revoked_and_missing_certificates_are_refused_and_audited(console, csrf_of, sign_in,
                                                                           tls_client) -> None:
    url, ca_dir, state = console
    with tls_client(url, ca_dir, ("silo", "st-mary")) as silo:
        r = _certificate_sign_in(silo, csrf_of)
        assert r.status_code == 403 and "has role silo" in r.text
    with tls_client(url, ca_dir, ("researcher", "mallory")) as mallory:
        r = _certificate_sign_in(mallory, csrf_of)
        assert r.status_code == 403 and "revoked" in r.text
    with tls_client(url, ca_dir, None) as anonymous:
        assert "Sign in with your certificate" not in anonymous.get("/login").text
        r = _certificate_sign_in(anonymous, csrf_of)
        assert r.status_code == 403 and "no client certificate" in r.text
        assert sign_in(anonymous, "dr-who").status_code == 303  # the password path still works over TLS
    refused = [e["reason"] for e in _sign_ins(state) if e["outcome"] == "refused"]
    assert any("has role silo" in r for r in refused) and any("revoked" in r for r in refused)
