"""A real Eclipse Mosquitto broker per test (Debian's `mosquitto`), on a free loopback port, no root needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compliance.audit import AuditLog
from silo_node.streams.local_broker import local_broker
from silo_node.streams.service import open_stream_audit

NODE = "st-mary"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """The port of a running Mosquitto that keeps every queued QoS 1 message of an offline persistent session."""
    with local_broker(tmp_path) as port:
        yield port


@pytest.fixture
def node_audit(tmp_path: Path) -> Iterator[AuditLog]:
    """The audit log of a node whose state_dir is `tmp_path`, as `fedcare silo stream` opens it."""
    with open_stream_audit(tmp_path, node=NODE) as audit:
        yield audit
