"""Key registration and cross-checked logs from the command line (#16 item 3): `fedcare silo
init` prints the audit key to register; `audit verify` with several logs fails a log that is
shorter than a head its peer witnessed; `audit report --public-key` names a key that does not
match the registered one."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from compliance import AuditLog, Event, SignedHead, load_or_create_signing_key, public_key_hex, witness


def _fedcare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", *args], capture_output=True, text=True, timeout=120)


def test_silo_init_prints_the_key_that_signs_the_log(tmp_path: Path) -> None:
    (tmp_path / "fhir").mkdir()
    config = tmp_path / "node.toml"
    config.write_text(f'name = "st-mary"\ncoordinator = "127.0.0.1:1"\ninsecure = true\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[data]\ndataset = "ehr"\nfhir = ["{tmp_path / "fhir"}"]\n')
    proc = _fedcare("silo", "init", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    key = public_key_hex(load_or_create_signing_key(tmp_path / "state" / "audit-signing-key.pem"))
    assert key in proc.stdout and "st-mary" in proc.stdout
    assert (tmp_path / "state" / "audit.sqlite").exists()


def test_verify_and_report_check_witnessed_heads_and_registered_keys(tmp_path: Path) -> None:
    silo = AuditLog.open(tmp_path / "silo.sqlite", node="silo-a", signing_key=load_or_create_signing_key(tmp_path / "s.pem"))
    coord = AuditLog.open(tmp_path / "coord.sqlite", node="coordinator", role="coordinator",
                          signing_key=load_or_create_signing_key(tmp_path / "c.pem"))
    silo.append(Event.NODE_CONFIGURED)
    with sqlite3.connect(silo.path) as live, sqlite3.connect(tmp_path / "older.sqlite") as copy:
        live.backup(copy)
    silo.append(Event.ROUND_JOINED, study="s", round=1)
    witness(coord, SignedHead.of(silo))
    witness(silo, SignedHead.of(coord))
    silo_key = silo.public_key_hex
    silo.close()
    coord.close()

    ok = _fedcare("audit", "verify", str(silo.path), str(coord.path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = _fedcare("audit", "report", "--log", str(silo.path), "--log", str(coord.path), "--out",
                      str(tmp_path / "r.html"), "--public-key", f"silo-a={'44' * 32}")
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "NO, see" in html and "expected key 4444" in html
    report = _fedcare("audit", "report", "--log", str(silo.path), "--log", str(coord.path), "--out",
                      str(tmp_path / "r2.html"), "--public-key", f"silo-a={silo_key}")
    assert "yes, all 2 logs verified" in (tmp_path / "r2.html").read_text()

    shutil.copy(tmp_path / "older.sqlite", silo.path)  # rolled back to an older signed state
    Path(f"{silo.path}-wal").unlink(missing_ok=True)
    assert _fedcare("audit", "verify", str(silo.path)).returncode == 0  # alone it looks intact
    cut = _fedcare("audit", "verify", str(silo.path), str(coord.path))
    assert cut.returncode == 1 and "witnessed a signed head of 2 entries but this log holds 1" in cut.stderr
