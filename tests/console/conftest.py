"""A real node state directory (audit log, approval store, ledger) for the console's tests."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import grpc
import httpx
import pytest

from compliance.node_log import open_node_log
from coordinator.api.study import StudySpec
from coordinator.server import Coordinator, CoordinatorConfig
from silo_node.approval import ApprovalBook
from silo_node.config import NodeConfig
from silo_node.node import STATE_FILES

PASSWORD = "correct horse battery"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    cfg = NodeConfig(name="st-mary", coordinator="127.0.0.1:1", state_dir=tmp_path / "state", insecure=True,
                     data={"dataset": "st-mary-2026", "fhir": [tmp_path / "fhir"]})
    open_node_log(cfg.state_dir, node=cfg.name, role="silo", state_files=STATE_FILES).close()
    ApprovalBook(cfg.state_dir).record_proposal("hf-risk-1", StudySpec(name="hf-risk", description="heart failure"))
    return cfg


def _csrf_of(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def _sign_in(client, user: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"user": user, "password": password, "csrf_token": _csrf_of(page.text)},
                       follow_redirects=False)


@pytest.fixture
def csrf_of():
    """The CSRF token of a page's form."""
    return _csrf_of


@pytest.fixture
def sign_in():
    """Sign ``user`` in through the sign-in form (with its CSRF token); the response of the POST."""
    return _sign_in


@pytest.fixture
def coordinator_channel(tmp_path: Path):
    """A real coordinator (in this process, plaintext gRPC on loopback) and a channel to it: (target, channel)."""
    coordinator = Coordinator(CoordinatorConfig(insecure=True, listen="127.0.0.1:0", state_dir=tmp_path / "coordinator",
                                                workers=4)).start()
    target = f"127.0.0.1:{coordinator.port}"
    channel = grpc.insecure_channel(target)
    yield target, channel
    channel.close()
    coordinator.stop(0)


def _tls_client(url: str, ca_dir: Path, holder: tuple[str, str] | None) -> httpx.Client:
    """An HTTPS client trusting the CA in ``ca_dir``, presenting ``holder``'s (role, name) certificate if given."""
    context = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    if holder is not None:
        role, name = holder
        context.load_cert_chain(ca_dir / role / f"{name}.pem", ca_dir / role / f"{name}.key")
    return httpx.Client(base_url=url, verify=context, follow_redirects=False)


@pytest.fixture
def tls_client():
    """Makes HTTPS clients with (or without) a `fedcare pki` client certificate: tls_client(url, ca_dir, holder)."""
    return _tls_client
