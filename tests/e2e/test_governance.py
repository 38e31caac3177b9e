"""A hospital stays in control: its privacy budget cap and its approval decide what runs on its data."""

import subprocess
import sys

import pytest

from compliance import read_log
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec

pytestmark = pytest.mark.slow


def _spec(**training) -> StudySpec:
    # a generous enrollment window: the study starts once all three answered, and the manual node
    # answers only when the test approves (after a `fedcare silo studies` per poll, slow on a loaded machine)
    return StudySpec(name="governance", training=TrainingSpec(**{"rounds": 2, "local_epochs": 1, "learning_rate": 0.05,
                                                                  "min_silos": 2, "expected_silos": 3,
                                                                  "enrollment_timeout_s": 600, **training}),
                     privacy=PrivacySpec(dp=True, target_epsilon=8.0, encryption="none"))


def _events(cluster, silo: str, study: str | None = None) -> list[str]:
    return [e.event for e in read_log(cluster.root / "silos" / silo / "state" / "audit.sqlite").entries
            if study is None or e.fields.get("study") == study]


def _fedcare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", *args], capture_output=True, text=True, timeout=120)


def _listing_once_proposed(cluster, client, config, study_id: str) -> str:  # noqa: ANN001 - Cluster, ResearcherClient, Path
    """`fedcare silo studies` at the manual node, once the proposal has reached it (at its next poll)."""
    listing = ""
    for _ in range(60):
        listing = _fedcare("silo", "studies", "--config", str(config)).stdout
        if study_id in listing:
            break
        cluster.wait_for(client, study_id, lambda st, s: True, timeout=5)
    return listing


def test_budget_caps_and_approval_decide_what_runs_on_a_hospitals_data(cluster) -> None:
    """One federation, two studies: a frugal silo (ε cap 3.0, below the studies' target), a manual
    node (asks its operator) and an ordinary one. The manual node's study runs first, while that
    node has touched no data yet."""
    client = cluster.start_coordinator()
    frugal, manual, ordinary = cluster.hospitals
    cluster.start_silo(frugal, privacy={"epsilon_cap": 3.0})
    config = cluster.start_silo(manual, approval={"mode": "manual"})
    cluster.start_silo(ordinary)

    # A manual node touches no data before it approves.
    study_id = client.submit(_spec(rounds=1))
    listing = _listing_once_proposed(cluster, client, config, study_id)
    assert study_id in listing and "PENDING" in listing and "what_is_sent" in listing
    assert client.status(study_id)[0].state == "enrolling"
    assert "data_ingested" not in _events(cluster, manual.name)
    approve = _fedcare("silo", "approve", study_id, "--config", str(config))
    assert approve.returncode == 0, approve.stderr
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    assert manual.name in summary["silos"]
    events = _events(cluster, manual.name)
    assert events.index("study_approved") < events.index("data_ingested") < events.index("data_split")

    # A silo refuses a round beyond its budget and the study goes on.
    study_id = client.submit(_spec())
    assert study_id in _listing_once_proposed(cluster, client, config, study_id)
    assert _fedcare("silo", "approve", study_id, "--config", str(config)).returncode == 0
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    for r in summary["rounds"][1:]:
        assert "privacy budget" in r["skipped"][frugal.name] and "3.0" in r["skipped"][frugal.name]
        assert r["epsilon"][frugal.name] is None
        assert r["epsilon"][manual.name] > 0 and r["epsilon"][ordinary.name] > 0
    assert _events(cluster, frugal.name, study_id).count("budget_refused") == 2
    assert "round_joined" not in _events(cluster, frugal.name)
