"""The node's audit log: append-only, hash-chained, Ed25519-signed, in SQLite.

Every boundary crossing of a silo or the coordinator (a study approved, an update sent,
an aggregate released, a refusal) is one entry. Entry *n* stores the SHA-256 of entry
*n-1*, its own SHA-256 over a canonical JSON encoding of its contents, and the node's
Ed25519 signature over that hash, the construction of Crosby & Wallach, "Efficient Data
Structures for Tamper-Evident Logging" (USENIX Security 2009) in its simple linear form.
A signed *head* (entry count and last hash) in the ``meta`` table makes deleting the
newest entries detectable too; restoring a whole older copy of the file is not, which is
why silo and coordinator logs are reconciled against each other (:mod:`compliance.reconcile`).

Verification lives in :mod:`compliance.verify`; this module writes and reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compliance import _sqlite
from compliance.durability import Durability
from compliance.errors import AuditFieldError, AuditLogError
from compliance.keys import public_key_hex
from compliance.phi import check_no_phi

log = logging.getLogger(__name__)

FORMAT = "fedcare-audit-log/1"
GENESIS_HASH = "0" * 64
ENTRY_DOMAIN = b"fedcare-audit-entry/1\x00"
HEAD_DOMAIN = b"fedcare-audit-head/1\x00"
Role = Literal["silo", "coordinator"]


class Event(StrEnum):
    """The events a node records. A silo and the coordinator use the same names."""

    NODE_CONFIGURED = "node_configured"
    STUDY_RECEIVED = "study_received"
    STUDY_APPROVED = "study_approved"
    STUDY_REJECTED = "study_rejected"
    DATA_INGESTED = "data_ingested"
    # fields: study, by ("hash"/"column"), sizes (train/validation/test), assigned (samples by the part their data names)
    DATA_SPLIT = "data_split"
    ROUND_JOINED = "round_joined"
    ROUND_SKIPPED = "round_skipped"
    # fields: kind, size, sha256, round, study (+ silo, the peer, at the coordinator)
    MESSAGE_SENT = "message_sent"
    MESSAGE_RECEIVED = "message_received"  # same fields; matched against the peer's message_sent
    MODEL_RECEIVED = "model_received"
    AGGREGATION = "aggregation"
    MODEL_RELEASED = "model_released"
    AUTH_FAILURE = "auth_failure"
    BUDGET_REFUSED = "budget_refused"
    UPDATE_REFUSED = "update_refused"
    ATTACK_CONFIGURED = "attack_configured"  # a deliberately malicious node (robustness tests only)
    STUDY_FAILED = "study_failed"
    # fields: study, round, min_cell_count, suppressed, mechanism, epsilon: an analysis study's statistics
    # left the silo (its message_sent follows); at the coordinator: study, silos, suppressed (pooled)
    STATISTICS_RELEASED = "statistics_released"
    # fields: study, round, request, code, reason: a silo told "no" by the coordinator (the node goes on)
    REFUSAL_RECEIVED = "refusal_received"
    # fields: study, silo, round: a silo takes part for the first time in a round after round 1 (late join)
    SILO_JOINED = "silo_joined"
    # fields: witnessed, public_key, count, hash, signature (+ conflict): a peer's signed head
    HEAD_WITNESSED = "head_witnessed"
    # fields: user, role, client, outcome ("accepted"/"refused"), reason: a sign-in at a web console (console/)
    CONSOLE_SIGN_IN = "console_sign_in"
    # fields: user, role, client, path, reason: a console request refused (no session, wrong role, CSRF, remote)
    CONSOLE_REFUSED = "console_refused"
    # fields: study, approved, by, reason, spec_sha256: a site admin's decision taken in the site console
    CONSOLE_DECISION = "console_decision"
    # fields: outcome ("quarantined"/"refused"), reason, via ("mqtt"/"http"), count, first, last: streamed
    # wearable messages a silo's receiver refused, one event per reason and interval (silo_node/streams/refusals.py)
    STREAM_REFUSED = "stream_refused"


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS entries (
        idx INTEGER PRIMARY KEY,            -- 1-based, no gaps
        timestamp TEXT NOT NULL,            -- UTC, ISO 8601 with microseconds and 'Z'
        node TEXT NOT NULL,
        event TEXT NOT NULL,
        fields TEXT NOT NULL,               -- canonical JSON object
        prev_hash TEXT NOT NULL,            -- hex SHA-256 of entry idx-1 (zeros for entry 1)
        hash TEXT NOT NULL,                 -- hex SHA-256 of this entry's canonical encoding
        signature TEXT NOT NULL             -- hex Ed25519 signature over ENTRY_DOMAIN + hash
    )""",
    # Defence in depth against our own bugs; an attacker with the file can drop these,
    # which is what the hash chain and signatures are for.
    """CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)


@dataclass(frozen=True)
class AuditEntry:
    index: int
    timestamp: str
    node: str
    event: str
    fields: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str
    raw_fields: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class LogContents:
    """Everything stored in one log file, as read, without any verification."""

    path: Path
    node: str
    role: str
    public_key: str  # hex, as the header states it
    entries: list[AuditEntry]
    head_count: int
    head_hash: str
    head_signature: str


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text, no NaN/Infinity (close to RFC 8785 for our values)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(*, index: int, timestamp: str, node: str, event: str,
               fields: dict[str, Any], prev_hash: str) -> str:
    body = {"index": index, "timestamp": timestamp, "node": node, "event": event,
            "fields": fields, "prev_hash": prev_hash, "format": FORMAT}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def head_message(count: int, last_hash: str) -> bytes:
    return HEAD_DOMAIN + count.to_bytes(8, "big") + bytes.fromhex(last_hash)


class AuditLog:
    """One node's append-only audit log. Safe to share between threads and processes."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, node: str, role: str,
                 signing_key: Ed25519PrivateKey) -> None:
        self.path, self.node, self.role = path, node, role
        self._conn, self._key, self._lock = conn, signing_key, threading.Lock()
        self.public_key_hex = public_key_hex(signing_key)

    @classmethod
    def open(cls, path: Path, *, node: str, signing_key: Ed25519PrivateKey,
             role: Role = "silo", durability: Durability = Durability.POWER_LOSS) -> AuditLog:
        """Open (or create) the log at ``path`` for ``node``, which signs with ``signing_key``.

        A log belongs to one node and one key for life: opening it as another node or with
        another key is refused, since its entries could then no longer be verified.
        """
        path = Path(path)
        if not node:
            raise AuditLogError("an audit log needs a node name (the silo or coordinator id)")
        problem = _sqlite.file_problem(path)
        if problem:
            raise AuditLogError(f"{path} is not a readable fedcare audit log: it {problem}; restore it from backup "
                                "(with its -wal file). "
                                "A node never starts a new log over an old one")
        try:
            conn = _sqlite.connect(path, durability=durability)
            with _sqlite.immediate(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    meta = _initial_meta(node, role, signing_key)
                    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        except sqlite3.DatabaseError as exc:
            raise AuditLogError(f"{path} is not a readable fedcare audit log ({exc})") from exc
        expected = {"format": FORMAT, "node": node, "public_key": public_key_hex(signing_key)}
        for key, want in expected.items():
            if meta.get(key) != want:
                conn.close()
                raise AuditLogError(
                    f"audit log {path} has {key} {meta.get(key)!r}, but it was opened with "
                    f"{want!r}. A log belongs to one node and one signing key; open the log "
                    "of this node (or restore its original key) instead."
                )
        return cls(path, conn, node=node, role=meta.get("role", role), signing_key=signing_key)

    def append(self, event: str, /, **fields: Any) -> AuditEntry:
        """Record ``event`` with ``fields`` (JSON values, no PHI) and return the signed entry."""
        if event not in Event.__members__.values():
            raise AuditFieldError(
                f"unknown audit event {event!r}; use one of compliance.audit.Event: "
                + ", ".join(e.value for e in Event)
            )
        check_no_phi(fields, event=event)
        try:
            raw = canonical_json(fields)
        except (TypeError, ValueError) as exc:
            raise AuditFieldError(
                f"audit event '{event}': fields must be JSON values (str, int, finite float, "
                f"bool, None, lists, dicts): {exc}"
            ) from exc
        fields = json.loads(raw)  # exactly what a verifier will hash
        with self._lock, _sqlite.immediate(self._conn) as conn:
            last = conn.execute("SELECT idx, hash FROM entries ORDER BY idx DESC LIMIT 1").fetchone()
            index, prev = (last["idx"] + 1, last["hash"]) if last else (1, GENESIS_HASH)
            ts = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            digest = entry_hash(index=index, timestamp=ts, node=self.node, event=event,
                                fields=fields, prev_hash=prev)
            sig = self._key.sign(ENTRY_DOMAIN + bytes.fromhex(digest)).hex()
            conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (index, ts, self.node, event, raw, prev, digest, sig))
            head_sig = self._key.sign(head_message(index, digest)).hex()
            conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                             [(str(index), "head_count"), (digest, "head_hash"),
                              (head_sig, "head_signature")])
        log.debug("audit %s #%d %s", self.node, index, event)
        return AuditEntry(index, ts, self.node, event, fields, prev, digest, sig, raw)

    def signed_head(self) -> tuple[int, str, str]:
        """(entry count, last hash, signature) as stored with the newest entry."""
        with self._lock:
            meta = dict(self._conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('head_count', 'head_hash', 'head_signature')"
            ).fetchall())
        return int(meta["head_count"]), meta["head_hash"], meta["head_signature"]

    def latest(self, event: str, *, where: str, equals: str) -> AuditEntry | None:
        """The newest ``event`` entry whose field ``where`` equals ``equals``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM entries WHERE event = ? AND json_extract(fields, ?) = ? ORDER BY idx DESC LIMIT 1",
                (event, f"$.{where}", equals)).fetchone()
        return _entry(row) if row is not None else None

    def entries(self) -> list[AuditEntry]:
        with self._lock:
            return [_entry(r) for r in self._conn.execute("SELECT * FROM entries ORDER BY idx")]

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            _sqlite.close(self._conn)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: Path) -> LogContents:
    """Read a log file as stored (read-only, no verification; see :func:`compliance.verify.verify_log`)."""
    path = Path(path)
    if not path.is_file():
        raise AuditLogError(f"no audit log at {path}")
    try:
        conn = _sqlite.connect(path, read_only=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            entries = [_entry(r) for r in conn.execute("SELECT * FROM entries ORDER BY idx")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise AuditLogError(f"{path} is not a readable fedcare audit log ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise AuditLogError(f"{path} is not a fedcare audit log (format {meta.get('format')!r}, "
                            f"expected {FORMAT!r})")
    return LogContents(
        path=path, node=meta.get("node", ""), role=meta.get("role", "silo"),
        public_key=meta.get("public_key", ""), entries=entries,
        head_count=int(meta.get("head_count", "0")), head_hash=meta.get("head_hash", ""),
        head_signature=meta.get("head_signature", ""),
    )


def _initial_meta(node: str, role: str, key: Ed25519PrivateKey) -> dict[str, str]:
    return {
        "format": FORMAT, "node": node, "role": role, "public_key": public_key_hex(key),
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "head_count": "0", "head_hash": GENESIS_HASH,
        "head_signature": key.sign(head_message(0, GENESIS_HASH)).hex(),
    }


def _entry(row: sqlite3.Row) -> AuditEntry:
    try:
        fields = json.loads(row["fields"])
    except (TypeError, ValueError):
        fields = {}  # unreadable: verify_log reports it; readers see an empty event
    if not isinstance(fields, dict):
        fields = {}
    return AuditEntry(row["idx"], row["timestamp"], row["node"], row["event"], fields,
                      row["prev_hash"], row["hash"], row["signature"], row["fields"] or "")
