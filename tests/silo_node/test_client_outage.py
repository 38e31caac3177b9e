"""The silo's client through a coordinator outage: it keeps trying (one log line, not one per
try), reaches a coordinator that comes up late, and gives up only when max_retry_s says so."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from coordinator.server import Coordinator, CoordinatorConfig
from fedcare.demo import free_port
from silo_node.client import (
    CoordinatorClient,
    CoordinatorRefusal,
    CoordinatorUnreachable,
    open_channel,
)


def _client(port: int, **kw) -> CoordinatorClient:
    return CoordinatorClient(open_channel(f"127.0.0.1:{port}", credentials=None), silo="st-mary", max_retries=0,
                             base_delay_s=0.05, max_backoff_s=0.2, **kw)


def _waiting_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is waiting for the" in r.getMessage()]


def test_max_retry_s_ends_the_wait_with_one_clear_error(caplog) -> None:
    client = _client(free_port(), max_retry_s=1.0)
    with caplog.at_level(logging.INFO, logger="coordinator.api.client"), pytest.raises(CoordinatorUnreachable) as e:
        client.join(["ehr"], b"")
    assert "join" in str(e.value) and "gave up after" in str(e.value) and "max_retry_s = 1" in str(e.value)
    assert len(_waiting_lines(caplog)) == 1  # said once (every few minutes), not at every try


def test_without_max_retry_s_a_call_waits_for_a_coordinator_that_comes_later(tmp_path: Path, caplog) -> None:
    port = free_port()
    client = _client(port)
    joined = threading.Event()

    def join() -> None:
        client.join(["ehr"], bytes(32))
        joined.set()

    with caplog.at_level(logging.INFO, logger="coordinator.api.client"):
        caller = threading.Thread(target=join, daemon=True)
        caller.start()
        for _ in range(600):  # until the client has said that it waits
            if _waiting_lines(caplog):
                break
            joined.wait(0.05)
        assert _waiting_lines(caplog) and not joined.is_set()
        coordinator = Coordinator(CoordinatorConfig(insecure=True, listen=f"127.0.0.1:{port}", state_dir=tmp_path)).start()
        try:
            caller.join(timeout=120)
            assert joined.is_set()
        finally:
            coordinator.stop(0)
    assert any("reached the coordinator again" in r.getMessage() for r in caplog.records)


def test_a_coordinator_that_answers_a_refusal_after_an_outage_counts_as_reached(tmp_path: Path, caplog) -> None:
    """Back after an outage, the coordinator may refuse the call that waited (its round closed meanwhile): it was
    reached all the same, and the log says so before the refusal is raised."""
    port = free_port()
    client = _client(port)
    refused: list[BaseException] = []

    def pull() -> None:
        try:
            client.pull_task(0.1)  # never joined: a coordinator that is up refuses it
        except CoordinatorRefusal as e:
            refused.append(e)

    with caplog.at_level(logging.INFO, logger="coordinator.api.client"):
        caller = threading.Thread(target=pull, daemon=True)
        caller.start()
        for _ in range(600):
            if _waiting_lines(caplog):
                break
            caller.join(0.05)
        assert _waiting_lines(caplog) and caller.is_alive()
        coordinator = Coordinator(CoordinatorConfig(insecure=True, listen=f"127.0.0.1:{port}", state_dir=tmp_path)).start()
        try:
            caller.join(timeout=120)
        finally:
            coordinator.stop(0)
    assert len(refused) == 1, refused
    assert any("reached the coordinator again" in r.getMessage() and "pull" in r.getMessage()
               for r in caplog.records)
