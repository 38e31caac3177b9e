"""The report checks logs against each other's witnessed heads and the registered keys, and
never says "all logs verified" next to reconciliation anomalies (#16 items 3 and 8)."""

from __future__ import annotations

import shutil
from pathlib import Path

from compliance import AuditLog, Event, SignedHead, build_report, load_or_create_signing_key, witness
from compliance.report_data import collect

from .conftest import message, snapshot


def _witnessed_pair(tmp_path: Path) -> tuple[Path, Path]:
    silo = AuditLog.open(tmp_path / "silo.db", node="silo-a", signing_key=load_or_create_signing_key(tmp_path / "s.pem"))
    coord = AuditLog.open(tmp_path / "coord.db", node="coordinator", role="coordinator",
                          signing_key=load_or_create_signing_key(tmp_path / "c.pem"))
    for r in (1, 2):
        up = message(r, "silo-a")
        silo.append(Event.MESSAGE_SENT, **up)
        coord.append(Event.MESSAGE_RECEIVED, silo="silo-a", **up)
        if r == 1:
            snapshot(silo.path, tmp_path / "older.db")  # 1 entry, validly signed
    witness(coord, SignedHead.of(silo))
    witness(silo, SignedHead.of(coord))
    silo.close()
    coord.close()
    return silo.path, coord.path


def test_report_fails_a_log_shorter_than_its_witnessed_head(tmp_path: Path) -> None:
    silo, coord = _witnessed_pair(tmp_path)
    assert collect(logs=[silo, coord]).all_verified
    shutil.copy(tmp_path / "older.db", silo)  # rolled back to the older signed state
    data = collect(logs=[silo, coord])
    assert not data.all_verified
    html = build_report(logs=[silo, coord], out=tmp_path / "r.html", fmt="html").read_text()
    assert "NO, see" in html and "this log holds" in html


def test_report_names_a_key_that_does_not_match_the_registered_one(tmp_path: Path) -> None:
    silo, coord = _witnessed_pair(tmp_path)
    data = collect(logs=[silo, coord], keys={"silo-a": "33" * 32})
    by_node = {log.node: log.verification for log in data.logs}
    assert not by_node["silo-a"].ok and "expected key 3333" in by_node["silo-a"].reason
    assert by_node["coordinator"].ok


def test_dollar_signs_in_a_study_id_do_not_break_the_plot(tmp_path: Path) -> None:
    from compliance import PrivacyLedger

    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.record(silo="silo-a", dataset="ehr", study="x$\\frac{1}{$y", round=1, epsilon=0.5, delta=1e-5,
                      noise_multiplier=1.0, sample_rate=0.1, steps=10, accountant="rdp")
    silo, coord = _witnessed_pair(tmp_path)
    html = build_report(logs=[silo, coord], out=tmp_path / "r.html", fmt="html", ledger=tmp_path / "l.db").read_text()
    assert "data:image/png;base64," in html
