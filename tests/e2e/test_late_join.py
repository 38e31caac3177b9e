"""Late joining with real processes: a hospital that answers its proposal after the study
started takes part from the next round (under CKKS once a silo holding the study's secret has
wrapped it for it: the other early hospital, since the key holder is paused), and the study
finishes with it. With `training.late_join = false`
the late answer is refused, and the node logs, audits and goes on instead of exiting."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compliance.audit import Event
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.server import STATE_DATABASE
from coordinator.store import Store, StudyRow, open_engine

pytestmark = pytest.mark.slow


def _spec(*, encryption: str, late_join: bool = True) -> StudySpec:
    return StudySpec(
        name="late-join",
        training=TrainingSpec(rounds=3, local_epochs=1, learning_rate=0.1, min_silos=2, expected_silos=2,
                              round_timeout_s=240, late_join=late_join),
        privacy=PrivacySpec(dp=False, encryption=encryption),  # type: ignore[arg-type]
    )


def _approve(cluster, cfg, study: str) -> None:
    """Hospital IT approves the study by hand, after it started (`fedcare silo approve`)."""
    proc = subprocess.run([sys.executable, "-m", "fedcare", "silo", "approve", study, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, cwd=cluster.root, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _events(path: Path, event: Event) -> list[dict]:
    """The fields of every `event` entry of an audit log, read as a verifier would (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [json.loads(f) for (f,) in conn.execute("SELECT fields FROM entries WHERE event = ? ORDER BY idx", (str(event),))]
    finally:
        conn.close()


def _key_holder(cluster, study: str) -> str | None:
    store = Store(open_engine(f"sqlite:///{cluster.root / 'coordinator' / STATE_DATABASE}"))
    try:
        return store.get(StudyRow, study).key_holder
    finally:
        store.engine.dispose()


def _start_with_a_late_hospital(cluster, spec: StudySpec):
    """Two hospitals that approve at once and a third whose IT has not decided yet; the study
    runs round 1, held open (one early hospital paused: under CKKS the key holder) until the
    late answer has been given (round 2 instead if the paused hospital sent its round-1 update first). Returns the paused hospital's name last."""
    client = cluster.start_coordinator()
    early, late = cluster.hospitals[:2], cluster.hospitals[2]
    for h in early:
        cluster.start_silo(h)
    late_cfg = cluster.start_silo(late, approval={"mode": "manual"})
    for h in cluster.hospitals:  # started and joined (a loaded machine takes a while to import torch)
        cluster.wait_for_log(h.name, "joined the coordinator", timeout=300)
    study = client.submit(spec)
    # The late hospital got the proposal while the study enrolled and left it undecided.
    cluster.wait_for_log(late.name, f"study {study} awaits a decision", timeout=240)
    cluster.wait_for(client, study, lambda st, s: st.state == "running" and st.current_round >= 1, timeout=300)
    paused = _key_holder(cluster, study) or early[0].name
    os.kill(cluster.procs[paused].pid, signal.SIGSTOP)  # its round cannot close before the deadline
    return client, study, late.name, late_cfg, paused


def _resume(cluster, paused: str) -> None:
    os.kill(cluster.procs[paused].pid, signal.SIGCONT)


@pytest.mark.parametrize("encryption", ["none", "ckks-exact"])
def test_a_silo_that_answers_after_the_start_joins_the_next_round(cluster, encryption: str) -> None:
    client, study, late, late_cfg, paused = _start_with_a_late_hospital(cluster, _spec(encryption=encryption))
    _approve(cluster, late_cfg, study)
    cluster.wait_for(client, study, lambda st, s: late in st.silos, timeout=300)
    audit = cluster.root / "coordinator" / "audit.sqlite"
    if encryption != "none":  # keyed while the key holder is paused, by the other early hospital
        deadline = time.monotonic() + 300
        while not [e for e in _events(audit, Event.MESSAGE_RECEIVED) if e["kind"] == "key_bundle" and e["round"] > 0]:
            assert time.monotonic() < deadline, "no silo wrapped the key for the late joiner while the key holder was away"
            time.sleep(1)
    # It accepted while the paused hospital held a round open: round 1, or round 2 when both early
    # hospitals sent their round-1 updates before the pause landed (a race the test cannot close,
    # since the pause must follow round 1's start for the key holder to have made the keys).
    accepted_in = client.status(study)[0].current_round
    assert accepted_in in (1, 2), accepted_in
    _resume(cluster, paused)
    summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=900)

    assert cluster.procs[late].poll() is None, cluster.log(late)[-3000:]  # alive, no exit on a late answer
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    joined = summary["joined_round"]
    assert joined[late] == accepted_in + 1 and all(joined[h.name] == 1 for h in cluster.hospitals[:2]), joined
    # Counted from then on: its update is aggregated in every round from the one it joined.
    for r in summary["rounds"][joined[late]:]:
        assert late in r["aggregation"]["accepted"], (r["round"], r["aggregation"])
    assert all(late not in r["aggregation"]["accepted"] for r in summary["rounds"][1:joined[late]])
    assert summary["final"]["auroc"] is not None and late in summary["rounds"][-1]["metrics_per_silo"]
    # The coordinator's audit trail says when it took part first.
    assert {"study": study, "silo": late, "round": joined[late]} in _events(audit, Event.SILO_JOINED)
    if encryption != "none":  # a silo holding the key, not the (paused) key holder, wrapped the existing secret
        received = [e for e in _events(audit, Event.MESSAGE_RECEIVED) if e["kind"] == "key_bundle"]
        assert [(e["silo"], e["wrapped_for"]) for e in received][1:] == [(h.name, [late]) for h in cluster.hospitals[:2]
                                                                         if h.name != paused], received


def test_a_late_answer_refused_by_the_study_does_not_end_the_node(cluster) -> None:
    client, study, late, late_cfg, paused = _start_with_a_late_hospital(cluster, _spec(encryption="none",
                                                                                       late_join=False))
    _approve(cluster, late_cfg, study)
    cluster.wait_for_log(late, "no longer enrolling", timeout=240)
    _resume(cluster, paused)
    summary = cluster.wait_for(client, study, lambda st, s: st.state == "done", timeout=900)

    assert cluster.procs[late].poll() is None, cluster.log(late)[-3000:]
    assert late not in summary["silos"]
    assert cluster.log(late).count("no longer enrolling") == 1  # logged once, with the reason
    refusals = _events(cluster.root / "silos" / late / "state" / "audit.sqlite", Event.REFUSAL_RECEIVED)
    assert [(r["study"], r["request"], r["code"]) for r in refusals] == [(study, "answer proposal", "FAILED_PRECONDITION")]
    assert "late_join = false" in refusals[0]["reason"]
