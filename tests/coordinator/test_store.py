"""The coordinator's store on SQLite and on a real PostgreSQL server: same models, Alembic migrations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput, Refused
from coordinator.federation import Federation
from coordinator.migrations import FIRST_REVISION, alembic_config
from coordinator.store import (
    Base,
    EnrollmentRow,
    MetricsRow,
    ModelVersionRow,
    RoundRow,
    SiloRow,
    SkipRow,
    Store,
    StudyRow,
    TrafficRow,
    UpdateRow,
    open_engine,
)

BIG = 5 * 2**31  # byte counts of large CKKS updates pass 32 bits


def _head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _version(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()


def _snapshot(store: Store) -> dict[str, list[tuple]]:
    out = {}
    with store.engine.connect() as conn:
        for name, table in sorted(Base.metadata.tables.items()):
            out[name] = sorted(tuple(r) for r in conn.execute(sa.select(table)))
    return out


def test_migrations_create_exactly_the_models(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        assert _version(engine) == _head()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"coordinator/store.py and coordinator/migrations disagree; add a revision: {diff}"
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_downgrade_reverses_it(database_url: str) -> None:
    engine = open_engine(database_url)
    Store(engine).add(SiloRow(name="a", modalities_json="[]", wrap_public_key=b"", last_seen=1.0))
    engine.dispose()
    engine = open_engine(database_url)  # a restart: upgrade head again keeps the data
    assert Store(engine).get(SiloRow, "a") is not None
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    engine = open_engine(database_url)
    assert set(Base.metadata.tables) <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_every_row_type_round_trips(database_url: str) -> None:
    store = Store(open_engine(database_url))
    t = time.time()
    key = bytes(range(32))
    rows = [
        StudyRow(id="s-1", name="heart failure ü", spec_json="{}", spec_sha256="a" * 64, state="running",
                 created_at=t, current_round=2, key_holder="h1", public_context_sha=None, final_model_sha=None,
                 error=None, server_state_json='{"m": 1}'),
        SiloRow(name="h1", modalities_json='["ehr"]', wrap_public_key=key, last_seen=t),
        EnrollmentRow(study_id="s-1", silo="h1", accepted=True, reason="ok", train_samples=BIG, test_samples=3,
                      wrapped_key_sha=None),
        RoundRow(study_id="s-1", number=2, state="open", nonce="n" * 32, seed=2**31 - 1, participants_json='["h1"]',
                 opened_at=t, deadline=t + 30, closed_at=None, outcome_json="{}"),
        UpdateRow(study_id="s-1", round=2, silo="h1", blob_sha="b" * 64, size=BIG, weight=12.5, encoding="tensors",
                  metadata_json="{}", received_at=t),
        SkipRow(study_id="s-1", round=1, silo="h1", reason="budget"),
        ModelVersionRow(study_id="s-1", version=1, blob_sha="c" * 64, encoding="ckks-exact", base_version=0),
        MetricsRow(study_id="s-1", model_version=1, silo="h1", metrics_json='{"auroc":0.7}', samples=BIG,
                   model_sha="d" * 64),
    ]
    store.add(*rows)
    got = store.get(StudyRow, "s-1")
    assert (got.name, got.current_round, got.error, got.created_at) == ("heart failure ü", 2, None, t)
    assert store.get(SiloRow, "h1").wrap_public_key == key
    assert store.get(EnrollmentRow, "s-1", "h1").train_samples == BIG
    assert store.get(EnrollmentRow, "s-1", "h1").accepted is True
    assert store.get(RoundRow, "s-1", 2).deadline == t + 30
    assert store.get(UpdateRow, "s-1", 2, "h1").size == BIG
    assert store.get(ModelVersionRow, "s-1", 1).base_version == 0
    assert store.get(MetricsRow, "s-1", 1, "h1").samples == BIG
    assert store.get(SkipRow, "s-1", 1, "h1").reason == "budget"
    assert store.get(StudyRow, "nope") is None
    assert [e.silo for e in store.all(EnrollmentRow, study_id="s-1", accepted=True)] == ["h1"]
    assert store.all(EnrollmentRow, study_id="s-1", accepted=False) == []
    store.engine.dispose()


def test_merge_replaces_and_traffic_accumulates(database_url: str) -> None:
    store = Store(open_engine(database_url))
    store.add(SiloRow(name="h1", modalities_json="[]", wrap_public_key=b"", last_seen=1.0))
    row = store.get(SiloRow, "h1")
    row.last_seen = 2.0
    store.add(row)
    assert store.get(SiloRow, "h1").last_seen == 2.0
    assert len(store.all(SiloRow)) == 1
    for _ in range(3):
        store.add_traffic("s-1", 1, "h1", up=BIG, down=7)
    store.add_traffic("s-1", 2, "h1", down=1)
    assert (store.get(TrafficRow, "s-1", 1, "h1").bytes_up, store.get(TrafficRow, "s-1", 1, "h1").bytes_down) == (3 * BIG, 21)
    assert store.get(TrafficRow, "s-1", 2, "h1").bytes_up == 0
    store.engine.dispose()


@pytest.mark.parametrize("bad", [{"reason": "a\x00b"}, {"silo": "x" * 201}, {"wrapped_key_sha": "f" * 65}])
def test_text_either_backend_would_mangle_is_refused_alike(database_url: str, bad: dict) -> None:
    """PostgreSQL refuses NUL and over-long VARCHARs where SQLite stores them: both refuse them here."""
    store = Store(open_engine(database_url))
    row = {"study_id": "s-1", "silo": "h1", "accepted": True, "reason": "", **bad}
    with pytest.raises(InvalidInput, match="enrollments\\."):
        store.add(EnrollmentRow(**row))
    assert store.all(EnrollmentRow) == []
    assert store.get(StudyRow, "s\x00") is None and store.all(EnrollmentRow, silo="h\x00") == []
    store.engine.dispose()


def _spec() -> StudySpec:
    return StudySpec(name="store test", training=TrainingSpec(rounds=2, min_silos=2, expected_silos=2),
                     privacy=PrivacySpec(dp=False, encryption="none"))


def test_federation_state_survives_a_restart(database_url: str, tmp_path: Path) -> None:
    """The real state machine over each backend: enrol, open round 1, restart, same round and nonce."""
    blobs = BlobStore(tmp_path / "blobs")
    store = Store(open_engine(database_url))
    fed = Federation(store, blobs)
    study = fed.submit_study(_spec().to_json())
    sha = store.get(StudyRow, study).spec_sha256
    for silo in ("h1", "h2"):
        fed.join(silo, ["ehr"], b"")
        assert fed.next_task(silo, 0).kind == pb.TASK_PROPOSAL
        fed.answer_proposal(silo, pb.ProposalAnswer(study_id=study, accept=True, spec_sha256=sha, train_samples=10))
    task = fed.next_task("h1", 0)
    assert (task.kind, task.round) == (pb.TASK_TRAIN, 1)
    before = _snapshot(store)
    with pytest.raises(Refused):
        fed.report_metrics("h1", pb.MetricsReport(study_id=study, round=1, nonce="0" * 32, skipped=True))
    assert _snapshot(store) == before, "a refused call changed the store"
    store.engine.dispose()

    store = Store(open_engine(database_url))
    fed = Federation(store, blobs)
    again = fed.next_task("h2", 0)
    assert (again.kind, again.round, again.nonce) == (pb.TASK_TRAIN, 1, task.nonce)
    assert fed.accepted_silos(study) == ["h1", "h2"]
    fed.report_metrics("h1", pb.MetricsReport(study_id=study, round=1, nonce=task.nonce, skipped=True, skip_reason="x"))
    assert store.get(SkipRow, study, 1, "h1").reason == "x"
    store.engine.dispose()


def test_a_database_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    """A SQLite store written by `create_all` (no alembic_version) is stamped, not re-created."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    legacy = sa.create_engine(url)
    # What `create_all` wrote before migrations existed: revision 0001's tables, no alembic_version.
    with legacy.begin() as conn:
        command.upgrade(alembic_config(conn), FIRST_REVISION)
        conn.execute(sa.text("DROP TABLE alembic_version"))
    with legacy.begin() as conn:
        conn.execute(sa.text("INSERT INTO silos (name, modalities_json, wrap_public_key, last_seen) "
                             "VALUES ('kept', '[]', x'', 1.0)"))
    legacy.dispose()
    engine = open_engine(url)
    assert _version(engine) == _head()
    assert Store(engine).get(SiloRow, "kept") is not None
    engine.dispose()


def test_counts_and_distinct_values_are_read_by_the_database(database_url: str) -> None:
    """What a round's checks read per message (coordinator/studies.py, finalizing.py, intake.py): a count, one column's
    distinct values; a key no row can have (NUL) counts none on either backend."""
    store = Store(open_engine(database_url))
    store.add(*[MetricsRow(study_id="s-1", model_version=1, silo=f"h{i}", metrics_json="{}", samples=1, model_sha="d" * 64)
                for i in range(3)],
              MetricsRow(study_id="s-1", model_version=2, silo="h0", metrics_json="{}", samples=1, model_sha=""))
    assert store.count(MetricsRow, study_id="s-1", model_version=1) == 3
    assert store.count(MetricsRow, study_id="s-1") == 4 and store.count(MetricsRow, study_id="s-2") == 0
    assert store.count(MetricsRow, silo="h\x00") == 0
    assert store.column(MetricsRow.model_sha, study_id="s-1") == {"d" * 64, ""}
    store.engine.dispose()
