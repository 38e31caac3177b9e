"""A hospital stays in control: its privacy budget cap and its approval decide what runs on its data."""

import subprocess
import sys

import pytest

from compliance import read_log
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec

pytestmark = pytest.mark.slow


def _spec(**training) -> StudySpec:
    return StudySpec(name="governance", training=TrainingSpec(**{"rounds": 2, "local_epochs": 1, "learning_rate": 0.05,
                                                                  "min_silos": 2, "expected_silos": 3, **training}),
                     privacy=PrivacySpec(dp=True, target_epsilon=8.0, encryption="none"))


def _events(cluster, silo: str) -> list[str]:
    return [e.event for e in read_log(cluster.root / "silos" / silo / "state" / "audit.sqlite").entries]


def test_a_silo_refuses_a_round_beyond_its_budget_and_the_study_goes_on(cluster) -> None:
    client = cluster.start_coordinator()
    frugal = cluster.hospitals[0]
    cluster.start_silo(frugal, privacy={"epsilon_cap": 3.0})
    for h in cluster.hospitals[1:]:
        cluster.start_silo(h)
    study_id = client.submit(_spec())
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    for r in summary["rounds"][1:]:
        assert "privacy budget" in r["skipped"][frugal.name] and "3.0" in r["skipped"][frugal.name]
        assert r["epsilon"][frugal.name] is None
        assert all(r["epsilon"][h.name] > 0 for h in cluster.hospitals[1:])
    events = _events(cluster, frugal.name)
    assert events.count("budget_refused") == 2 and "round_joined" not in events


def test_a_manual_node_touches_no_data_before_it_approves(cluster) -> None:
    client = cluster.start_coordinator()
    manual = cluster.hospitals[0]
    config = cluster.start_silo(manual, approval={"mode": "manual"})
    for h in cluster.hospitals[1:]:
        cluster.start_silo(h)
    study_id = client.submit(_spec(rounds=1))
    listing = ""
    for _ in range(60):  # the proposal reaches the node at its next poll
        listing = subprocess.run([sys.executable, "-m", "fedcare", "silo", "studies", "--config", str(config)],
                                 capture_output=True, text=True, timeout=120).stdout
        if study_id in listing:
            break
        cluster.wait_for(client, study_id, lambda st, s: True, timeout=5)
    assert study_id in listing and "PENDING" in listing and "what_is_sent" in listing
    assert client.status(study_id)[0].state == "enrolling"
    assert "data_ingested" not in _events(cluster, manual.name)
    approve = subprocess.run([sys.executable, "-m", "fedcare", "silo", "approve", study_id, "--config", str(config)],
                             capture_output=True, text=True, timeout=120)
    assert approve.returncode == 0, approve.stderr
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    assert manual.name in summary["silos"]
    events = _events(cluster, manual.name)
    assert events.index("study_approved") < events.index("data_ingested") < events.index("data_split")
