"""A simulation's coordinator and nodes write without fsync; a real one (the default) syncs every write.

compliance/durability.py: `Durability.PROCESS_CRASH` is passed only by fedcare.simulate.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import grpc
import pytest

from compliance.durability import Durability
from coordinator.server import Coordinator, CoordinatorConfig
from fedcare.simulate import DURABILITY, SimulatedSilo, SimulationOptions, node_config
from fedcare.demo import DemoOptions, demo_spec
from silo_node.client import CoordinatorClient
from silo_node.config import DataConfig
from silo_node.node import SiloNode

SQLITE_SYNCHRONOUS = {"FULL": 2, "OFF": 0}  # what PRAGMA synchronous reads back


def _synchronous(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA synchronous").fetchone()[0]


@pytest.mark.parametrize("durability", [None, DURABILITY])
def test_coordinator_stores_sync_as_their_durability_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          durability: Durability | None) -> None:
    expected = durability or Durability.POWER_LOSS  # None: a real coordinator, built as `coordinator serve` does
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    config = CoordinatorConfig(state_dir=tmp_path / "c", listen="127.0.0.1:0", insecure=True)
    coordinator = Coordinator(config) if durability is None else Coordinator(config, durability=durability)
    try:
        with coordinator.store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == SQLITE_SYNCHRONOUS[expected.sqlite_synchronous]
        assert _synchronous(coordinator.audit_log._conn) == SQLITE_SYNCHRONOUS[expected.sqlite_synchronous]
        fsyncs.clear()
        blobs = coordinator.federation.blobs
        sha = blobs.put(b"a model version")
        with blobs.incoming() as upload:
            upload.write(b"an update")
            upload.commit(hashlib.sha256(b"an update").hexdigest())
        assert blobs.get(sha) == b"a model version" and blobs.exists(hashlib.sha256(b"an update").hexdigest())
        assert len(fsyncs) == (2 if expected.fsync else 0)
    finally:
        coordinator.stop(0)


def test_simulated_node_writes_its_audit_log_and_ledger_without_sync(tmp_path: Path) -> None:
    spec = demo_spec(DemoOptions(out=tmp_path / "unused", rounds=1, silos=1, dp=False, encryption="none"))
    config = node_config(SimulatedSilo(name="h1", data=DataConfig(dataset="d", fhir=[tmp_path / "fhir"])), root=tmp_path, coordinator="127.0.0.1:1",
                         spec=spec, opts=SimulationOptions(out=tmp_path / "out"))
    channel = grpc.insecure_channel(config.coordinator)
    try:
        for durability, pragma in ((None, "FULL"), (DURABILITY, "OFF")):
            client = CoordinatorClient(channel, silo=config.name)
            node = SiloNode(config, client) if durability is None else SiloNode(config, client, durability=durability)
            assert _synchronous(node.audit._conn) == SQLITE_SYNCHRONOUS[pragma]
            assert _synchronous(node.ledger._conn) == SQLITE_SYNCHRONOUS[pragma]
            node.audit.close()
            node.ledger.close()
    finally:
        channel.close()
