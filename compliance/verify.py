"""Verify an audit log: chain, contents, signatures and the signed head.

Entries are checked in index order and the first failure is reported, since everything
after a broken link is unanchored. For each entry, in this order:

1. its index continues the sequence (a gap means an entry was deleted);
2. its previous-hash equals the stored hash of the entry before it (deleted, inserted or
   reordered entries);
3. its hash equals the SHA-256 of its contents (an edited entry);
4. its signature verifies under the node's public key (a forged or re-hashed entry).

Finally the signed head (entry count and last hash) must match, which catches deletion of
the newest entries. Pass ``public_key`` (registered out of band, ``fedcare silo init``) to
check the log against the key the hospital registered rather than the key the log's own
header claims.

A log that is intact on its own may still be an older copy, or one rewritten and re-signed
with the node's own key. :func:`verify_logs` checks each log against every head the *other*
logs witnessed for it (:mod:`compliance.witness`): a log shorter than a witnessed head, or
whose entry at that count has another hash, fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from compliance.audit import (
    ENTRY_DOMAIN, GENESIS_HASH, AuditEntry, Event, LogContents, entry_hash, head_message, read_log,
)
from compliance.errors import AuditLogError
from compliance.witness import SignedHead


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad: int | None  # index of the first bad (or first missing) entry
    reason: str
    witnessed: int = 0  # heads of this log that other logs witnessed and it was checked against

    def __bool__(self) -> bool:
        return self.ok


def verify_log(path: Path, *, public_key: bytes | str | None = None) -> VerifyResult:
    """Check the log at ``path``; ``public_key`` is the node's raw 32-byte key (or its hex)."""
    try:
        contents = read_log(Path(path))
    except AuditLogError as exc:
        if not Path(path).is_file():
            raise
        return VerifyResult(False, 0, None, str(exc))
    return verify_contents(contents, public_key=public_key)


def verify_contents(log: LogContents, *, public_key: bytes | str | None = None) -> VerifyResult:
    n = len(log.entries)
    header_key = _key_bytes(log.public_key)
    expected_key = header_key
    if public_key is not None:
        expected_key = _key_bytes(public_key)
        if expected_key is None:
            raise ValueError("public_key must be the node's 32 raw Ed25519 bytes or their 64 hex digits")
    if expected_key is None:
        return VerifyResult(False, n, None, "the log header holds no valid public key; "
                            "pass the node's registered key to verify it")
    key = Ed25519PublicKey.from_public_bytes(expected_key)
    rekeyed = header_key != expected_key

    prev_hash = GENESIS_HASH
    for position, entry in enumerate(log.entries, start=1):
        problem = _check_entry(entry, position, prev_hash, log.node, key)
        if problem:
            if rekeyed and problem == "bad signature":
                problem += (f" (not signed by the expected key {expected_key.hex()[:16]}…; "
                            f"the log header names key {log.public_key[:16]}…)")
            return VerifyResult(False, n, position, f"entry {position}: {problem}")
        prev_hash = entry.hash

    if rekeyed:
        return VerifyResult(False, n, None, f"the log header names public key {log.public_key}, "
                            f"not the registered {expected_key.hex()} (another key, or the header edited)")
    return _check_head(log, key, n, prev_hash)


def _check_entry(entry: AuditEntry, position: int, prev_hash: str, node: str,
                 key: Ed25519PublicKey) -> str | None:
    if entry.index != position:
        return f"index {entry.index} where {position} was expected (entry deleted or renumbered)"
    if entry.prev_hash != prev_hash:
        previous = f"entry {position - 1}" if position > 1 else "the start of the log"
        return f"previous-hash does not match {previous} (deleted, inserted or reordered)"
    try:
        fields = json.loads(entry.raw_fields)
    except ValueError:
        return "fields are not valid JSON (edited?)"
    try:
        digest = entry_hash(index=entry.index, timestamp=entry.timestamp, node=entry.node,
                            event=entry.event, fields=fields, prev_hash=entry.prev_hash)
    except (TypeError, ValueError):
        return "fields cannot be encoded canonically (edited?)"
    if digest != entry.hash:
        return "hash does not match its contents (edited?)"
    if entry.node != node:
        return f"node {entry.node!r} differs from the log's node {node!r}"
    try:
        key.verify(bytes.fromhex(entry.signature), ENTRY_DOMAIN + bytes.fromhex(entry.hash))
    except (InvalidSignature, ValueError):
        return "bad signature"
    return None


def _check_head(log: LogContents, key: Ed25519PublicKey, n: int, last_hash: str) -> VerifyResult:
    try:
        key.verify(bytes.fromhex(log.head_signature), head_message(log.head_count, log.head_hash))
    except (InvalidSignature, ValueError, OverflowError):
        return VerifyResult(False, n, None, "the signed head (entry count and last hash) has a "
                            "bad signature (header edited?)")
    if log.head_count > n:
        return VerifyResult(False, n, n + 1, f"entry {n + 1}: missing; the signed head records "
                            f"{log.head_count} entries but only {n} are stored (newest deleted?)")
    if log.head_count < n:
        return VerifyResult(False, n, log.head_count + 1, f"entry {log.head_count + 1}: not "
                            f"covered by the signed head of {log.head_count} entries (appended "
                            "outside fedcare?)")
    if log.head_hash != last_hash:
        return VerifyResult(False, n, n or None, f"entry {n}: differs from the signed head's last "
                            "hash (replaced?)")
    return VerifyResult(True, n, None, f"all {n} entries intact and signed by {log.node}")


def _key_bytes(key: bytes | str | None) -> bytes | None:
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key)
        except ValueError:
            return None
    return key if key is not None and len(key) == 32 else None


def verify_logs(logs: Sequence[LogContents], *,
                keys: Mapping[str, bytes | str] | None = None) -> list[VerifyResult]:
    """Verify each log alone (against its node's registered key in ``keys``, when given), then
    against every head the other logs witnessed for it. One result per log, in order."""
    keys = keys or {}
    alone = [verify_contents(c, public_key=keys.get(c.node)) for c in logs]
    results = []
    for i, (contents, result) in enumerate(zip(logs, alone)):
        if result.ok:
            witnesses = [(other, alone[j]) for j, other in enumerate(logs) if j != i]
            result = _check_witnessed(contents, result, witnesses)
        results.append(result)
    return results


def _check_witnessed(log: LogContents, result: VerifyResult,
                     witnesses: Sequence[tuple[LogContents, VerifyResult]]) -> VerifyResult:
    n, checked, untrusted = len(log.entries), 0, []
    for witness, witness_ok in witnesses:
        for entry in witness.entries:
            if entry.event != Event.HEAD_WITNESSED or entry.fields.get("witnessed") != log.node:
                continue
            if not witness_ok.ok:  # its heads prove nothing; that log is reported on its own
                untrusted.append(witness.node)
                break
            where = f"{witness.node} (its entry {entry.index}, {entry.timestamp})"
            head = SignedHead.from_fields(entry.fields)
            if head.public_key != log.public_key:
                return VerifyResult(False, n, None, f"{where} witnessed a head signed with key {head.public_key[:16]}…, "
                                    f"not this log's key {log.public_key[:16]}… (another node's log, or a new key)")
            if head.signature_problem():
                continue  # not a statement of this node: nothing it signed is contradicted
            checked += 1
            if head.count > n:
                return VerifyResult(False, n, n + 1, f"entry {n + 1}: missing; {where} witnessed a signed head of "
                                    f"{head.count} entries but this log holds {n} (tail cut off, or an older copy)",
                                    checked)
            at = log.entries[head.count - 1].hash if head.count else GENESIS_HASH
            if at != head.hash:
                return VerifyResult(False, n, head.count or None, f"entry {head.count}: differs from the signed head "
                                    f"{where} witnessed (the log was rewritten and re-signed)", checked)
    reason = result.reason + (f"; extends all {checked} heads others witnessed" if checked else "")
    if untrusted:
        reason += f"; heads witnessed by {', '.join(untrusted)} not checked (that log does not verify)"
    return VerifyResult(True, n, None, reason, checked)
