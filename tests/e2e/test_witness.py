"""Witnessed heads between real processes (#16 item 3): the coordinator records every silo's
signed audit head and each silo the coordinator's; a silo log rolled back to an older signed
state passes `fedcare audit verify` alone but fails next to the coordinator's log. A node whose
audit log or state database is gone or broken refuses to start in one line."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from compliance import read_log, verify_logs
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec

from .specs import SECONDS_PER_ROUND_MODEL

pytestmark = pytest.mark.slow


def fedcare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", *args], capture_output=True, text=True, timeout=300)


def witnessed(log: Path, node: str) -> list[dict]:
    return [e.fields for e in read_log(log).entries if e.event == "head_witnessed" and e.fields["witnessed"] == node]


def test_witnessed_heads_catch_a_rolled_back_silo_log(cluster, tmp_path: Path) -> None:
    client = cluster.start_coordinator()
    for h in cluster.hospitals:
        cluster.start_silo(h)
    # rounds of seconds: the older copy below is taken before the study ends (with the default model's
    # short rounds it came after the final exchange of heads, so nothing was cut)
    spec = StudySpec(name="witness", model=SECONDS_PER_ROUND_MODEL,
                     training=TrainingSpec(rounds=3, local_epochs=1, min_silos=2, expected_silos=3,
                                           round_timeout_s=120),
                     privacy=PrivacySpec(dp=False, encryption="none"))
    study_id = client.submit(spec)
    silo = cluster.hospitals[0].name
    silo_log = cluster.root / "silos" / silo / "state" / "audit.sqlite"
    coord_log = cluster.root / "coordinator" / "audit.sqlite"
    cluster.wait_for(client, study_id, lambda st, s: len(s["rounds"]) > 1 and s["rounds"][1]["metrics"], timeout=300)
    older = tmp_path / "older.sqlite"
    with sqlite3.connect(silo_log) as live, sqlite3.connect(older) as copy:
        live.backup(copy)  # an older state the node itself signed (what its -wal file keeps)
    assert client.status(study_id)[0].state == "running", "the study ended before the older copy was taken"
    cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=400)
    cluster.wait_for_log(silo, "finished at this silo")
    cluster.stop()

    for h in cluster.hospitals:
        heads = witnessed(coord_log, h.name)
        assert heads, f"the coordinator witnessed no head of {h.name}"
        assert witnessed(cluster.root / "silos" / h.name / "state" / "audit.sqlite", "coordinator")
    logs = [cluster.root / "silos" / h.name / "state" / "audit.sqlite" for h in cluster.hospitals] + [coord_log]
    honest = verify_logs([read_log(p) for p in logs])
    assert all(r.ok for r in honest), [r.reason for r in honest]
    assert all(r.witnessed > 0 for r in honest)

    older.replace(silo_log)  # the rollback of #16: validly signed, only shorter
    for suffix in ("-wal", "-shm"):
        Path(f"{silo_log}{suffix}").unlink(missing_ok=True)
    alone = fedcare("audit", "verify", str(silo_log))
    assert alone.returncode == 0, alone.stdout + alone.stderr  # the old check cannot see it
    checked = verify_logs([read_log(silo_log), read_log(coord_log)])[0]
    assert not checked.ok
    assert "witnessed a signed head of" in checked.reason and "this log holds" in checked.reason

    # A coordinator whose audit log is gone refuses to start rather than begin a new one.
    coord_log.rename(tmp_path / "moved-away.sqlite")
    restart = fedcare("coordinator", "serve", "--state-dir", str(cluster.root / "coordinator"), "--listen",
                      cluster.target, "--insecure")
    assert restart.returncode == 2 and "is missing, but" in restart.stderr, restart.stderr
    assert "Traceback" not in restart.stderr and not coord_log.exists()


def test_empty_or_corrupt_state_database_refuses_to_start(tmp_path: Path) -> None:
    from fedcare.demo import free_port

    for content in (b"", b"\x00garbage" * 512):
        state = tmp_path / f"state-{len(content)}"
        state.mkdir()
        (state / "coordinator.sqlite").write_bytes(content)
        proc = fedcare("coordinator", "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}",
                       "--insecure")
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "state database" in lines[0] and "Restore it from backup" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert (state / "coordinator.sqlite").read_bytes() == content  # nothing overwritten
