"""The best version under CKKS (#14 item 4): the coordinator cannot decrypt any version, so the key
holder publishes the one to release, chosen once the other silos have evaluated the last version.
Real state machine, real TenSEAL keys and ciphertexts, real store and blobs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import KeyBundle
from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.blobs import BlobStore
from coordinator.federation import Federation
from coordinator.store import StudyRow, Store, open_engine
from coordinator.summary import summary_dict
from privacy.he import SiloKeyPair, StudyKeys, encrypt_update, wrap_secret

SILOS = ("h1", "h2")  # h1, the first accepted, is the key holder


def _push(fed: Federation, silo: str, kind: int, study: str, data: bytes, task: pb.Task | None = None,
          encoding: str = "") -> pb.PushReply:
    header = pb.BlobHeader(ref=pb.BlobRef(study_id=study, kind=kind), size=len(data),
                           sha256=hashlib.sha256(data).hexdigest(), encoding=encoding, metadata_json="{}",
                           round=task.round if task else 0, nonce=task.nonce if task else "", weight=1.0)
    accept = {pb.BLOB_KEY_BUNDLE: fed.accept_key_bundle, pb.BLOB_UPDATE: fed.accept_update,
              pb.BLOB_FINAL_MODEL: fed.accept_final_model}[kind]
    with fed.blobs.incoming() as incoming:
        incoming.write(data)
        return accept(silo, header, incoming)


def test_the_key_holder_publishes_the_best_version_after_the_others_report(tmp_path: Path) -> None:
    store = Store(open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    fed = Federation(store, BlobStore(tmp_path / "blobs"))
    spec = StudySpec(name="ckks release", modalities=("ehr",), model=ModelSpec(ehr_hidden=8, embed_dim=4),
                     training=TrainingSpec(rounds=2, min_silos=2, expected_silos=2),
                     privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
    study = fed.submit_study(spec.to_json())
    sha = store.get(StudyRow, study).spec_sha256
    wrap = {s: SiloKeyPair.generate() for s in SILOS}
    for s in SILOS:
        fed.join(s, ["ehr"], wrap[s].public_bytes())
        assert fed.next_task(s, 0).kind == pb.TASK_PROPOSAL
        fed.answer_proposal(s, pb.ProposalAnswer(study_id=study, accept=True, spec_sha256=sha, train_samples=10))
    task = fed.next_task("h1", 0)
    assert task.kind == pb.TASK_KEYGEN
    keys = StudyKeys.generate("exact")
    secret = keys.secret_context()
    bundle = KeyBundle(public_context=keys.public_context(),
                       wrapped={s: wrap_secret(secret, k, context=study.encode()) for s, k in task.participant_keys.items()})
    _push(fed, "h1", pb.BLOB_KEY_BUNDLE, study, bundle.to_json())
    names, v0 = decode_tensors(fed.blobs.get(fed.versions.sha(study, 0)))
    n = sum(a.size for a in v0)
    auroc = {0: 0.5, 1: 0.9, 2: 0.6}  # version 1 is the best
    for r in (1, 2):
        for s in SILOS:
            t = fed.next_task(s, 0)
            assert (t.kind, t.round) == (pb.TASK_TRAIN, r)
            fed.report_metrics(s, pb.MetricsReport(study_id=study, round=r, nonce=t.nonce, model_version=r - 1,
                                                   samples=5, metrics={"val_auroc": auroc[r - 1], "auroc": auroc[r - 1]}))
            data = encrypt_update(secret, np.full(n, 0.01 * r, np.float32), mode="exact", clip=10.0)
            _push(fed, s, pb.BLOB_UPDATE, study, data, t, encoding="ckks-exact")
    # Finalizing: h2 evaluates version 2; the key holder waits for it, then publishes version 1.
    assert fed.next_task("h1", 0).kind == pb.TASK_WAIT
    t2 = fed.next_task("h2", 0)
    assert (t2.kind, t2.model_version, t2.publish_model) == (pb.TASK_FINALIZE, 2, False)
    fed.report_metrics("h2", pb.MetricsReport(study_id=study, round=t2.round, nonce=t2.nonce, model_version=2,
                                              samples=5, metrics={"val_auroc": auroc[2], "auroc": auroc[2]}))
    t1 = fed.next_task("h1", 0)
    assert (t1.kind, t1.model_version, t1.publish_model) == (pb.TASK_FINALIZE, 1, True)
    final = encode_tensors(names, [np.asarray(a) + np.float32(0.01) for a in v0])  # what h1 decrypted for version 1
    _push(fed, "h1", pb.BLOB_FINAL_MODEL, study, final, t1, encoding="tensors")
    assert store.get(StudyRow, study).state == "finalizing"  # h1's evaluation of the release is still due
    fed.report_metrics("h1", pb.MetricsReport(study_id=study, round=t1.round, nonce=t1.nonce, model_version=1,
                                              samples=5, metrics={"val_auroc": auroc[1], "auroc": auroc[1]}))
    row = store.get(StudyRow, study)
    assert row.state == "done" and row.final_model_sha == hashlib.sha256(final).hexdigest()
    summary = summary_dict(fed, study)
    assert summary["release"]["round"] == 1 and summary["final"]["auroc"] == 0.9
    store.engine.dispose()
