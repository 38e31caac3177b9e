"""The coordinator's durable state: studies, silos, rounds, updates, model versions, metrics.

SQLAlchemy models over SQLite (WAL) by default; the same models work on PostgreSQL. Large
objects (models, updates, key material) live in the content-addressed BlobStore; rows hold
their SHA-256. Everything the coordinator needs to resume after a restart is here.

The schema is owned by Alembic (`coordinator/migrations/`): `open_engine` upgrades a
database to the newest revision, so a change to these models needs a new revision there
(`python -m coordinator.migrations revision -m "..." --autogenerate`); the store tests fail
while models and migrations disagree.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from compliance.durability import Durability
from coordinator.errors import InvalidInput


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_json: Mapped[str] = mapped_column(Text)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))  # enrolling, keygen, running, finalizing, done, failed
    created_at: Mapped[float] = mapped_column(Float)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    key_holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    public_context_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    final_model_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    server_state_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # server optimiser


class SiloRow(Base):
    __tablename__ = "silos"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    modalities_json: Mapped[str] = mapped_column(Text, default="[]")
    wrap_public_key: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    last_seen: Mapped[float] = mapped_column(Float, default=0.0)


class EnrollmentRow(Base):
    __tablename__ = "enrollments"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    silo: Mapped[str] = mapped_column(String(200), primary_key=True)
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")
    train_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    test_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    wrapped_key_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # A regional aggregator's accepting members: {member: base64 X25519 wrap key} (None: a silo)
    member_wrap_keys_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class RoundRow(Base):
    __tablename__ = "rounds"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(20))  # open, closed
    nonce: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    participants_json: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # accepted / refused silos

    def participant_set(self) -> frozenset[str]:
        """The round's participants. Every message of a round checks them: the list is parsed once, not per message."""
        return _participant_set(self.participants_json)


@functools.lru_cache(maxsize=64)
def _participant_set(participants_json: str) -> frozenset[str]:
    return frozenset(json.loads(participants_json))


class UpdateRow(Base):
    __tablename__ = "updates"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(200), primary_key=True)
    blob_sha: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    weight: Mapped[float] = mapped_column(Float)
    encoding: Mapped[str] = mapped_column(String(40))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    received_at: Mapped[float] = mapped_column(Float)


class SkipRow(Base):
    __tablename__ = "skips"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    blob_sha: Mapped[str] = mapped_column(String(64))
    encoding: Mapped[str] = mapped_column(String(40))  # "tensors" (plaintext) or "ckks-*" (encrypted delta)
    base_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class MetricsRow(Base):
    __tablename__ = "metrics"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(200), primary_key=True)
    metrics_json: Mapped[str] = mapped_column(Text)
    samples: Mapped[int] = mapped_column(BigInteger)
    model_sha: Mapped[str] = mapped_column(String(64), default="")


class TrafficRow(Base):
    __tablename__ = "traffic"
    study_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    silo: Mapped[str] = mapped_column(String(200), primary_key=True)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)


def _sqlite_pragmas(durability: Durability) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={durability.sqlite_synchronous}")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    return on_connect


def open_engine(url_or_path: str | Path, *, durability: Durability = Durability.POWER_LOSS) -> Engine:
    """`sqlite:///...`, `postgresql://...`, or a plain path to a SQLite file; upgraded to the newest schema.

    `durability` sets a SQLite file's sync (compliance/durability.py: only `fedcare simulate` lowers it);
    a server database keeps its own settings."""
    url = str(url_or_path)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{url}"
    # A server database's connections can go stale; a local SQLite file's cannot (no ping per query).
    engine = create_engine(url, future=True, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(durability))
    upgrade(engine)
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` with Alembic.

    A database written before migrations existed (by `create_all`: every table, no
    `alembic_version`) is stamped as the first revision, then upgraded like any other.
    """
    from coordinator.migrations import FIRST_REVISION, alembic_config  # first: it quiets alembic's import logging
    from alembic import command

    with engine.begin() as conn:
        tables = set(inspect(conn).get_table_names())
        config = alembic_config(conn)
        if "alembic_version" not in tables and set(Base.metadata.tables) <= tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, revision)


def check_row(row: Base) -> None:
    """Refuse text the two backends would treat differently, before it reaches either.

    PostgreSQL refuses NUL characters and strings longer than a VARCHAR's length, where
    SQLite stores both; checking here makes an untrusted value a clear InvalidInput on
    both instead of a driver error (INTERNAL) on one and silent acceptance on the other.
    """
    for column in row.__table__.columns:
        value = getattr(row, column.key, None)
        if not isinstance(value, str):
            continue
        where = f"{row.__tablename__}.{column.key}"
        if "\x00" in value:
            raise InvalidInput(f"{where}: text may not contain NUL characters")
        limit = getattr(column.type, "length", None)
        if limit is not None and len(value) > limit:
            raise InvalidInput(f"{where}: {len(value)} characters where at most {limit} fit")


def _storable_key(*values: Any) -> bool:
    """False for a key no row can have (NUL, which PostgreSQL cannot even compare)."""
    return not any(isinstance(v, str) and "\x00" in v for v in values)


class Store:
    """Thin helpers over a session factory; the Federation holds the one lock that orders writes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)

    def add(self, *rows: Base) -> None:
        for row in rows:
            check_row(row)
        with self.session.begin() as s:
            for row in rows:
                s.merge(row)

    def get(self, cls: type[Any], *key: Any) -> Any:
        if not _storable_key(*key):
            return None
        with self.session() as s:
            return s.get(cls, key if len(key) > 1 else key[0])

    def all(self, cls: type[Any], **where: Any) -> list[Any]:
        if not _storable_key(*where.values()):
            return []
        with self.session() as s:
            stmt = select(cls).filter_by(**where)
            return list(s.scalars(stmt))

    def column(self, column: Any, **where: Any) -> set[Any]:
        """The distinct values of one column (e.g. `UpdateRow.silo`) of the rows matching `where`, in one query:
        what a check over every silo of a round reads, instead of one query per silo."""
        if not _storable_key(*where.values()):
            return set()
        with self.session() as s:
            return set(s.scalars(select(column).filter_by(**where).distinct()))

    def count(self, cls: type[Any], **where: Any) -> int:
        """The number of rows of `cls` matching `where`, counted by the database (no row is read)."""
        if not _storable_key(*where.values()):
            return 0
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(cls).filter_by(**where)) or 0)

    def add_traffic(self, study_id: str, round_: int, silo: str, *, up: int = 0, down: int = 0) -> None:
        with self.session.begin() as s:
            row = s.get(TrafficRow, (study_id, round_, silo))
            if row is None:
                row = TrafficRow(study_id=study_id, round=round_, silo=silo, bytes_up=0, bytes_down=0)
                check_row(row)
                s.add(row)
            row.bytes_up += up
            row.bytes_down += down


def now() -> float:
    return time.time()


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
