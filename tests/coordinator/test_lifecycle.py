"""The study lifecycle (coordinator/lifecycle.py) resumes from what the store holds after a restart."""

from __future__ import annotations

from pathlib import Path

from coordinator.api import federation_pb2 as pb
from coordinator.blobs import BlobStore
from coordinator.federation import Federation
from coordinator.store import EnrollmentRow, RoundRow, Store, StudyRow, open_engine
from tests.coordinator.enrolled import enrolled, small_spec

SILOS = ("h1", "h2")


def test_a_study_whose_keys_were_stored_opens_round_1_after_a_restart(tmp_path: Path) -> None:
    """The key holder's bundle is stored, and the coordinator stops before round 1 opens: the restarted
    coordinator opens it (it used to open only in the call that stored the keys, leaving the study in keygen)."""
    store = Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    blobs = BlobStore(tmp_path / "blobs")
    fed = Federation(store, blobs)
    study = enrolled(fed, small_spec("keys then crash", encryption="ckks-exact", silos=len(SILOS)), SILOS)
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
