"""Buffered asynchronous aggregation (FedBuff, #15 item 3) over real processes: three silos, one
slow (node config train_delay_s), a buffer of two. The study finishes without waiting for the
slow silo, and every version, recomputed from the stored updates, is the previous one plus
Σ wᵢ s(τᵢ) Δᵢ / Σ wᵢ with s(τ) = (1 + τ)^-0.5; the released model is one of those versions."""

import hashlib

import numpy as np
import pytest

from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors
from coordinator.blobs import BlobStore
from coordinator.outcome import RoundOutcome
from coordinator.server import BLOB_DIR, STATE_DATABASE
from coordinator.store import ModelVersionRow, RoundRow, Store, StudyRow, UpdateRow, open_engine

pytestmark = pytest.mark.slow


def test_async_study_with_a_slow_silo_builds_staleness_weighted_versions(cluster) -> None:
    client = cluster.start_coordinator()
    slow = cluster.hospitals[-1]
    for h in cluster.hospitals:
        # every local run takes at least 1 s, the slow silo's 3 s: it answers a few versions late
        cluster.start_silo(h, train_delay_s=3.0 if h is slow else 1.0)
    spec = StudySpec(name="e2e-async",
                     training=TrainingSpec(rounds=6, min_silos=2, expected_silos=3, round_timeout_s=120,
                                           enrollment_timeout_s=600, mode="async", buffer_size=2, max_staleness=10),
                     privacy=PrivacySpec(dp=False, encryption="none"))
    study_id = client.submit(spec)
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=500)
    state = cluster.root / "coordinator"
    store = Store(open_engine(f"sqlite:///{state / STATE_DATABASE}"))
    blobs = BlobStore(state / BLOB_DIR)

    def weights(version: int) -> list[np.ndarray]:
        return [np.array(a) for a in decode_tensors(blobs.get(store.get(ModelVersionRow, study_id, version).blob_sha))[1]]

    stale, contributors = 0, set()
    model = weights(0)
    for r in range(1, spec.training.rounds + 1):
        updates = store.all(UpdateRow, study_id=study_id, round=r)
        staleness = RoundOutcome.of(store.get(RoundRow, study_id, r).outcome_json).staleness
        assert len(updates) == 2 and sorted(staleness) == sorted(u.silo for u in updates)
        stale += sum(1 for s in staleness.values() if s > 0)
        contributors.update(u.silo for u in updates)
        total = sum(u.weight for u in updates)
        deltas = [(u.weight * (1 + staleness[u.silo]) ** -0.5, decode_tensors(blobs.get(u.blob_sha))[1]) for u in updates]
        model = [m + sum(c * np.asarray(d[i], dtype=np.float64) for c, d in deltas) / total for i, m in enumerate(model)]
        for got, want in zip(weights(r), model):
            np.testing.assert_allclose(got, want, atol=1e-5)
        model = weights(r)
    assert stale > 0, "no update was ever stale: the slow silo did not slow anything down"
    assert slow.name in contributors, f"the slow silo's updates never made it into a version: {contributors}"
    released = summary["release"]["round"]
    row = store.get(StudyRow, study_id)
    assert row.final_model_sha == store.get(ModelVersionRow, study_id, released).blob_sha
    assert hashlib.sha256(blobs.get(row.final_model_sha)).hexdigest() == row.final_model_sha
    store.engine.dispose()
