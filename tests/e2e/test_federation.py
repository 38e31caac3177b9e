"""A real federation: coordinator + three silo processes over loopback gRPC."""

import json
import signal

import pytest

from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec

pytestmark = pytest.mark.slow


def _spec(rounds: int, **privacy) -> StudySpec:
    return StudySpec(
        name="e2e",
        training=TrainingSpec(rounds=rounds, local_epochs=2, learning_rate=0.1, min_silos=2, expected_silos=3,
                              round_timeout_s=120),
        privacy=PrivacySpec(**privacy),
    )


def test_study_learns_and_survives_a_coordinator_restart(cluster) -> None:
    client = cluster.start_coordinator()
    for h in cluster.hospitals:
        cluster.start_silo(h)
    study_id = client.submit(_spec(3, dp=False, encryption="none"))
    # Let round 1 finish, then restart the coordinator between rounds.
    cluster.wait_for(client, study_id, lambda st, s: st.current_round >= 2, timeout=300)
    cluster.kill("coordinator", signal.SIGTERM)
    client = cluster.start_coordinator()
    _, summary = client.status(study_id)
    assert summary["rounds"][1]["metrics"] is not None, "round 1 was lost across the restart"
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert summary["final"]["auroc"] > rounds[0]["metrics"]["auroc"] + 0.05
    for r in rounds[1:]:
        assert all(v > 0 for v in r["bytes_up"].values()) and all(v > 0 for v in r["bytes_down"].values())


def test_dp_and_ckks_study_matches_reported_privacy(cluster, tmp_path) -> None:
    client = cluster.start_coordinator()
    for h in cluster.hospitals:
        cluster.start_silo(h)
    study_id = client.submit(_spec(2, dp=True, target_epsilon=8.0, encryption="ckks-exact"))
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    assert summary["final"]["auroc"] > summary["rounds"][0]["metrics"]["auroc"]
    eps = [e for r in summary["rounds"][1:] for e in r["epsilon"].values()]
    assert all(e is not None and 0 < e <= 8.0 + 1e-6 for e in eps)
    paths = client.results(study_id, tmp_path / "results")
    assert json.loads(paths["summary"].read_text())["study"] == study_id
