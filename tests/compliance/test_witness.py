"""Witnessed heads: a log cut back to an older signed state, or rewritten and re-signed with the
node's own key, verifies alone but fails against the heads its peer witnessed (#16 item 3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compliance import (
    AuditLog, AuditLogError, Event, LedgerError, PrivacyLedger, SignedHead, WitnessError, load_or_create_signing_key,
    read_log, verify_log, verify_logs, witness,
)
from compliance.audit import ENTRY_DOMAIN, entry_hash, head_message
from compliance.node_log import AUDIT_LOG_FILE, SIGNING_KEY_FILE, open_node_log

from .conftest import message, raw, snapshot


def _pair(tmp_path: Path) -> tuple[AuditLog, AuditLog]:
    silo = AuditLog.open(tmp_path / "silo.db", node="silo-a", signing_key=load_or_create_signing_key(tmp_path / "s.pem"))
    coord = AuditLog.open(tmp_path / "coord.db", node="coordinator", role="coordinator",
                          signing_key=load_or_create_signing_key(tmp_path / "c.pem"))
    return silo, coord


def test_rolled_back_log_fails_against_the_witnessed_head(tmp_path: Path) -> None:
    silo, coord = _pair(tmp_path)
    for r in range(1, 4):
        silo.append(Event.MESSAGE_SENT, **message(r, "silo-a"))
    snapshot(silo.path, tmp_path / "older.db")  # 3 entries, validly signed
    for r in range(4, 8):
        silo.append(Event.MESSAGE_SENT, **message(r, "silo-a"))
    witness(coord, SignedHead.of(silo))  # the coordinator saw 7 entries
    silo.close()
    coord.close()
    shutil.copy(tmp_path / "older.db", silo.path)  # the attacker rolls the tail back
    for suffix in ("-wal", "-shm"):
        Path(f"{silo.path}{suffix}").unlink(missing_ok=True)

    assert verify_log(silo.path).ok  # alone, the older state is a valid log: the attack of #16
    results = verify_logs([read_log(silo.path), read_log(coord.path)])
    assert not results[0].ok and results[0].first_bad == 4
    assert "witnessed a signed head of 7 entries but this log holds 3" in results[0].reason
    assert results[1].ok


def test_rewritten_and_resigned_log_fails_against_the_witnessed_head(tmp_path: Path) -> None:
    silo, coord = _pair(tmp_path)
    for r in range(1, 6):
        silo.append(Event.MESSAGE_SENT, **message(r, "silo-a"))
    witness(coord, SignedHead.of(silo))
    silo.close()
    coord.close()
    # Root on the silo: the signing key is in its state directory. Entry 2 is edited and the
    # chain re-hashed and re-signed from there, head included.
    key = load_or_create_signing_key(tmp_path / "s.pem")
    conn = raw(silo.path)
    rows = conn.execute("SELECT idx, timestamp, node, event, fields FROM entries ORDER BY idx").fetchall()
    prev = "0" * 64
    for idx, ts, node, event, fields in rows:
        fields = json.loads(fields)
        if idx == 2:
            fields["size"] = 1
        digest = entry_hash(index=idx, timestamp=ts, node=node, event=event, fields=fields, prev_hash=prev)
        conn.execute("UPDATE entries SET fields=?, prev_hash=?, hash=?, signature=? WHERE idx=?",
                     (json.dumps(fields, sort_keys=True, separators=(",", ":")), prev, digest,
                      key.sign(ENTRY_DOMAIN + bytes.fromhex(digest)).hex(), idx))
        prev = digest
    conn.execute("UPDATE meta SET value=? WHERE key='head_hash'", (prev,))
    conn.execute("UPDATE meta SET value=? WHERE key='head_signature'", (key.sign(head_message(5, prev)).hex(),))
    conn.close()

    assert verify_log(silo.path).ok  # re-signed with the node's own key: intact on its own
    result = verify_logs([read_log(silo.path), read_log(coord.path)])[0]
    assert not result.ok and result.first_bad == 5
    assert "differs from the signed head coordinator" in result.reason


def test_both_sides_witness_and_an_honest_pair_verifies(tmp_path: Path) -> None:
    silo, coord = _pair(tmp_path)
    for r in range(1, 4):
        silo.append(Event.MESSAGE_SENT, **message(r, "silo-a"))
        coord.append(Event.MESSAGE_RECEIVED, silo="silo-a", **message(r, "silo-a"))
        witness(coord, SignedHead.of(silo))
        witness(silo, SignedHead.of(coord))
    results = verify_logs([read_log(silo.path), read_log(coord.path)])
    assert [r.ok for r in results] == [True, True]
    assert [r.witnessed for r in results] == [3, 3]
    assert "extends all 3 heads others witnessed" in results[0].reason


def test_a_head_that_goes_back_is_recorded_and_refused_at_once(tmp_path: Path) -> None:
    silo, coord = _pair(tmp_path)
    for r in range(1, 4):
        silo.append(Event.MESSAGE_SENT, **message(r, "silo-a"))
    before = SignedHead.of(silo)
    silo.append(Event.MESSAGE_SENT, **message(4, "silo-a"))
    witness(coord, SignedHead.of(silo))
    with pytest.raises(WitnessError, match="went back from 4 entries .* to 3"):
        witness(coord, before)
    assert "went back" in coord.entries()[-1].fields["conflict"]  # kept as evidence


def test_a_forged_head_is_refused(tmp_path: Path) -> None:
    silo, coord = _pair(tmp_path)
    silo.append(Event.NODE_CONFIGURED)
    head = SignedHead.of(silo)
    forged = SignedHead(head.node, head.public_key, head.count + 5, head.hash, head.signature)
    with pytest.raises(WitnessError, match="not signed by the key"):
        witness(coord, forged)
    assert len(coord) == 0


def test_a_witness_for_another_key_fails_verification(tmp_path: Path) -> None:
    """A log swapped for one that a new key signed (key file replaced) does not match what was witnessed."""
    silo, coord = _pair(tmp_path)
    silo.append(Event.NODE_CONFIGURED)
    witness(coord, SignedHead.of(silo))
    silo.close()
    silo.path.unlink()
    other = AuditLog.open(silo.path, node="silo-a", signing_key=load_or_create_signing_key(tmp_path / "new.pem"))
    other.append(Event.NODE_CONFIGURED)
    result = verify_logs([read_log(silo.path), read_log(coord.path)])[0]
    assert not result.ok and "not this log's key" in result.reason


def test_registered_key_mismatch_is_named(tmp_path: Path) -> None:
    silo, _ = _pair(tmp_path)
    silo.append(Event.NODE_CONFIGURED)
    result = verify_logs([read_log(silo.path)], keys={"silo-a": "22" * 32})[0]
    assert not result.ok and "not signed by the expected key 2222" in result.reason


def test_missing_log_at_a_node_with_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    open_node_log(state, node="silo-a", role="silo", state_files=("privacy-ledger.sqlite",)).close()
    PrivacyLedger(state / "privacy-ledger.sqlite").close()
    (state / AUDIT_LOG_FILE).unlink()
    with pytest.raises(AuditLogError, match="is missing, but .* holds this node's state .privacy-ledger.sqlite"):
        open_node_log(state, node="silo-a", role="silo", state_files=("privacy-ledger.sqlite",))
    assert not (state / AUDIT_LOG_FILE).exists()  # nothing created


def test_missing_signing_key_with_a_log_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    open_node_log(state, node="silo-a", role="silo").close()
    (state / SIGNING_KEY_FILE).unlink()
    with pytest.raises(AuditLogError, match="signing key .* is missing"):
        open_node_log(state, node="silo-a", role="silo")


@pytest.mark.parametrize("content", [b"", b"garbage, not a database" * 100])
def test_empty_or_corrupt_log_and_ledger_are_refused_untouched(tmp_path: Path, content: bytes) -> None:
    log_path, ledger_path = tmp_path / "audit.sqlite", tmp_path / "ledger.sqlite"
    log_path.write_bytes(content)
    ledger_path.write_bytes(content)
    with pytest.raises(AuditLogError, match="restore it from backup"):
        AuditLog.open(log_path, node="n", signing_key=load_or_create_signing_key(tmp_path / "k.pem"))
    with pytest.raises(LedgerError, match="restore it from backup"):
        PrivacyLedger(ledger_path)
    assert log_path.read_bytes() == content and ledger_path.read_bytes() == content
