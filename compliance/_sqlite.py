"""SQLite settings shared by the audit log and the privacy ledger.

Both are small, append-mostly stores that several threads and processes of one node
write to. WAL lets readers (a report, ``fedcare audit verify``) run while a node writes;
``synchronous=FULL`` makes every committed entry survive a power cut, which an audit
trail must; ``BEGIN IMMEDIATE`` takes the write lock before reading the current head so
two processes can never append on top of the same previous entry. A simulated node alone opens
them with ``Durability.PROCESS_CRASH`` (compliance/durability.py): ``synchronous=OFF``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compliance.durability import Durability

BUSY_TIMEOUT_MS = 30_000
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def file_problem(path: Path) -> str | None:
    """Why an *existing* file at ``path`` cannot be a database we wrote, or None.

    A 0-byte or foreign file would otherwise be opened as an empty database and state
    (an audit trail, a privacy budget) would silently start again from nothing.
    """
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        return "is not a file"
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if not header:
        return "is empty (0 bytes)"
    if header != SQLITE_HEADER:
        return "is not an SQLite database (corrupt or overwritten)"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"is corrupt ({exc})"
    return None if verdict == "ok" else f"is corrupt ({verdict})"


def connect(path: Path, *, read_only: bool = False,
            durability: Durability = Durability.POWER_LOSS) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit) with WAL and the sync of ``durability``."""
    if read_only:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA synchronous={durability.sqlite_synchronous}")
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds SQLite's write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def close(conn: sqlite3.Connection) -> None:
    """Checkpoint the WAL into the main file, then close: a copied ``.db`` file is complete."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError:
        pass  # another connection is reading; SQLite checkpoints later, nothing is lost
    conn.close()
