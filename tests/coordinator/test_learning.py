"""The coordinator's learning in the clear, through the real state machine (store, blobs, rounds):
server optimisers applied to the aggregate with their state across rounds and restarts
(#14 item 1), the best version released (#14 item 4), and what the protocol refuses at the
door (#16 item 1: a float64 update holding 1e300; #17: a rule without its parameter)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import AggregationSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput
from coordinator.federation import Federation
from coordinator.store import StudyRow, Store, UpdateRow, open_engine
from coordinator.summary import summary_dict

SILOS = ("h1", "h2")


def _spec(**aggregation: Any) -> StudySpec:
    training = {"rounds": 3, "min_silos": 2, "expected_silos": 2, **aggregation.pop("training", {})}
    return StudySpec(name="learning", modalities=("ehr",), model=ModelSpec(ehr_hidden=8, embed_dim=4),
                     training=TrainingSpec(**training),
                     privacy=PrivacySpec(dp=False, encryption="none"), aggregation=AggregationSpec(**aggregation))


class Run:
    """One study at an in-process Federation over a real SQLite store and blob store."""

    def __init__(self, root: Path, spec: StudySpec) -> None:
        self.root, self.events = root, []
        self.open()
        self.study = self.fed.submit_study(spec.to_json())
        sha = self.store.get(StudyRow, self.study).spec_sha256
        for silo in SILOS:
            self.fed.join(silo, ["ehr"], b"")
            assert self.fed.next_task(silo, 0).kind == pb.TASK_PROPOSAL
            self.fed.answer_proposal(silo, pb.ProposalAnswer(study_id=self.study, accept=True, spec_sha256=sha,
                                                             train_samples=10, test_samples=5))
        self.names, self.v0 = self.version(0)

    def open(self) -> None:
        self.store = Store(open_engine(f"sqlite:///{self.root / 'c.sqlite'}"))
        self.fed = Federation(self.store, BlobStore(self.root / "blobs"),
                              audit=lambda e, **f: self.events.append((e, f)))

    def restart(self) -> None:
        self.store.engine.dispose()
        self.open()

    def version(self, v: int) -> tuple[list[str], list[np.ndarray]]:
        names, arrays = decode_tensors(self.fed.blobs.get(self.fed.versions.sha(self.study, v)))
        return names, [np.array(a) for a in arrays]

    def push(self, silo: str, task: pb.Task, data: bytes, weight: float = 1.0) -> pb.PushReply:
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=self.study, kind=pb.BLOB_UPDATE), round=task.round,
                               nonce=task.nonce, weight=weight, encoding="tensors", metadata_json="{}",
                               size=len(data), sha256=hashlib.sha256(data).hexdigest())
        with self.fed.blobs.incoming() as incoming:
            incoming.write(data)
            return self.fed.accept_update(silo, header, incoming)

    def round(self, deltas: dict[str, list[np.ndarray]], auroc: dict[str, float] | None = None) -> None:
        for silo in SILOS:
            task = self.fed.next_task(silo, 0)
            assert task.kind == pb.TASK_TRAIN, task
            if auroc is not None:
                self.fed.report_metrics(silo, pb.MetricsReport(study_id=self.study, round=task.round, nonce=task.nonce,
                                                               model_version=task.model_version, samples=5,
                                                               metrics={"val_auroc": auroc[silo], "auroc": auroc[silo] - 0.05}))
            self.push(silo, task, encode_tensors(self.names, deltas[silo]))


def _delta(run: Run, value: float) -> list[np.ndarray]:
    return [np.full(a.shape, value, np.float32) for a in run.v0]


def test_fedavgm_applies_server_momentum_and_keeps_it_across_a_restart(tmp_path: Path) -> None:
    """v1 = v0 + lr d1; v2 = v1 + lr (beta d1 + d2), with the coordinator restarted between rounds."""
    lr, beta = 0.5, 0.9
    run = Run(tmp_path, _spec(server_optimizer="fedavgm", server_learning_rate=lr, server_momentum=beta))
    run.round({s: _delta(run, 0.02) for s in SILOS})
    _, v1 = run.version(1)
    for a, b in zip(v1, run.v0):
        np.testing.assert_allclose(a, b + np.float32(lr * 0.02), rtol=0, atol=1e-6)
    run.restart()  # the momentum must come back from the store, not from memory
    run.round({"h1": _delta(run, -0.01), "h2": _delta(run, -0.03)})
    _, v2 = run.version(2)
    for a, b in zip(v2, v1):
        np.testing.assert_allclose(a, b + np.float32(lr * (beta * 0.02 - 0.02)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["fedadam", "fedyogi"])
def test_adaptive_server_optimisers_change_the_trajectory(tmp_path: Path, optimizer: str) -> None:
    """Adam/Yogi normalise the step per coordinate (Reddi et al. 2021): the first step is about lr in
    every coordinate whatever the size of the aggregate, where FedAvg would move by the aggregate."""
    run = Run(tmp_path, _spec(server_optimizer=optimizer, server_learning_rate=0.01, server_momentum=0.9))
    run.round({s: _delta(run, 1e-3) for s in SILOS})
    _, v1 = run.version(1)
    # m = 0.1 d, v = tau^2 + 0.01 d^2 (0.99 tau^2 for Adam): step = lr m / (sqrt(v) + tau), not lr * d
    d, tau = 1e-3, 1e-3
    v = (0.99 * tau**2 if optimizer == "fedadam" else tau**2) + 0.01 * d * d
    expected = 0.01 * 0.1 * d / (np.sqrt(v) + tau)
    for a, b in zip(v1, run.v0):
        np.testing.assert_allclose(a - b, expected, rtol=1e-3)
    assert abs(expected - 0.01 * d) > 1e-5  # the trajectory is not FedAvg's


def test_centered_clipping_centres_on_the_previous_aggregate_after_a_restart(tmp_path: Path) -> None:
    run = Run(tmp_path, _spec(rule="centered_clipping", params={"tau": 1000.0}))
    run.round({"h1": _delta(run, 0.01), "h2": _delta(run, 0.03)})
    run.restart()
    spec = run.fed.spec(run.study)
    centre = run.fed.rounds.aggregation(run.study, spec).rule.centre
    assert centre is not None and all(np.allclose(c, 0.02) for c in centre)


def test_a_rule_without_its_parameter_is_refused_at_submission(tmp_path: Path) -> None:
    store = Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    fed = Federation(store, BlobStore(tmp_path / "blobs"))
    bad = _spec().model_dump(mode="json")
    bad["aggregation"] = {"rule": "centered_clipping"}
    with pytest.raises(InvalidInput, match=r"aggregation\.params\.tau"):
        fed.submit_study(json.dumps(bad))
    bad["aggregation"] = {"rule": "trimmed_mean", "params": {"beta": 0.7}}
    with pytest.raises(InvalidInput, match="aggregation: .*beta"):
        fed.submit_study(json.dumps(bad))
    assert store.all(StudyRow) == []


def test_a_float64_update_holding_1e300_is_refused_and_audited(tmp_path: Path) -> None:
    """#16 item 1: finite as float64, inf once averaged into the float32 model."""
    run = Run(tmp_path, _spec())
    task = run.fed.next_task("h1", 0)
    huge = [np.full(a.shape, 1e300, np.float64) for a in run.v0]
    with pytest.raises(InvalidInput, match="float64"):
        run.push("h1", task, encode_tensors(run.names, huge))
    assert run.store.all(UpdateRow, study_id=run.study) == []
    refused = [f for e, f in run.events if e == "update_refused"]
    assert refused and refused[0]["silo"] == "h1" and "float64" in refused[0]["reason"]


def test_the_best_version_is_released_and_the_summary_says_which(tmp_path: Path) -> None:
    run = Run(tmp_path, _spec())
    scores = {0: 0.5, 1: 0.6, 2: 0.9, 3: 0.7}  # pooled AUROC of each version, reported one round later
    for r in (1, 2, 3):
        run.round({s: _delta(run, 0.01 * r) for s in SILOS}, auroc={s: scores[r - 1] for s in SILOS})
    for silo in SILOS:  # the finalizing round evaluates version 3
        task = run.fed.next_task(silo, 0)
        assert task.kind == pb.TASK_FINALIZE and task.model_version == 3
        run.fed.report_metrics(silo, pb.MetricsReport(study_id=run.study, round=task.round, nonce=task.nonce,
                                                      model_version=3, samples=5, metrics={"val_auroc": scores[3], "auroc": scores[3] - 0.05}))
    row = run.store.get(StudyRow, run.study)
    assert row.state == "done" and row.final_model_sha == run.fed.versions.sha(run.study, 2)
    summary = summary_dict(run.fed, run.study)
    assert summary["release"]["round"] == 2 and summary["release"]["metric"] == "val_auroc"
    assert summary["final"]["auroc"] == pytest.approx(0.85)  # the released version's test AUROC
    assert [e for e, f in run.events if e == "model_released"] and run.fed.final_model(run.study)[0] == row.final_model_sha


def test_early_stopping_on_a_plateau(tmp_path: Path) -> None:
    run = Run(tmp_path, _spec(training={"rounds": 10, "early_stopping_patience": 2}))
    scores = [0.5, 0.8, 0.7, 0.6, 0.6]  # version 1 is best; versions 2 and 3 do not improve on it
    for r in range(1, 5):
        run.round({s: _delta(run, 0.01) for s in SILOS}, auroc={s: scores[r - 1] for s in SILOS})
        if run.store.get(StudyRow, run.study).state == "finalizing":
            break
    row = run.store.get(StudyRow, run.study)
    assert row.state == "finalizing" and row.current_round == 5  # after round 4: versions 2 and 3 did not improve


def test_a_weight_above_the_declared_training_samples_is_refused_and_audited(tmp_path: Path) -> None:
    """A silo that declared 10 training samples cannot weigh in with 1e9 and make FedAvg its own (#16 item 6)."""
    run = Run(tmp_path, _spec())
    task = run.fed.next_task("h1", 0)
    with pytest.raises(InvalidInput, match="declared"):
        run.push("h1", task, encode_tensors(run.names, _delta(run, 0.01)), weight=1e9)
    assert any(e == "update_refused" and "declared" in f["reason"] for e, f in run.events)
    assert run.push("h1", task, encode_tensors(run.names, _delta(run, 0.01)), weight=10.0).accepted


def test_a_model_above_the_parameter_cap_is_refused_at_submission(tmp_path: Path) -> None:
    """ehr_hidden = 8192 would make the coordinator and every silo build tens of millions of parameters:
    counted on torch's meta device and refused before anything is allocated (#16 item 6)."""
    store = Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    fed = Federation(store, BlobStore(tmp_path / "blobs"), audit=lambda e, **f: None)
    big = StudySpec(name="big", modalities=("ehr",), model=ModelSpec(ehr_hidden=8192, embed_dim=4),
                    privacy=PrivacySpec(dp=False, encryption="none"))
    with pytest.raises(InvalidInput, match=r"parameters, above model\.max_parameters = 20,000,000"):
        fed.submit_study(big.to_json())
    store.engine.dispose()
