"""Late and departing silos at the coordinator (#15 item 2), in process with a clock the test moves.

A silo that accepts after the study started is asked from the next round and counted from
then on; a silo that neither answers a round nor asks for work by its deadline is not asked
to the next one, and is asked again once it comes back. A real Federation over SQLite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from compliance.audit import Event
from coordinator.api import federation_pb2 as pb
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.blobs import BlobStore
from coordinator.federation import Federation
from coordinator.store import RoundRow, Store, StudyRow, open_engine
from coordinator.summary import summary_dict


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Run:
    def __init__(self, root: Path, *, late_join: bool = True) -> None:
        self.clock = Clock()
        self.events: list[tuple[str, dict]] = []
        self.store = Store(open_engine(f"sqlite:///{root / 'c.sqlite'}"))
        self.fed = Federation(self.store, BlobStore(root / "blobs"), clock=self.clock,
                              audit=lambda e, **f: self.events.append((e, f)))
        spec = StudySpec(name="late", training=TrainingSpec(rounds=4, min_silos=2, expected_silos=2, round_timeout_s=100,
                                                            late_join=late_join),
                         privacy=PrivacySpec(dp=False, encryption="none"))
        self.study = self.fed.submit_study(spec.to_json())
        self.sha = self.store.get(StudyRow, self.study).spec_sha256
        for silo in ("a", "b", "c"):
            self.fed.join(silo, ["ehr"], b"")
        for silo in ("a", "b"):
            assert self.fed.next_task(silo, 0).kind == pb.TASK_PROPOSAL
            self.accept(silo)
        names, arrays = decode_tensors(self.fed.blobs.get(self.fed.versions.sha(self.study, 0)))
        self.update = encode_tensors(names, [np.zeros_like(np.array(a)) for a in arrays])

    def accept(self, silo: str) -> None:
        self.fed.answer_proposal(silo, pb.ProposalAnswer(study_id=self.study, accept=True, spec_sha256=self.sha))

    def participants(self, number: int) -> list[str]:
        return json.loads(self.store.get(RoundRow, self.study, number).participants_json)

    def train(self, silo: str) -> None:
        task = self.fed.next_task(silo, 0)
        assert task.kind == pb.TASK_TRAIN, (silo, task)
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=self.study, kind=pb.BLOB_UPDATE), round=task.round,
                               nonce=task.nonce, weight=1.0, encoding="tensors", metadata_json="{}",
                               size=len(self.update), sha256=hashlib.sha256(self.update).hexdigest())
        with self.fed.blobs.incoming() as incoming:
            incoming.write(self.update)
            self.fed.accept_update(silo, header, incoming)

    def current_round(self) -> int:
        return self.store.get(StudyRow, self.study).current_round


def test_a_late_acceptance_joins_the_next_round_and_counts_from_then_on(tmp_path: Path) -> None:
    run = Run(tmp_path)
    assert run.current_round() == 1 and run.participants(1) == ["a", "b"]
    # c asks for work while round 1 runs: it is offered the study and accepts late.
    assert run.fed.next_task("c", 0).kind == pb.TASK_PROPOSAL
    run.accept("c")
    assert ("study_approved", {"study": run.study, "silo": "c", "reason": "", "late": True, "state": "running"}) in run.events
    assert run.fed.next_task("c", 0).kind == pb.TASK_WAIT  # not a participant of the round under way
    run.train("a")
    run.train("b")
    assert run.current_round() == 2 and run.participants(2) == ["a", "b", "c"]
    assert (Event.SILO_JOINED, {"study": run.study, "silo": "c", "round": 2}) in run.events
    for silo in ("a", "b", "c"):
        run.train(silo)
    summary = summary_dict(run.fed, run.study)
    assert summary["joined_round"] == {"a": 1, "b": 1, "c": 2}
    assert summary["rounds"][2]["aggregation"]["accepted"] == ["a", "b", "c"]


def test_a_silo_gone_past_a_deadline_is_not_asked_until_it_returns(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.accept("c")
    run.clock.now += 1  # c was last seen before round 2 opens
    for silo in ("a", "b"):
        run.train(silo)
    assert run.participants(2) == ["a", "b", "c"]
    # Round 2: c has gone away (it never asks for work); the round closes at its deadline with a and b.
    run.train("a")
    run.train("b")
    run.clock.now += 101
    run.fed.tick()
    assert run.current_round() == 3 and run.participants(3) == ["a", "b"]  # dropped from the quorum
    run.train("a")
    run.train("b")  # round 3 closes as soon as a and b answered: nobody waits for c
    assert run.current_round() == 4 and run.participants(4) == ["a", "b"]
    # c comes back: asked again from the next round.
    assert run.fed.next_task("c", 0).kind == pb.TASK_WAIT
    run.train("a")
    run.train("b")
    assert run.participants(5) == ["a", "b", "c"]  # the finalizing round evaluates with c again


def test_without_late_join_a_late_acceptance_is_refused_with_the_reason(tmp_path: Path) -> None:
    run = Run(tmp_path, late_join=False)
    assert run.fed.next_task("c", 0).kind == pb.TASK_WAIT  # not offered a study that takes no late silos
    try:
        run.accept("c")
    except Exception as e:  # noqa: BLE001 - the coordinator's Refused
        assert "no longer enrolling (state running)" in str(e) and "late_join = false" in str(e)
    else:
        raise AssertionError("a late acceptance was taken with late_join = false")
