from __future__ import annotations

import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from compliance import (
    AuditFieldError, AuditLog, AuditLogError, Event, PHIFieldError, SigningKeyError,
    load_or_create_signing_key, public_key_hex, read_log, verify_log,
)


def test_entries_are_chained_signed_and_survive_reopening(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    path = tmp_path / "a.db"
    with AuditLog.open(path, node="silo-a", signing_key=key) as log:
        first = log.append(Event.NODE_CONFIGURED, version="0.1.0")
        second = log.append(Event.ROUND_JOINED, study="s", round=1)
    assert (first.index, second.index) == (1, 2)
    assert first.prev_hash == "0" * 64 and second.prev_hash == first.hash
    assert first.timestamp.endswith("Z")
    with AuditLog.open(path, node="silo-a", signing_key=key) as log:
        assert log.append(Event.ROUND_JOINED, study="s", round=2).prev_hash == second.hash
        assert len(log) == 3
    contents = read_log(path)
    assert contents.public_key == public_key_hex(key) and contents.node == "silo-a"
    assert [e.fields for e in contents.entries][1] == {"study": "s", "round": 1}
    assert verify_log(path).ok


def test_log_uses_wal_and_refuses_in_place_edits(tmp_path: Path) -> None:
    import sqlite3
    key = load_or_create_signing_key(tmp_path / "k.pem")
    with AuditLog.open(tmp_path / "a.db", node="n", signing_key=key) as log:
        log.append(Event.NODE_CONFIGURED)
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET event = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM entries")


def test_log_belongs_to_one_node_and_key(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    other = load_or_create_signing_key(tmp_path / "other.pem")
    AuditLog.open(tmp_path / "a.db", node="silo-a", signing_key=key).close()
    with pytest.raises(AuditLogError, match="node 'silo-a'.*opened with 'silo-b'"):
        AuditLog.open(tmp_path / "a.db", node="silo-b", signing_key=key)
    with pytest.raises(AuditLogError, match="public_key"):
        AuditLog.open(tmp_path / "a.db", node="silo-a", signing_key=other)


def test_not_a_log(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    key = load_or_create_signing_key(tmp_path / "k.pem")
    with pytest.raises(AuditLogError, match="not a readable fedcare audit log"):
        AuditLog.open(tmp_path / "junk.db", node="n", signing_key=key)
    with pytest.raises(AuditLogError, match="no audit log"):
        read_log(tmp_path / "missing.db")


@pytest.mark.parametrize("fields", [
    {"name": "Jane Doe"}, {"birthDate": "1970-01-01"}, {"patient_mrn": "x", "MRN": "123"},
    {"telecom": [{"system": "phone"}]}, {"address": "1 Main St"},
    {"details": {"family_name": "Doe"}}, {"records": [{"dob": "1970"}]},
    {"resource": {"resourceType": "Patient", "id": "p1"}}, {"note": "SSN 123-45-6789"},
])
def test_phi_guard_rejects_patient_identifiers(tmp_path: Path, fields: dict) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    with AuditLog.open(tmp_path / "a.db", node="n", signing_key=key) as log:
        with pytest.raises(PHIFieldError, match="looks like protected health information"):
            log.append(Event.DATA_INGESTED, **fields)
        assert len(log) == 0
        log.append(Event.DATA_INGESTED, records=120, quarantined=3, dataset_name="ehr",
                   silo="silo-a", sha256="ab" * 32)
        assert len(log) == 1


def test_unknown_event_and_non_json_fields_are_refused(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    with AuditLog.open(tmp_path / "a.db", node="n", signing_key=key) as log:
        with pytest.raises(AuditFieldError, match="unknown audit event 'model_sent'.*message_sent"):
            log.append("model_sent")
        with pytest.raises(AuditFieldError, match="JSON values"):
            log.append(Event.AGGREGATION, weights=object())
        with pytest.raises(AuditFieldError, match="JSON values"):
            log.append(Event.AGGREGATION, norm=float("nan"))


CHILD = """
import sys
from pathlib import Path
from compliance import AuditLog, Event, load_or_create_signing_key
key = load_or_create_signing_key(Path(sys.argv[2]))
with AuditLog.open(Path(sys.argv[1]), node="n", signing_key=key) as log:
    for i in range(30):
        log.append(Event.MESSAGE_SENT, i=i, by="child")
"""


def test_concurrent_appends_from_threads_and_processes_keep_one_chain(tmp_path: Path) -> None:
    key_path, path = tmp_path / "k.pem", tmp_path / "a.db"
    log = AuditLog.open(path, node="n", signing_key=load_or_create_signing_key(key_path))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(key_path)],
                             cwd=Path(__file__).parents[2])
    threads = [threading.Thread(target=lambda: [log.append(Event.ROUND_JOINED, round=i) for i in range(20)])
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert child.wait(timeout=60) == 0
    log.close()
    result = verify_log(path)
    assert result.ok, result.reason
    assert result.entries == 90


def test_signing_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_hex(load_or_create_signing_key(path)) == public_key_hex(key)
    assert len(public_key_hex(key)) == 64
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create_signing_key(path)
    path.chmod(0o600)
    path.write_bytes(b"garbage")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_or_create_signing_key(path)
