"""Mutual-TLS sign-in to the site console, over a real TLS server (uvicorn): a client certificate the site
pinned to one of its accounts signs that user in with that account's role; a valid certificate of the same
CA that is pinned to nobody (whatever role its OU claims), a revoked one, and a connection without one
are refused, and every outcome is audited in the node's log."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from compliance.audit import Event, read_log
from compliance.node_log import AUDIT_LOG_FILE
from console.accounts import certificate_sha256
from console.client_certs import ConsoleTLS
from console.site import accounts_of, create_app
from fedcare import pki
from fedcare.demo import free_port

PASSWORD = "correct horse battery"



@pytest.fixture
def site(tmp_path: Path, node_config):
    """(url, CA dir) of the site console over TLS; 'it-admin' has a pinned certificate, 'mallory' too but revoked."""
    ca = tmp_path / "hospital-ca"
    pki.init_ca(ca)
    server_cert, server_key = pki.issue(ca, name="localhost", role="coordinator")
    for name in ("it-admin", "mallory"):
        pki.issue(ca, name=name, role="researcher")
    pki.issue(ca, name="it-admin-lookalike", role="auditor")  # same CA, valid, pinned to nobody
    accounts = accounts_of(node_config)
    for name in ("it-admin", "mallory"):
        accounts.add(name, PASSWORD, "site-admin", certificate_pem=(ca / "researcher" / f"{name}.pem").read_bytes())
    crl = pki.revoke(ca, ca / "researcher" / "mallory.pem")
    tls = ConsoleTLS(cert=server_cert, key=server_key, ca_cert=ca / "ca.pem", crl=crl)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(node_config, tls=tls), host="127.0.0.1", port=port,
                                           log_level="warning", **tls.uvicorn_options()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"https://127.0.0.1:{port}", ca
    server.should_exit = True
    thread.join(timeout=10)



def _certificate_sign_in(client: httpx.Client, csrf_of) -> httpx.Response:
    page = client.get("/login")
    return client.post("/login/certificate", data={"csrf_token": csrf_of(page.text)})


def test_a_pinned_certificate_signs_in_as_its_account_and_others_are_refused(site, node_config, csrf_of,
                                                                           tls_client) -> None:
    url, ca = site
    with tls_client(url, ca, ("researcher", "it-admin")) as admin:
        assert _certificate_sign_in(admin, csrf_of).headers["location"] == "/"
        home = admin.get("/")
        assert home.status_code == 200 and "hf-risk-1" in home.text  # the site-admin's proposals page
    with tls_client(url, ca, ("auditor", "it-admin-lookalike")) as lookalike:
        r = _certificate_sign_in(lookalike, csrf_of)
        assert r.status_code == 403 and "not pinned" in r.text
        assert lookalike.get("/").status_code in (303, 307, 401, 403)  # still signed out
    with tls_client(url, ca, ("researcher", "mallory")) as mallory:
        r = _certificate_sign_in(mallory, csrf_of)
        assert r.status_code == 403 and "revoked" in r.text
    with tls_client(url, ca, None) as anonymous:
        assert _certificate_sign_in(anonymous, csrf_of).status_code == 403
    sign_ins = [e.fields for e in read_log(Path(node_config.state_dir) / AUDIT_LOG_FILE).entries
                if e.event == Event.CONSOLE_SIGN_IN]
    assert [(e["user"], e["outcome"]) for e in sign_ins] == [("it-admin", "accepted"), (None, "refused"),
                                                             (None, "refused")]
    assert sign_ins[0]["role"] == "site-admin" and sign_ins[0]["reason"] == "certificate"


def test_the_pin_is_the_certificates_fingerprint(tmp_path: Path, node_config) -> None:
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cert, _ = pki.issue(ca, name="it-admin", role="researcher")
    account = accounts_of(node_config).add("it-admin", PASSWORD, "site-admin", certificate_pem=cert.read_bytes())
    assert account.certificate_sha256 == certificate_sha256(cert.read_bytes())
    assert accounts_of(node_config).by_certificate(account.certificate_sha256).user == "it-admin"
