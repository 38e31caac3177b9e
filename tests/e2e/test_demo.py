"""`fedcare demo` as a newcomer runs it: separate processes, DP + CKKS, a results folder a
researcher and a compliance officer can use (summary.json, final model, verified logs, report)."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _fedcare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    proc = _fedcare("demo", "--rounds", "2", "--patients", "80", "--out", "results", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "results"


def test_summary_follows_the_contract(demo_out: Path) -> None:
    summary = json.loads((demo_out / "summary.json").read_text())
    assert len(summary["silos"]) == 3
    assert summary["joined_round"] == {s: 1 for s in summary["silos"]}  # the demo waited for every silo it started
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    for r in summary["rounds"]:
        assert set(r["metrics"]) >= {"auroc", "accuracy", "loss"}
        assert set(r["bytes_up"]) == set(r["bytes_down"]) == set(r["epsilon"]) == set(summary["silos"])
    for r in summary["rounds"][1:]:
        assert all(v > 10_000 for v in r["bytes_up"].values())  # a CKKS update really crossed the wire
        assert all(e is not None and e > 0 for e in r["epsilon"].values())
    assert set(summary["final"]) >= {"auroc", "accuracy"}
    assert summary["privacy"]["encryption"] == "ckks-exact" and summary["privacy"]["dp"] is True
    assert (demo_out / "final_model.pt").stat().st_size > 0


def test_logs_verify_and_the_report_has_its_sections(demo_out: Path) -> None:
    logs = sorted((demo_out / "audit").glob("*.audit.sqlite"))
    assert len(logs) == 4  # the coordinator and three silos
    for log in logs:
        proc = _fedcare("audit", "verify", str(log), cwd=demo_out)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    text = subprocess.run(["pdftotext", str(demo_out / "audit" / "report.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    for heading in ("Summary", "Privacy budget", "Log verification", "Reconciliation"):
        assert heading in text, f"report lacks {heading!r}"
    assert "Anomalies found: none" in text


def test_verify_catches_an_edited_demo_log(demo_out: Path, tmp_path: Path) -> None:
    log = tmp_path / "edited.sqlite"
    shutil.copy(next((demo_out / "audit").glob("st-*.audit.sqlite")), log)
    with sqlite3.connect(log) as db:  # an insider edits entry 4 behind the log's back
        db.execute("DROP TRIGGER entries_no_update")
        db.execute("""UPDATE entries SET fields = '{"edited": true}' WHERE idx = 4""")
    proc = _fedcare("audit", "verify", str(log), cwd=tmp_path)
    assert proc.returncode == 1 and "TAMPERED" in proc.stdout + proc.stderr and "entry 4" in proc.stdout + proc.stderr
