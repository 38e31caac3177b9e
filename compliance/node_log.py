"""Where a node keeps its audit log and signing key, and opening them without a fresh start.

A silo's or coordinator's state directory holds ``audit.sqlite`` and the key that signs it.
If the log is gone while the node's other state is still there, starting a new, valid,
empty log would hide everything the old one held, so that is refused: the operator
restores the log from backup or retires the whole state directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compliance.audit import AuditLog, Role
from compliance.durability import Durability
from compliance.errors import AuditLogError
from compliance.keys import load_or_create_signing_key

AUDIT_LOG_FILE = "audit.sqlite"
SIGNING_KEY_FILE = "audit-signing-key.pem"


def open_node_log(state_dir: Path, *, node: str, role: Role, state_files: Sequence[str] = (),
                  durability: Durability = Durability.POWER_LOSS) -> AuditLog:
    """Open the node's log in ``state_dir``; create it only if none of ``state_files`` exist there yet.

    ``state_files`` names what the node writes once it has done something (a database, a
    privacy ledger, approvals): their presence means this node has a history to account for.
    """
    state_dir = Path(state_dir)
    path, key = state_dir / AUDIT_LOG_FILE, state_dir / SIGNING_KEY_FILE
    if not path.exists():
        existing = [name for name in state_files if (state_dir / name).exists()]
        if existing:
            raise AuditLogError(
                f"audit log {path} is missing, but {state_dir} holds this node's state ({', '.join(existing)}). "
                "A node never starts a new log mid-life: restore audit.sqlite (with its -wal file) from backup, "
                "or move the whole state directory away to start a new node.")
    elif not key.exists():
        raise AuditLogError(f"signing key {key} is missing but audit log {path} exists; restore the key from "
                            "backup (a new key could not continue this log)")
    return AuditLog.open(path, node=node, role=role, signing_key=load_or_create_signing_key(key), durability=durability)
