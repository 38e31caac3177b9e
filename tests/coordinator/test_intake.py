"""Metrics reports (coordinator/intake.py): the same model for every silo, no NaN, at the coordinator and
at a regional aggregator, which check them with the same functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.api import federation_pb2 as pb
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput, Refused
from coordinator.federation import Federation
from coordinator.regional_node.work import MetricsBook
from coordinator.store import MetricsRow, Store, open_engine
from tests.coordinator.enrolled import enrolled, small_spec

SILOS = ("h1", "h2", "h3")


def _report(task: pb.Task, sha: str, auroc: float = 0.7) -> pb.MetricsReport:
    return pb.MetricsReport(study_id=task.study_id, round=task.round, nonce=task.nonce, model_version=task.round - 1,
                            samples=5, metrics={"auroc": auroc}, model_sha256=sha)


def test_a_silo_that_evaluated_another_model_or_reports_nan_is_refused_and_audited(tmp_path: Path) -> None:
    store = Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    events: list[tuple[str, dict]] = []
    fed = Federation(store, BlobStore(tmp_path / "blobs"), audit=lambda e, **f: events.append((e, f)))
    study = enrolled(fed, small_spec("same model", encryption="none", silos=len(SILOS)), SILOS)
    tasks = {s: fed.next_task(s, 0) for s in SILOS}
    assert {t.kind for t in tasks.values()} == {pb.TASK_TRAIN}
    fed.report_metrics("h1", _report(tasks["h1"], "a" * 64))
    with pytest.raises(Refused, match="h2 obtained a different model for version 0 than h1"):
        fed.report_metrics("h2", _report(tasks["h2"], "b" * 64))
    assert any(e == "update_refused" and "different model" in f["reason"] for e, f in events)
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        fed.report_metrics("h3", _report(tasks["h3"], "a" * 64, auroc=float("nan")))
    assert [m.silo for m in store.all(MetricsRow, study_id=study)] == ["h1"]


def test_a_region_refuses_a_member_that_evaluated_another_model_with_the_same_reason() -> None:
    book = MetricsBook(model_version=0)
    task = pb.Task(study_id="s", round=1, nonce="n")
    book.add("m1", _report(task, "a" * 64))
    with pytest.raises(Refused, match="m2 obtained a different model for version 0 than m1"):
        book.add("m2", _report(task, "b" * 64))
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        book.add("m3", _report(task, "a" * 64, auroc=float("inf")))
