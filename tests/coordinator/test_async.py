"""Buffered asynchronous aggregation (FedBuff, #15 item 3; coordinator/buffer.py), in process.

A real Federation over SQLite and real blobs; under CKKS real TenSEAL keys, ciphertexts and the
silo's own decryption. Three silos, a buffer of two: c trains slowly, so its update of round 1
lands in the buffer that builds version 2, one version stale; the version must be
v1 + (w_c s(1) Δ_c + w_a Δ_a) / (w_c + w_a) with s(τ) = (1 + τ)^-0.5, computed here from the
stored updates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.api import federation_pb2 as pb
from coordinator.api.codecs import ErrorFeedback
from coordinator.api.protocol import KeyBundle
from coordinator.api.study import (
    AggregationSpec,
    CompressionSpec,
    ModelSpec,
    PrivacySpec,
    StudySpec,
    TrainingSpec,
)
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput, Refused
from coordinator.federation import Federation
from coordinator.outcome import RoundOutcome
from coordinator.store import RoundRow, Store, StudyRow, UpdateRow, open_engine
from privacy.he import SiloKeyPair, StudyKeys, encrypt_update, wrap_secret
from silo_node.update import resolve_version

WEIGHTS = {"a": 30.0, "b": 10.0, "c": 20.0}


class Run:
    def __init__(self, root: Path, encryption: str = "none", rule: str = "fedavg", params: dict | None = None,
                 compression: CompressionSpec | None = None) -> None:
        self.root, self.encryption = root, encryption
        self.events: list[tuple[str, dict]] = []
        self.store = Store(open_engine(f"sqlite:///{root / 'c.sqlite'}"))
        self.fed = self._federation()
        spec = StudySpec(name="async", modalities=("ehr",), model=ModelSpec(ehr_hidden=8, embed_dim=4),
                         training=TrainingSpec(rounds=4, min_silos=2, expected_silos=3, mode="async", buffer_size=2,
                                               max_staleness=1),
                         privacy=PrivacySpec(dp=False, encryption=encryption),
                         aggregation=AggregationSpec(rule=rule, params=params or {}),
                         compression=compression or CompressionSpec())
        self.spec = spec
        self.study = self.fed.submit_study(spec.to_json())
        sha = self.store.get(StudyRow, self.study).spec_sha256
        wrap = {s: SiloKeyPair.generate() for s in WEIGHTS}
        for s in WEIGHTS:
            self.fed.join(s, ["ehr"], wrap[s].public_bytes())
            assert self.fed.next_task(s, 0).kind == pb.TASK_PROPOSAL
            self.fed.answer_proposal(s, pb.ProposalAnswer(study_id=self.study, accept=True, spec_sha256=sha,
                                                          train_samples=100))
        self.secret = None
        if encryption != "none":
            task = self.fed.next_task("a", 0)
            assert task.kind == pb.TASK_KEYGEN
            keys = StudyKeys.generate("exact")
            self.secret = keys.secret_context()
            bundle = KeyBundle(public_context=keys.public_context(), wrapped={
                s: wrap_secret(self.secret, k, context=self.study.encode()) for s, k in task.participant_keys.items()})
            self.push("a", bundle.to_json(), kind=pb.BLOB_KEY_BUNDLE)
        self.names, v0 = decode_tensors(self.fed.blobs.get(self.fed.versions.sha(self.study, 0)))
        self.v0 = [np.array(a) for a in v0]
        self.rng = np.random.default_rng(0)
        self.sent: dict[str, bytes] = {}  # each silo's last encoded update
        self.trained: dict[str, list[list[np.ndarray]]] = {}  # each silo's deltas, in order

    def _federation(self) -> Federation:
        return Federation(self.store, BlobStore(self.root / "blobs"), audit=lambda e, **f: self.events.append((e, f)))

    def restart(self) -> None:
        """A new coordinator process over the same database and blobs."""
        self.fed = self._federation()

    def push(self, silo: str, data: bytes, *, kind: int = pb.BLOB_UPDATE, task: pb.Task | None = None) -> None:
        encoding = "" if kind == pb.BLOB_KEY_BUNDLE else self.spec.protocol.update_encoding
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=self.study, kind=kind), size=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), encoding=encoding, metadata_json="{}",
                               round=task.round if task else 0, nonce=task.nonce if task else "", weight=WEIGHTS[silo])
        accept = self.fed.accept_key_bundle if kind == pb.BLOB_KEY_BUNDLE else self.fed.accept_update
        with self.fed.blobs.incoming() as incoming:
            incoming.write(data)
            accept(silo, header, incoming)

    def task(self, silo: str, round_: int) -> pb.Task:
        task = self.fed.next_task(silo, 0)
        assert (task.kind, task.round, task.model_version) == (pb.TASK_TRAIN, round_, round_ - 1), (silo, task)
        return task

    def upload(self, silo: str, task: pb.Task, feedback: ErrorFeedback | None = None) -> list[np.ndarray]:
        """A random delta sent for `task`; with `feedback`, compressed by the study's codec with error
        feedback, and what the coordinator receives (the decoded update) is returned."""
        delta = [self.rng.normal(0, 0.01, a.shape).astype(np.float32) for a in self.v0]
        self.trained.setdefault(silo, []).append(delta)
        if feedback is not None:
            data = feedback.encode(delta)
            self.sent[silo] = data
            self.push(silo, data, task=task)
            return [np.asarray(a) for a in feedback.codec.decode(data, max_values=sum(a.size for a in delta))]
        if self.secret is None:
            data = encode_tensors(self.names, delta)
        else:
            data = encrypt_update(self.secret, np.concatenate([d.ravel() for d in delta]), mode="exact", clip=10.0)
        self.push(silo, data, task=task)
        return delta

    def version(self, number: int, base: list[np.ndarray]) -> list[np.ndarray]:
        header, data = self.fed.versions.blob(self.study, self.fed.spec(self.study),
                                              self.fed.versions.get(self.study, number))
        _, weights = resolve_version(data, header.encoding, header.metadata_json, base=(self.names, base),
                                     secret_context=self.secret)
        return weights


def _average(deltas: dict[str, list[np.ndarray]], staleness: dict[str, int]) -> list[np.ndarray]:
    total = sum(WEIGHTS[s] for s in deltas)
    return [sum(WEIGHTS[s] * (1 + staleness.get(s, 0)) ** -0.5 * d[i].astype(np.float64) for s, d in deltas.items()) / total
            for i in range(len(next(iter(deltas.values()))))]


def _two_versions(run: Run, *, restart: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Round 1: a and b fill the buffer (version 1) while c trains on; round 2: c's update of
    round 1 (one version stale) and a's fill it (version 2). Returns versions 1 and 2 as the
    silos obtain them, and what they should be."""
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    sent1 = {s: run.upload(s, tasks[s]) for s in ("a", "b")}
    assert run.store.get(StudyRow, run.study).current_round == 2  # K = 2 updates: version 1, no wait for c
    v1 = run.version(1, run.v0)
    expected1 = [v + d for v, d in zip(run.v0, _average(sent1, {}))]
    task_a = run.task("a", 2)
    sent2 = {"c": run.upload("c", tasks["c"])}
    assert RoundOutcome.of(run.store.get(RoundRow, run.study, 2).outcome_json).staleness == {"c": 1}
    if restart:
        run.restart()
    sent2["a"] = run.upload("a", task_a)
    outcome = RoundOutcome.of(run.store.get(RoundRow, run.study, 2).outcome_json)
    assert outcome.accepted == ["a", "c"] and outcome.staleness == {"a": 0, "c": 1}
    assert sorted(u.silo for u in run.store.all(UpdateRow, study_id=run.study, round=2)) == ["a", "c"]
    v2 = run.version(2, v1)
    expected2 = [v + d for v, d in zip(v1, _average(sent2, {"c": 1}))]
    for got, want in zip([*v1, *v2], [*expected1, *expected2]):
        np.testing.assert_allclose(got, want, atol=1e-5 if run.secret is None else 2e-4)
    return v1, v2


@pytest.mark.parametrize("encryption", ["none", "ckks-exact"])
def test_a_version_is_the_staleness_weighted_average_of_its_buffer(tmp_path: Path, encryption: str) -> None:
    run = Run(tmp_path, encryption)
    _two_versions(run)
    assert ("aggregation", {"study": run.study, "round": 2, "rule": "fedavg", "accepted": ["a", "c"], "refused": {},
                            "encrypted": encryption != "none", "staleness": {"a": 0, "c": 1}}) in run.events


def test_a_restarted_coordinator_resumes_the_buffer(tmp_path: Path) -> None:
    run = Run(tmp_path)
    _two_versions(run, restart=True)  # c's update was buffered before the restart, a's after it


def test_an_update_staler_than_max_staleness_is_refused_with_the_reason(tmp_path: Path) -> None:
    # Two versions stale, with max_staleness = 1: refused with the reason, audited.
    run = Run(tmp_path)
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    run.upload("a", tasks["a"])
    run.upload("b", tasks["b"])  # version 1
    run.upload("a", run.task("a", 2))
    run.upload("b", run.task("b", 2))  # version 2: c's task of round 1 is now two versions stale
    with pytest.raises(Refused, match="2 versions stale .*max_staleness is 1"):
        run.upload("c", tasks["c"])
    assert next(f for e, f in run.events if e == "update_refused" and f["silo"] == "c")["round"] == 3
    assert run.fed.next_task("c", 0).round == 3  # and c gets its next task, on the newest version


def test_a_robust_rule_aggregates_the_staleness_scaled_updates(tmp_path: Path) -> None:
    run = Run(tmp_path, rule="median")  # coordinate-wise median: of two updates, their mean, unweighted
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    run.upload("a", tasks["a"])
    run.upload("b", tasks["b"])
    v1 = run.version(1, run.v0)
    task_a = run.task("a", 2)
    sent = {"c": run.upload("c", tasks["c"]), "a": run.upload("a", task_a)}
    for got, base, c, a in zip(run.version(2, v1), v1, sent["c"], sent["a"]):
        np.testing.assert_allclose(got, base + (2 ** -0.5 * c.astype(np.float64) + a) / 2, atol=1e-6)


def test_the_buffer_waits_for_a_silo_still_training_though_it_is_no_participant(tmp_path: Path) -> None:
    """c's long poll, made before round 1 opened, brought its task: at version 1 it counts as not
    seen since, so it is no participant of the next buffer. a's budget is spent and it skips that
    buffer; b's update alone must not end the study (quorum 2): c's stale update fills the buffer."""
    run = Run(tmp_path)
    first = run.store.get(RoundRow, run.study, 1)
    task_c = pb.Task(kind=pb.TASK_TRAIN, study_id=run.study, round=1, nonce=first.nonce, model_version=0)
    tasks = {s: run.task(s, 1) for s in ("a", "b")}
    run.upload("a", tasks["a"])
    run.upload("b", tasks["b"])
    assert json.loads(run.store.get(RoundRow, run.study, 2).participants_json) == ["a", "b"]
    task_a = run.task("a", 2)
    run.fed.report_metrics("a", pb.MetricsReport(study_id=run.study, round=2, nonce=task_a.nonce, model_version=1,
                                                 skipped=True, skip_reason="privacy budget: above the node's cap"))
    sent = {"b": run.upload("b", run.task("b", 2))}
    assert (run.store.get(StudyRow, run.study).state, run.store.get(StudyRow, run.study).current_round) == ("running", 2)
    sent["c"] = run.upload("c", task_c)
    assert RoundOutcome.of(run.store.get(RoundRow, run.study, 2).outcome_json).staleness == {"b": 0, "c": 1}
    v1 = run.version(1, run.v0)
    for got, want in zip(run.version(2, v1), [v + d for v, d in zip(v1, _average(sent, {"c": 1}))]):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_when_every_silo_has_answered_short_of_a_quorum_the_study_ends_early(tmp_path: Path) -> None:
    """a and b have spent their budgets and skip the buffer; c's stale update is the only one that
    can come: the buffer closes short of training.min_silos and the study ends with version 1."""
    run = Run(tmp_path)
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    run.upload("a", tasks["a"])
    run.upload("b", tasks["b"])
    for s in ("a", "b"):
        task = run.task(s, 2)
        run.fed.report_metrics(s, pb.MetricsReport(study_id=run.study, round=2, nonce=task.nonce, model_version=1,
                                                   skipped=True, skip_reason="privacy budget: above the node's cap"))
    assert run.store.get(StudyRow, run.study).state == "running"  # c may still fill the buffer
    run.upload("c", tasks["c"])
    row = run.store.get(StudyRow, run.study)
    assert (row.state, row.current_round) == ("finalizing", 2)  # evaluates and releases version 1
    assert "1 updates, quorum is 2" in RoundOutcome.of(run.store.get(RoundRow, run.study, 2).outcome_json).early_stop


def _clip(x: np.ndarray, radius: float) -> np.ndarray:
    norm = float(np.linalg.norm(x))
    return x * min(1.0, radius / norm) if norm > 0 else x


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _versions_1_and_2(run: Run) -> tuple[list[np.ndarray], list[np.ndarray], dict, dict]:
    """Version 1 from a and b; version 2 from c's update of round 1 (one version stale) and a's."""
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    sent1 = {s: run.upload(s, tasks[s]) for s in ("a", "b")}
    v1 = run.version(1, run.v0)
    task_a = run.task("a", 2)
    sent2 = {"c": run.upload("c", tasks["c"]), "a": run.upload("a", task_a)}
    return v1, run.version(2, v1), sent1, sent2


@pytest.mark.parametrize("rule", ["norm_bounding", "centered_clipping"])
def test_norm_screening_and_centred_clipping_work_on_a_buffer(tmp_path: Path, rule: str) -> None:
    """Each rule sees the staleness-scaled updates s(τ)·Δ, computed here by hand: norm bounding
    clips each to `bound` and takes the sample-weighted mean; centred clipping (one iteration)
    starts from the previous version's aggregate and averages the clipped distances to it."""
    radius = 0.05  # below the norm of these updates: the rule changes the result
    run = Run(tmp_path, rule=rule, params={"bound": radius} if rule == "norm_bounding" else {"tau": radius})
    v1, v2, sent1, sent2 = _versions_1_and_2(run)
    scaled = {"c": 2 ** -0.5 * _flat(sent2["c"]), "a": _flat(sent2["a"])}
    assert all(np.linalg.norm(x) > radius for x in scaled.values())
    if rule == "norm_bounding":
        step = sum(WEIGHTS[s] * _clip(x, radius) for s, x in scaled.items()) / sum(WEIGHTS[s] for s in scaled)
    else:
        centre = (_flat(sent1["a"]) + _flat(sent1["b"])) / 2  # round 1: from the median of two, symmetric
        step = centre + sum(_clip(x - centre, radius) for x in scaled.values()) / len(scaled)
    np.testing.assert_allclose(_flat(v2) - _flat(v1), step, atol=1e-6)


def test_a_buffer_too_small_for_the_rule_is_refused_at_submission_naming_the_field(tmp_path: Path) -> None:
    fed = Federation(Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")), BlobStore(tmp_path / "blobs"))
    spec = StudySpec(name="krum-async", modalities=("ehr",), model=ModelSpec(ehr_hidden=8, embed_dim=4),
                     training=TrainingSpec(min_silos=2, mode="async", buffer_size=4),
                     privacy=PrivacySpec(dp=False, encryption="none"),
                     aggregation=AggregationSpec(rule="krum", params={"f": 1}))
    with pytest.raises(InvalidInput, match=r"^training\.buffer_size: .* built from 4 updates, .*krum.* at least 5"):
        fed.submit_study(spec.to_json())
    five = spec.model_copy(update={"name": "krum-async-5",
                                   "training": spec.training.model_copy(update={"buffer_size": 5})})
    assert fed.submit_study(five.to_json())  # n > 2f + 2: Krum's guarantee holds for every version


def test_compression_with_error_feedback_in_an_asynchronous_study(tmp_path: Path) -> None:
    """top-k with error feedback: each version is the staleness-weighted average of the decoded
    updates; an update refused as too stale goes back into its silo's residual (give_back), so
    error feedback's invariant holds: what was received + the residual = what was trained."""
    run = Run(tmp_path, compression=CompressionSpec(codec="topk", fraction=0.2))
    codec = run.spec.protocol.uplink_codec()
    feedback = {s: ErrorFeedback(codec) for s in WEIGHTS}
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    got1 = {s: run.upload(s, tasks[s], feedback[s]) for s in ("a", "b")}
    v1 = run.version(1, run.v0)
    np.testing.assert_allclose(_flat(v1) - _flat(run.v0), sum(WEIGHTS[s] * _flat(got1[s]) for s in got1) / 40,
                               atol=1e-6)
    task_a, task_b = run.task("a", 2), run.task("b", 2)  # b trains on version 1 for a long time
    got2 = {"c": run.upload("c", tasks["c"], feedback["c"]), "a": run.upload("a", task_a, feedback["a"])}
    v2 = run.version(2, v1)
    step = (WEIGHTS["c"] * 2 ** -0.5 * _flat(got2["c"]) + WEIGHTS["a"] * _flat(got2["a"])) / 50
    np.testing.assert_allclose(_flat(v2) - _flat(v1), step, atol=1e-6)
    # b's task of round 2 is two versions stale once a and c have built version 3 (max_staleness 1).
    run.upload("a", run.task("a", 3), feedback["a"])
    run.upload("c", run.task("c", 3), feedback["c"])
    with pytest.raises(Refused, match="2 versions stale"):
        run.upload("b", task_b, feedback["b"])
    feedback["b"].give_back(run.sent["b"])  # what the node does with a refused update
    np.testing.assert_allclose(_flat(got1["b"]) + feedback["b"].residual,
                               _flat(run.trained["b"][0]) + _flat(run.trained["b"][1]), atol=1e-6)


def test_a_silo_whose_budget_is_spent_is_offered_no_further_tasks(tmp_path: Path) -> None:
    """a skips buffer 2 with budget_spent (its ε cap allows no further local run): it is asked to
    no later buffer, also after a restart, and the buffers do not wait for it; b and c build the
    versions on and the study finishes."""
    run = Run(tmp_path)
    tasks = {s: run.task(s, 1) for s in WEIGHTS}
    run.upload("a", tasks["a"])
    run.upload("b", tasks["b"])
    task_a = run.task("a", 2)
    run.fed.report_metrics("a", pb.MetricsReport(study_id=run.study, round=2, nonce=task_a.nonce, model_version=1,
                                                 skipped=True, skip_reason="privacy budget: above the cap",
                                                 budget_spent=True))
    assert ("round_skipped", {"study": run.study, "silo": "a", "round": 2,
                              "reason": "privacy budget: above the cap"}) in run.events
    run.upload("c", tasks["c"])  # c's stale update of round 1 and b's fill buffer 2
    run.upload("b", run.task("b", 2))
    run.restart()
    for r in (3, 4):
        assert json.loads(run.store.get(RoundRow, run.study, r).participants_json) == ["b", "c"]
        assert run.fed.next_task("a", 0).kind == pb.TASK_WAIT  # not enlisted either
        run.upload("b", run.task("b", r))
        run.upload("c", run.task("c", r))
    row = run.store.get(StudyRow, run.study)
    assert (row.state, row.current_round) == ("finalizing", 5)
