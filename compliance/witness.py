"""Witnessed heads: a node's signed (entry count, last hash) recorded in a peer's log.

A signed head alone cannot show that a log was cut back to an older state its own node
once signed (the older heads survive in SQLite's write-ahead log) or rewritten and
re-signed with the node's key. So the heads are gossiped, as Certificate Transparency
gossips signed tree heads (RFC 6962 §3.5; Chuat et al., "Efficient Gossip Protocols for
Verifying the Consistency of Certificate Logs", IEEE CNS 2015): each silo periodically
sends its signed head to the coordinator and gets the coordinator's back, and each side
records what it received as a ``head_witnessed`` entry in its *own* signed log. A log
verifies only if it extends every head that others witnessed for it
(:func:`compliance.verify.verify_logs`). A witness also checks each new head against the
last one it recorded for that node, so a rollback shows at the next exchange.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from compliance.audit import AuditEntry, AuditLog, Event, head_message
from compliance.errors import AuditLogError

log = logging.getLogger(__name__)


class WitnessError(AuditLogError):
    """A peer's signed head is malformed, badly signed, or contradicts a head witnessed before."""


@dataclass(frozen=True)
class SignedHead:
    """What one node states about its own log: ``count`` entries, the last with ``hash``."""

    node: str
    public_key: str  # hex Ed25519 key the head is signed with
    count: int
    hash: str
    signature: str

    @classmethod
    def of(cls, audit: AuditLog) -> SignedHead:
        count, last_hash, signature = audit.signed_head()
        return cls(audit.node, audit.public_key_hex, count, last_hash, signature)

    @classmethod
    def from_message(cls, message: Any) -> SignedHead:
        """From anything with these five attributes (the wire's ``SignedHead`` message)."""
        return cls(str(message.node), str(message.public_key), int(message.count), str(message.hash),
                   str(message.signature))

    def as_dict(self) -> dict[str, Any]:
        """The five fields by their names, which are also the wire message's field names."""
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> SignedHead:
        """The head a ``head_witnessed`` entry recorded."""
        return cls(str(fields.get("witnessed", "")), str(fields.get("public_key", "")),
                   int(fields.get("count", -1)), str(fields.get("hash", "")), str(fields.get("signature", "")))

    def signature_problem(self) -> str | None:
        """Why this head is not a valid statement by the key it names, or None."""
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_key))
            key.verify(bytes.fromhex(self.signature), head_message(self.count, self.hash))
        except (InvalidSignature, ValueError, OverflowError):
            return (f"the head of {self.node!r} ({self.count} entries) is not signed by the key "
                    f"{self.public_key[:16]}… it names")
        return None


def witness(audit: AuditLog, head: SignedHead) -> AuditEntry:
    """Record ``head`` (a peer's) in ``audit``; raise :class:`WitnessError` if it is bad or went back.

    A head that contradicts an earlier one (fewer entries, another hash at the same count,
    another key) is recorded all the same, with the conflict, as evidence; then refused.
    """
    if not head.node or head.count < 0 or len(head.hash) != 64:
        raise WitnessError(f"malformed signed head from {head.node!r}: count {head.count}, hash {head.hash[:70]!r}")
    problem = head.signature_problem()
    if problem:
        raise WitnessError(problem)
    before = audit.latest(Event.HEAD_WITNESSED, where="witnessed", equals=head.node)
    conflict = _conflict(SignedHead.from_fields(before.fields), head, before.index) if before else None
    fields = {"witnessed": head.node, "public_key": head.public_key, "count": head.count,
              "hash": head.hash, "signature": head.signature}
    if conflict:
        fields["conflict"] = conflict
    entry = audit.append(Event.HEAD_WITNESSED, **fields)
    if conflict:
        log.error("audit log of %s: %s", head.node, conflict)
        raise WitnessError(f"audit log of {head.node}: {conflict}")
    return entry


def _conflict(earlier: SignedHead, now: SignedHead, at: int) -> str | None:
    if now.public_key != earlier.public_key:
        return (f"signed with key {now.public_key[:16]}… but the head witnessed at entry {at} was signed with "
                f"{earlier.public_key[:16]}… (a new key needs a new registration)")
    if now.count < earlier.count:
        return (f"its head went back from {earlier.count} entries (witnessed at entry {at}) to {now.count}: "
                "the log was cut back or an older copy restored")
    if now.count == earlier.count and now.hash != earlier.hash:
        return f"entry {now.count} differs from the head witnessed at entry {at}: the log was rewritten"
    return None
