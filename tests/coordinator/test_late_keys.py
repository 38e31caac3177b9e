"""Late join under CKKS when the key holder is away (#15 item 2; coordinator/late_keys.py), in process.

A real Federation over SQLite with a clock the test moves, real TenSEAL keys and real X25519
wrapping. a generates the keys and wraps them for a and b; c accepts after the study started.
Any silo holding the secret (here b, while a is away) wraps it for c, and c unwraps the very
secret a generated; with no holder about, c waits with a one-line reason, and is keyed as soon
as one comes back.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import KeyBundle
from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from coordinator.blobs import BlobStore
from coordinator.errors import Refused
from coordinator.federation import Federation
from coordinator.late_keys import HOLDERS_AWAY_S, WRAP_TASK_S
from coordinator.store import Store, StudyRow, open_engine
from privacy.he import SiloKeyPair, StudyKeys, unwrap_secret, wrap_secret
from tests.coordinator.test_late_join import Clock  # the clock the late-join tests move


class Run:
    def __init__(self, root: Path) -> None:
        self.clock = Clock()
        self.events: list[tuple[str, dict]] = []
        self.store = Store(open_engine(f"sqlite:///{root / 'c.sqlite'}"))
        self.fed = Federation(self.store, BlobStore(root / "blobs"), clock=self.clock,
                              audit=lambda e, **f: self.events.append((e, f)))
        spec = StudySpec(name="late-keys", modalities=("ehr",), model=ModelSpec(ehr_hidden=8, embed_dim=4),
                         training=TrainingSpec(rounds=3, min_silos=2, expected_silos=2, round_timeout_s=10_000),
                         privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
        self.study = self.fed.submit_study(spec.to_json())
        self.sha = self.store.get(StudyRow, self.study).spec_sha256
        self.wrap = {s: SiloKeyPair.generate() for s in ("a", "b", "c")}
        for s in self.wrap:
            self.fed.join(s, ["ehr"], self.wrap[s].public_bytes())
        for s in ("a", "b"):
            assert self.fed.next_task(s, 0).kind == pb.TASK_PROPOSAL
            self.accept(s)
        task = self.fed.next_task("a", 0)
        assert task.kind == pb.TASK_KEYGEN  # a is the key holder
        keys = StudyKeys.generate("exact")
        self.secret = keys.secret_context()
        self.public = keys.public_context()
        self.push("a", {s: wrap_secret(self.secret, k, context=self.study.encode())
                        for s, k in task.participant_keys.items()})
        assert self.store.get(StudyRow, self.study).state == "running"

    def accept(self, silo: str) -> None:
        self.fed.answer_proposal(silo, pb.ProposalAnswer(study_id=self.study, accept=True, spec_sha256=self.sha,
                                                         train_samples=10))

    def push(self, silo: str, wrapped: dict[str, bytes], round_: int = 0) -> None:
        data = KeyBundle(public_context=self.public, wrapped=wrapped).to_json()
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=self.study, kind=pb.BLOB_KEY_BUNDLE), round=round_,
                               size=len(data), sha256=hashlib.sha256(data).hexdigest())
        with self.fed.blobs.incoming() as incoming:
            incoming.write(data)
            self.fed.accept_key_bundle(silo, header, incoming)

    def own_secret(self, silo: str) -> bytes:
        """What `silo` unwraps from the wrapped key the coordinator serves it."""
        _, blob = self.fed.blob_for(silo, pb.BlobRef(study_id=self.study, kind=pb.BLOB_WRAPPED_KEY))
        return unwrap_secret(bytes(blob), self.wrap[silo], context=self.study.encode())

    def wrap_for_late(self, holder: str, task: pb.Task) -> None:
        """TASK_WRAP_KEY as a holder's node answers it: its own secret, wrapped for the task's recipients."""
        assert task.kind == pb.TASK_WRAP_KEY, task
        secret = self.own_secret(holder)
        self.push(holder, {s: wrap_secret(secret, k, context=self.study.encode())
                           for s, k in task.participant_keys.items()}, task.round)

    def late_c(self) -> None:
        assert self.fed.next_task("c", 0).kind == pb.TASK_PROPOSAL
        self.accept("c")


def test_a_silo_other_than_the_key_holder_wraps_the_key_for_a_late_joiner(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.late_c()
    # a, the key holder, is away; b asks for work first and is given the wrap task, for c only.
    task = run.fed.next_task("b", 0)
    assert task.kind == pb.TASK_WRAP_KEY and list(task.participant_keys) == ["c"]
    assert run.fed.next_task("a", 0).kind != pb.TASK_WRAP_KEY  # b has it: no second holder does the same work
    run.wrap_for_late("b", task)
    received = [f for e, f in run.events if e == "message_received" and f["kind"] == "key_bundle"]
    assert (received[-1]["silo"], received[-1]["wrapped_for"]) == ("b", ["c"])
    assert run.own_secret("c") == run.secret  # the very secret a generated: one key set per study
    # Keyed: c is asked to the round after the one under way.
    for s in ("a", "b"):
        assert run.fed.next_task(s, 0).kind == pb.TASK_TRAIN
    assert run.fed.next_task("c", 0).kind == pb.TASK_WAIT


def test_a_holder_that_does_not_answer_its_wrap_task_is_replaced(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.late_c()
    assert run.fed.next_task("a", 0).kind == pb.TASK_WRAP_KEY  # a takes it, then goes away
    assert run.fed.next_task("b", 0).kind != pb.TASK_WRAP_KEY
    run.clock.now += WRAP_TASK_S + 1
    run.wrap_for_late("b", run.fed.next_task("b", 0))
    assert run.own_secret("c") == run.secret


def test_with_no_holder_about_the_late_joiner_waits_with_the_reason_and_joins_when_one_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = Run(tmp_path)
    run.late_c()
    run.clock.now += HOLDERS_AWAY_S + 1  # neither a nor b has asked for work since
    with caplog.at_level(logging.WARNING, logger="coordinator.late_keys"):
        waits = [run.fed.next_task("c", 0) for _ in range(3)]
    said = [r.getMessage() for r in caplog.records if "waits for the study's CKKS key" in r.getMessage()]
    assert len(said) == 1 and "none of the silos holding it (a, b)" in said[0], said  # one line, once
    assert "\n" not in said[0]
    # The late joiner is told too: its TASK_WAIT carries the reason (its node logs it once).
    assert all((t.kind, t.study_id, t.wait_reason) == (pb.TASK_WAIT, run.study, said[0]) for t in waits), waits
    run.clock.now += 500
    run.wrap_for_late("b", run.fed.next_task("b", 0))  # b comes back: it wraps at once
    assert run.own_secret("c") == run.secret
    assert run.fed.next_task("c", 0).kind == pb.TASK_WAIT  # keyed; asked from the next round


def test_a_silo_without_the_key_cannot_send_a_late_bundle(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.late_c()
    with pytest.raises(Refused, match="not expected to send keys"):
        run.push("c", {"c": wrap_secret(run.secret, run.wrap["c"].public_bytes(), context=run.study.encode())})
