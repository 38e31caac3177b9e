"""A compressed study over real processes: top-k updates with error feedback, q8 downlink."""

import pytest

from coordinator.api.study import CompressionSpec, PrivacySpec, StudySpec, TrainingSpec

pytestmark = pytest.mark.slow


def test_topk_study_completes_and_counts_fewer_bytes(cluster) -> None:
    client = cluster.start_coordinator()
    for h in cluster.hospitals:
        cluster.start_silo(h)
    spec = StudySpec(name="e2e-topk",
                     training=TrainingSpec(rounds=2, local_epochs=2, min_silos=2, expected_silos=3, round_timeout_s=120),
                     privacy=PrivacySpec(dp=False, encryption="none"),
                     compression=CompressionSpec(codec="topk", fraction=0.05, zstd=True, downlink="q8"))
    study_id = client.submit(spec)
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert summary["final"]["auroc"] > 0.5
    up = [v for r in rounds[1:] for v in r["bytes_up"].values()]
    down = [v for r in rounds[1:] for v in r["bytes_down"].values()]
    full = 4 * 24_820  # the default model's float32 parameters, as uncompressed tensors
    assert len(up) == 6 and all(0 < v < 0.2 * full for v in up), up
    # version 0 travels as its hash (rebuilt from the seed at each silo), later versions as q8 deltas
    assert all(0 < v < 0.3 * full for v in down), down
    for h in cluster.hospitals:  # the residual is kept on disk at each silo
        assert list((cluster.root / "silos" / h.name).rglob(f"feedback/{study_id}.fcup"))
