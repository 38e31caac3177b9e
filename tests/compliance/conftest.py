"""A small federation's worth of real audit logs, keys and a ledger, written through the API."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from compliance import AuditLog, Event, PrivacyLedger, load_or_create_signing_key

STUDY = "sepsis-2025"


@dataclass
class Federation:
    silo_logs: dict[str, Path]
    coordinator_log: Path
    ledger: Path
    keys: dict[str, Path]


def raw(path: Path) -> sqlite3.Connection:
    """A plain SQLite connection with the append-only triggers dropped, as an attacker would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
    return conn


def snapshot(src: Path, dst: Path) -> None:
    """A consistent copy of a live log: an older, validly signed state (as kept in its -wal file)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def message(round_: int, silo: str, kind: str = "update") -> dict:
    payload = f"{kind}-{silo}-{round_}".encode()
    return {"kind": kind, "size": 1000 + 10 * round_, "sha256": hashlib.sha256(payload).hexdigest(),
            "round": round_, "study": STUDY}


@pytest.fixture
def simple_log(tmp_path: Path) -> tuple[Path, Path]:
    """A silo log of 10 entries; returns (log path, key path)."""
    key_path = tmp_path / "keys" / "silo-a.pem"
    key = load_or_create_signing_key(key_path)
    path = tmp_path / "silo-a.audit.db"
    with AuditLog.open(path, node="silo-a", signing_key=key) as log:
        log.append(Event.NODE_CONFIGURED, config_sha256="ab" * 32)
        for r in range(1, 10):
            log.append(Event.MESSAGE_SENT, **message(r, "silo-a"))
    return path, key_path


@pytest.fixture
def federation(tmp_path: Path) -> Federation:
    """Two silos and a coordinator running 3 rounds; silo-b's round-3 update never arrives."""
    keys = {n: tmp_path / "keys" / f"{n}.pem" for n in ("silo-a", "silo-b", "coordinator")}
    coord_path = tmp_path / "coordinator.audit.db"
    coord = AuditLog.open(coord_path, node="coordinator", role="coordinator",
                          signing_key=load_or_create_signing_key(keys["coordinator"]))
    ledger = PrivacyLedger(tmp_path / "ledger.db")
    silo_logs = {}
    for name in ("silo-a", "silo-b"):
        silo_logs[name] = tmp_path / f"{name}.audit.db"
        with AuditLog.open(silo_logs[name], node=name,
                           signing_key=load_or_create_signing_key(keys[name])) as log:
            log.append(Event.STUDY_RECEIVED, study=STUDY, spec_sha256="cd" * 32)
            log.append(Event.STUDY_APPROVED, study=STUDY, approved_by="it-officer-7")
            for r in (1, 2, 3):
                model = message(r, "coordinator", kind="global_model")
                coord.append(Event.MESSAGE_SENT, silo=name, **model)
                log.append(Event.MESSAGE_RECEIVED, **model)
                log.append(Event.ROUND_JOINED, study=STUDY, round=r)
                up = message(r, name)
                log.append(Event.MESSAGE_SENT, **up)
                if not (name == "silo-b" and r == 3):
                    coord.append(Event.MESSAGE_RECEIVED, silo=name, **up)
                ledger.record(silo=name, dataset="ehr", study=STUDY, round=r, epsilon=0.5 * r,
                              delta=1e-5, noise_multiplier=1.1, sample_rate=0.01, steps=100,
                              accountant="rdp")
            log.append(Event.BUDGET_REFUSED, study=STUDY, round=4, epsilon_would_be=2.0, cap=1.5)
    for r in (1, 2, 3):
        coord.append(Event.AGGREGATION, study=STUDY, round=r, rule="trimmed_mean", updates=2)
    coord.append(Event.MODEL_RELEASED, study=STUDY, round=3, sha256="ef" * 32)
    coord.append(Event.AUTH_FAILURE, silo="silo-a", reason="certificate expired")
    coord.close()
    ledger.close()
    return Federation(silo_logs, coord_path, tmp_path / "ledger.db", keys)
