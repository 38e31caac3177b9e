"""A real Eclipse Mosquitto broker per test (Debian's `mosquitto`), on a free loopback port, no root needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from silo_node.streams.local_broker import local_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """The port of a running Mosquitto that keeps every queued QoS 1 message of an offline persistent session."""
    with local_broker(tmp_path) as port:
        yield port
