from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from compliance import AuditLog, Event, ReportError, build_report, load_or_create_signing_key

from .conftest import STUDY, raw

HEADINGS = ["Summary", "Privacy budget spent (final ε per silo)", "Log verification",
            "Silo silo-a", "Silo silo-b", "What left the hospital", "Privacy budget (ε) over rounds",
            "Approvals and refusals", "Anomalies", "Reconciliation with the coordinator",
            "Coordinator coordinator"]


def _logs(federation) -> list[Path]:
    return [*federation.silo_logs.values(), federation.coordinator_log]


def test_html_report_says_what_happened(federation, tmp_path: Path) -> None:
    out = build_report(logs=_logs(federation), out=tmp_path / "r.html", fmt="html",
                       ledger=federation.ledger)
    html = out.read_text()
    for heading in HEADINGS:
        assert heading in html, heading
    # silo-b's round-3 update has no receipt: intact logs that disagree are not "all verified" (#16)
    assert "each log verifies, but they disagree" in html and "all 3 logs verified" not in html
    assert "Rounds recorded: 4 (1 to 4)" in html  # round 4 was refused by the budget check
    assert "6,120 bytes" in html  # 2 silos x 3 updates of 1010, 1020, 1030 bytes
    assert "data:image/png;base64," in html
    assert "1.500" in html  # final cumulative epsilon of each silo
    assert "budget_refused" in html and "study_approved" in html
    assert "update of round 3" in html and "sent by silo-b; coordinator logged no receipt" in html
    assert "authentication failure claiming to be silo-a" in html


def test_report_flags_a_tampered_log_and_escapes_log_text(federation, tmp_path: Path) -> None:
    with AuditLog.open(federation.silo_logs["silo-a"], node="silo-a",
                       signing_key=load_or_create_signing_key(federation.keys["silo-a"])) as log:
        log.append(Event.ROUND_SKIPPED, study=STUDY, round=5, reason="<script>alert(1)</script>")
    raw(federation.silo_logs["silo-a"]).execute("DELETE FROM entries WHERE idx = 3")
    html = build_report(logs=_logs(federation), out=tmp_path, fmt="html").read_text()
    assert "NO, see" in html and "entry 3: index 4 where 3 was expected" in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "No privacy ledger was supplied" in html


def test_filters_by_silo_and_study(federation, tmp_path: Path) -> None:
    html = build_report(logs=_logs(federation), out=tmp_path / "r.html", fmt="html",
                        silo="silo-a", study=STUDY, ledger=federation.ledger).read_text()
    assert "Silo silo-a" in html and "Silo silo-b" not in html
    html = build_report(logs=_logs(federation), out=tmp_path / "r.html", fmt="html",
                        study="no-such-study").read_text()
    assert "0 messages" in html


def test_pdf_report_has_the_same_sections(federation, tmp_path: Path) -> None:
    out = build_report(logs=_logs(federation), out=tmp_path / "report.pdf", fmt="pdf",
                       ledger=federation.ledger)
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed; checked the PDF header only")
    text = subprocess.run(["pdftotext", "-layout", str(out), "-"], check=True,
                          capture_output=True, text=True).stdout
    for heading in HEADINGS:
        assert heading in text, heading
    assert "page 1 of" in text


def test_bad_requests(tmp_path: Path, federation) -> None:
    with pytest.raises(ReportError, match="at least one audit log"):
        build_report(logs=[], out=tmp_path / "r.html", fmt="html")
    with pytest.raises(ReportError, match="'docx' is not supported"):
        build_report(logs=_logs(federation), out=tmp_path / "r.docx", fmt="docx")  # type: ignore[arg-type]


def test_a_lone_silo_log_is_reported_without_reconciliation(simple_log, tmp_path: Path) -> None:
    path, _ = simple_log
    html = build_report(logs=[path], out=tmp_path / "r.html", fmt="html").read_text()
    assert "Silo silo-a" in html and "no coordinator log supplied" in html
    assert "Not possible: the coordinator's log was not supplied" in html
