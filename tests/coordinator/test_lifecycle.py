"""The study lifecycle (coordinator/lifecycle.py) resumes from what the store holds after a restart."""

from __future__ import annotations

from pathlib import Path

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from coordinator.blobs import BlobStore
from coordinator.federation import Federation
from coordinator.store import EnrollmentRow, RoundRow, Store, StudyRow, open_engine

SILOS = ("h1", "h2")


def test_a_study_whose_keys_were_stored_opens_round_1_after_a_restart(tmp_path: Path) -> None:
    """The key holder's bundle is stored, and the coordinator stops before round 1 opens: the restarted
    coordinator opens it (it used to open only in the call that stored the keys, leaving the study in keygen)."""
    store = Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    blobs = BlobStore(tmp_path / "blobs")
    fed = Federation(store, blobs)
    spec = StudySpec(name="keys then crash", modalities=("ehr",), model=ModelSpec(ehr_hidden=8, embed_dim=4),
                     training=TrainingSpec(rounds=1, min_silos=2, expected_silos=2),
                     privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
    study = fed.submit_study(spec.to_json())
    sha = store.get(StudyRow, study).spec_sha256
    for s in SILOS:
        fed.join(s, ["ehr"], bytes(32))
        fed.answer_proposal(s, pb.ProposalAnswer(study_id=study, accept=True, spec_sha256=sha, train_samples=10))
    row = store.get(StudyRow, study)
    assert (row.state, row.key_holder) == ("keygen", "h1")
    # What accepting the bundle stores (the public context, each silo's wrapped key), and no more.
    row.public_context_sha = blobs.put(b"public context")
    store.add(row)
    for s in SILOS:
        enrollment = store.get(EnrollmentRow, study, s)
        enrollment.wrapped_key_sha = blobs.put(f"wrapped for {s}".encode())
        store.add(enrollment)

    restarted = Federation(store, blobs)
    restarted.tick()
    assert store.get(StudyRow, study).state == "running"
    assert store.get(RoundRow, study, 1).state == "open"
    task = restarted.next_task("h2", 0)
    assert (task.kind, task.round) == (pb.TASK_TRAIN, 1)
