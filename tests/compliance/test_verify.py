"""verify_log catches each way of tampering with a log file, at the right entry."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from compliance import AuditLog, Event, load_or_create_signing_key, public_key_bytes, verify_log
from compliance.audit import GENESIS_HASH, entry_hash

from .conftest import raw

COLUMNS = "timestamp, node, event, fields, prev_hash, hash, signature"


def test_intact_log_verifies(simple_log) -> None:
    path, key_path = simple_log
    result = verify_log(path, public_key=public_key_bytes(load_or_create_signing_key(key_path)))
    assert (result.ok, result.entries, result.first_bad) == (True, 10, None)
    assert "all 10 entries intact" in result.reason


def test_edited_field_is_caught_at_that_entry(simple_log) -> None:
    path, _ = simple_log
    conn = raw(path)
    fields = json.loads(conn.execute("SELECT fields FROM entries WHERE idx = 7").fetchone()[0])
    fields["size"] = 1  # shrink what the silo claims it sent
    conn.execute("UPDATE entries SET fields = ? WHERE idx = 7", (json.dumps(fields),))
    result = verify_log(path)
    assert not result.ok and result.first_bad == 7
    assert result.reason == "entry 7: hash does not match its contents (edited?)"


def test_deleted_entry_is_caught_where_it_is_missing(simple_log) -> None:
    path, _ = simple_log
    raw(path).execute("DELETE FROM entries WHERE idx = 7")
    result = verify_log(path)
    assert (result.ok, result.first_bad, result.entries) == (False, 7, 9)
    assert result.reason.startswith("entry 7: index 8 where 7 was expected")


def test_deleted_and_renumbered_entries_are_caught(simple_log) -> None:
    path, _ = simple_log
    conn = raw(path)
    conn.execute("DELETE FROM entries WHERE idx = 7")
    conn.execute("UPDATE entries SET idx = idx - 1 WHERE idx > 7")
    result = verify_log(path)
    assert result.first_bad == 7
    assert result.reason == ("entry 7: previous-hash does not match entry 6 "
                             "(deleted, inserted or reordered)")


def test_deleting_the_newest_entries_is_caught_by_the_signed_head(simple_log) -> None:
    path, _ = simple_log
    raw(path).execute("DELETE FROM entries WHERE idx >= 9")
    result = verify_log(path)
    assert (result.ok, result.first_bad) == (False, 9)
    assert "signed head records 10 entries but only 8" in result.reason


def test_swapped_entries_are_caught_at_the_first_of_them(simple_log) -> None:
    path, _ = simple_log
    conn = raw(path)
    four = conn.execute(f"SELECT {COLUMNS} FROM entries WHERE idx = 4").fetchone()
    five = conn.execute(f"SELECT {COLUMNS} FROM entries WHERE idx = 5").fetchone()
    sets = ", ".join(f"{c.strip()} = ?" for c in COLUMNS.split(","))
    conn.execute(f"UPDATE entries SET {sets} WHERE idx = 4", five)
    conn.execute(f"UPDATE entries SET {sets} WHERE idx = 5", four)
    result = verify_log(path)
    assert result.first_bad == 4
    assert result.reason == ("entry 4: previous-hash does not match entry 3 "
                             "(deleted, inserted or reordered)")


def test_inserted_forged_entry_is_caught_by_its_signature(simple_log, tmp_path: Path) -> None:
    """The forger knows the format and recomputes every hash, but lacks the node's key."""
    path, _ = simple_log
    forger = load_or_create_signing_key(tmp_path / "forger.pem")
    conn = raw(path)
    rows = conn.execute(f"SELECT idx, {COLUMNS} FROM entries WHERE idx >= 6 ORDER BY idx").fetchall()
    conn.execute("DELETE FROM entries WHERE idx >= 6")
    prev = conn.execute("SELECT hash FROM entries WHERE idx = 5").fetchone()[0]
    forged = {"kind": "update", "size": 5, "sha256": "00" * 32, "round": 99, "study": "x"}
    new_rows = [(6, "2025-01-01T00:00:00.000000Z", "silo-a", "message_sent", forged)]
    new_rows += [(idx + 1, ts, node, event, json.loads(f)) for idx, ts, node, event, f, *_ in rows]
    for idx, ts, node, event, fields in new_rows:  # re-chain everything after the insertion
        digest = entry_hash(index=idx, timestamp=ts, node=node, event=event, fields=fields, prev_hash=prev)
        sig = forger.sign(b"fedcare-audit-entry/1\x00" + bytes.fromhex(digest)).hex()
        conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (idx, ts, node, event, json.dumps(fields), prev, digest, sig))
        prev = digest
    result = verify_log(path)
    assert (result.ok, result.first_bad) == (False, 6)
    assert result.reason == "entry 6: bad signature"


def test_inserted_unchained_entry_is_caught_by_the_chain(simple_log) -> None:
    path, _ = simple_log
    conn = raw(path)
    conn.execute("UPDATE entries SET idx = idx + 100 WHERE idx >= 4")  # make room
    conn.execute("UPDATE entries SET idx = idx - 99 WHERE idx >= 104")
    conn.execute("INSERT INTO entries VALUES (4, '2025-01-01T00:00:00Z', 'silo-a', 'round_joined', "
                 "'{}', ?, 'ab', 'cd')", (GENESIS_HASH,))
    result = verify_log(path)
    assert result.first_bad == 4 and "previous-hash does not match entry 3" in result.reason


def test_wrong_public_key_fails(simple_log, tmp_path: Path) -> None:
    path, _ = simple_log
    stranger = load_or_create_signing_key(tmp_path / "stranger.pem")
    result = verify_log(path, public_key=public_key_bytes(stranger))
    assert (result.ok, result.first_bad) == (False, 1)
    assert result.reason.startswith("entry 1: bad signature (not signed by the expected key")
    with pytest.raises(ValueError, match="32 raw"):
        verify_log(path, public_key=b"short")


def test_rekeyed_header_is_caught_against_the_registered_key(simple_log, tmp_path: Path) -> None:
    """An attacker re-signs the whole log with their own key and rewrites the header."""
    path, key_path = simple_log
    registered = public_key_bytes(load_or_create_signing_key(key_path))
    conn = raw(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'public_key'", ("11" * 32,))
    assert not verify_log(path).ok  # the header key no longer verifies the entries
    result = verify_log(path, public_key=registered)
    assert not result.ok and result.first_bad is None and "header" in result.reason


def test_a_file_that_is_not_a_log(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE meta (key TEXT, value TEXT)")
    result = verify_log(path)
    assert not result.ok and "fedcare audit log" in result.reason


def test_empty_log_verifies(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k.pem")
    AuditLog.open(tmp_path / "a.db", node="n", signing_key=key).close()
    assert verify_log(tmp_path / "a.db").ok
    with AuditLog.open(tmp_path / "a.db", node="n", signing_key=key) as log:
        log.append(Event.NODE_CONFIGURED)
    assert verify_log(tmp_path / "a.db", public_key=public_key_bytes(key).hex()).ok
