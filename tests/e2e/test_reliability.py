"""Crashes with real processes: a silo and the coordinator killed with SIGKILL mid-round."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec

from .specs import SECONDS_PER_ROUND_MODEL

pytestmark = pytest.mark.slow


def _spec(round_timeout_s: float, rounds: int = 3, *, model: ModelSpec | None = None, local_epochs: int = 1) -> StudySpec:
    return StudySpec(
        name="reliability",
        model=model or ModelSpec(),
        training=TrainingSpec(rounds=rounds, local_epochs=local_epochs, learning_rate=0.1, min_silos=2, expected_silos=3,
                              round_timeout_s=round_timeout_s),
        privacy=PrivacySpec(dp=False, encryption="none"),
    )


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


def _wait(predicate, *, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_silo_killed_mid_round_is_dropped_then_rejoins(cluster) -> None:
    client = cluster.start_coordinator()
    for h in cluster.hospitals:
        cluster.start_silo(h)
    victim = cluster.hospitals[-1].name
    survivors = [h.name for h in cluster.hospitals[:-1]]
    # Round 1 closes at its deadline (the victim never answers). Not shorter: the restarted victim must
    # join before round 2's deadline passes while the survivors are paused, or the round is reopened
    # with the victim in it (40 s failed that way on a loaded machine).
    # Three epochs of seconds-long rounds: the survivors are paused inside round 2, not after the study.
    study = client.submit(_spec(round_timeout_s=60, rounds=4, model=SECONDS_PER_ROUND_MODEL,
                                local_epochs=3))
    cluster.wait_for(client, study, lambda st, s: st.state == "running" and st.current_round == 1, timeout=240)
    cluster.kill(victim, signal.SIGKILL)  # mid round 1: the silo is training or about to
    # Round 1 closes at its deadline with the quorum of the two survivors, and the next round asks
    # only them: a silo not seen since round 1 opened is dropped from the quorum ...
    cluster.wait_for(client, study, lambda st, s: st.current_round >= 2, timeout=180)
    _, summary = client.status(study)
    accepted_1 = summary["rounds"][1]["aggregation"]["accepted"]
    assert len(accepted_1) >= 2, summary["rounds"][1]  # (the victim's update may have left before the kill)
    # ... until it comes back. The survivors are paused while it restarts, so that the study cannot
    # run out of rounds first (without the victim, a round takes the survivors a second or two).
    for name in survivors:
        cluster.procs[name].send_signal(signal.SIGSTOP)
    try:
        joined_before = cluster.log(victim).count("joined the coordinator")  # the log is appended to
        cluster.start_silo(cluster.hospitals[-1])
        _wait(lambda: cluster.log(victim).count("joined the coordinator") > joined_before, timeout=180,
              what="the restarted silo to join")
    finally:
        for name in survivors:
            cluster.procs[name].send_signal(signal.SIGCONT)
    # The restarted silo resumes the study from its approval on disk and takes part again.
    summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=400)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    # Dropped while it was away: a round after the kill closed without it (round 1 at its deadline, with
    # the survivors' quorum; or round 2, when the victim's round-1 update had left before the kill) ...
    away = [r["round"] for r in rounds[1:3] if victim not in r["aggregation"]["accepted"]]
    assert away, [r["aggregation"] for r in rounds[1:]]
    # ... and back after its restart: it takes part in a later round (it may return while round 2 is open).
    assert any(victim in r["aggregation"]["accepted"] for r in rounds[away[0] + 1:]), [r["aggregation"] for r in rounds[1:]]
    assert summary["final"]["auroc"] is not None


def test_a_coordinator_killed_mid_round_resumes_without_losing_work(cluster) -> None:
    client = cluster.start_coordinator()
    for h in cluster.hospitals:
        cluster.start_silo(h)
    db = cluster.root / "coordinator" / "coordinator.sqlite"
    study = client.submit(_spec(round_timeout_s=60))
    # Kill as soon as round 2 has an accepted update but is still open.
    cluster.wait_for(client, study, lambda st, s: st.current_round >= 2, timeout=300)
    _wait(lambda: _rows(db, f"SELECT silo FROM updates WHERE study_id='{study}' AND round=2"),
          timeout=120, what="a round-2 update", poll=0.05)
    cluster.kill("coordinator", signal.SIGKILL)
    closed = _rows(db, f"SELECT number, nonce, outcome_json FROM rounds WHERE study_id='{study}' AND state='closed'")
    updates = _rows(db, f"SELECT round, silo, blob_sha, size FROM updates WHERE study_id='{study}'")
    versions = _rows(db, f"SELECT version, blob_sha FROM model_versions WHERE study_id='{study}'")
    assert [r[0] for r in closed][:1] == [1] and any(u[0] == 2 for u in updates)

    client = cluster.start_coordinator()
    # Nothing finished or accepted before the crash is lost or changed.
    assert set(closed) <= set(_rows(db, f"SELECT number, nonce, outcome_json FROM rounds "
                                        f"WHERE study_id='{study}' AND state='closed'"))
    assert set(updates) <= set(_rows(db, f"SELECT round, silo, blob_sha, size FROM updates WHERE study_id='{study}'"))
    assert set(versions) <= set(_rows(db, f"SELECT version, blob_sha FROM model_versions WHERE study_id='{study}'"))
    summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=300)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    # The updates taken before the crash are the ones round 2 aggregated (silos that retried were idempotent).
    accepted_2 = set(summary["rounds"][2]["aggregation"]["accepted"])
    assert {u[1] for u in updates if u[0] == 2} <= accepted_2
    after = _rows(db, f"SELECT round, silo, blob_sha, size FROM updates WHERE study_id='{study}'")
    assert set(updates) <= set(after)


# Longer than a silo with max_retries = 1 used to wait (about a second) before it gave up and
# exited; the default max_retries = 8 gave up after about 100 s. A parameter, so the test need
# not sit through 100 s: what it checks is that waiting no longer ends.
OUTAGE_S = 8.0  # several times that second; the silos' backoff after it stays short


def test_a_silo_waits_out_a_coordinator_outage_and_carries_on(cluster) -> None:
    client = cluster.start_coordinator()
    silos = [h.name for h in cluster.hospitals[:2]]
    for h in cluster.hospitals[:2]:
        cluster.start_silo(h, max_retries=1)  # the first burst of retries ends at once
    for name in silos:
        cluster.wait_for_log(name, "joined the coordinator", timeout=300)
    spec = StudySpec(name="outage", training=TrainingSpec(rounds=2, local_epochs=1, learning_rate=0.1, min_silos=2,
                                                          expected_silos=2, round_timeout_s=300),
                     privacy=PrivacySpec(dp=False, encryption="none"))
    study = client.submit(spec)
    cluster.wait_for(client, study, lambda st, s: st.state == "running", timeout=240)
    cluster.kill("coordinator", signal.SIGKILL)
    for name in silos:
        cluster.wait_for_log(name, "is waiting for the coordinator", timeout=120)
    time.sleep(OUTAGE_S)
    for name in silos:  # still serving, and saying what they wait for
        assert cluster.procs[name].poll() is None, cluster.log(name)[-3000:]

    client = cluster.start_coordinator()
    summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=600)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert all(set(r["aggregation"]["accepted"]) == set(silos) for r in summary["rounds"][1:]), summary["rounds"]
    for name in silos:
        assert "reached the coordinator" in cluster.log(name) and cluster.procs[name].poll() is None
