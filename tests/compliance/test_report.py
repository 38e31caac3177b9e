from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from compliance import AuditLog, Event, ReportError, build_report, load_or_create_signing_key

from .conftest import STUDY, raw

HEADINGS = ["Summary", "Privacy budget spent against each cap", "What each kind of message is", "Log verification",
            "Silo silo-a", "Silo silo-b", "What left the hospital", "Privacy budget (ε) over rounds",
            "Approvals and refusals", "Anomalies", "Reconciliation with the coordinator",
            "The coordinator"]


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
    # 3 rounds aggregated; silo-b's round-4 refusal by its budget check is not a training round (#21)
    assert "Training rounds: 3 (1 to 3)" in html
    assert "6,120 bytes" in html  # 2 silos x 3 updates of 1010, 1020, 1030 bytes
    assert "data:image/png;base64," in html
    assert "1.50" in html  # final cumulative epsilon of each silo
    assert "budget refused" in html and "study approved" in html
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


# --- a report a compliance officer can read (#21) -----------------------------------------------------
LONG_STUDY = "heart-failure-multimodal-2026-university-hospitals-3f2a1b2c"
HOSPITALS = ("st-mary-university-hospital", "st-luke-regional-medical-centre")


@pytest.fixture
def realistic(tmp_path: Path) -> tuple[list[Path], Path]:
    """A 5-round encrypted DP study across two hospitals with long names, written through the API."""
    from compliance import PrivacyLedger

    coord = AuditLog.open(tmp_path / "coordinator.audit.sqlite", node="coordinator", role="coordinator",
                          signing_key=load_or_create_signing_key(tmp_path / "coordinator.pem"))
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    logs = []
    for h in HOSPITALS:
        log = AuditLog.open(tmp_path / f"{h}.audit.sqlite", node=h, signing_key=load_or_create_signing_key(tmp_path / f"{h}.pem"))
        log.append(Event.NODE_CONFIGURED, silo=h, dataset=f"{h}-cardiology", epsilon_cap=10.0, approval="manual")
        log.append(Event.STUDY_RECEIVED, study=LONG_STUDY, spec_sha256="cd" * 32)
        log.append(Event.STUDY_APPROVED, study=LONG_STUDY, by="it-officer-7", reason="IRB 2026-114", spec_sha256="cd" * 32)
        sends = [("key_bundle", 0, None)] + [(k, r, 0.7 * r + 0.123456789012345) for r in range(1, 6)
                                             for k in ("update", "metrics")] + [("final_model", 6, None)]
        for kind, rnd, eps in sends:
            fields = {"kind": kind, "round": rnd, "size": 123_456 + rnd, "sha256": f"{rnd:02d}" * 32, "study": LONG_STUDY}
            log.append(Event.MESSAGE_SENT, **fields, **({"epsilon": eps} if kind == "update" else {}))
            coord.append(Event.MESSAGE_RECEIVED, silo=h, **fields)
            if kind == "update":
                ledger.record(silo=h, dataset=f"{h}-cardiology", study=LONG_STUDY, round=rnd, epsilon=eps, delta=1e-5,
                              noise_multiplier=1.0987654321098765, sample_rate=0.0123456789012, steps=37 * rnd,
                              accountant="rdp")
        log.close()
        logs.append(tmp_path / f"{h}.audit.sqlite")
    for r in range(1, 6):
        coord.append(Event.AGGREGATION, study=LONG_STUDY, round=r, rule="fedavg", accepted=list(HOSPITALS), refused={},
                     encrypted=True)
    coord.append(Event.MODEL_RELEASED, study=LONG_STUDY, version=5, model_sha256="ef" * 32, metric="auroc",
                 value=0.81234567890123)
    coord.close()
    ledger.close()
    return [*logs, tmp_path / "coordinator.audit.sqlite"], tmp_path / "ledger.sqlite"


def _words(pdf: Path) -> tuple[list[tuple[float, float, str]], str]:
    """(page width, right edge, word) of every word in the PDF's text layer, and the plain text."""
    import html as html_lib
    import re

    bbox = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    words = []
    for page in re.finditer(r'<page width="([\d.]+)"[^>]*>(.*?)</page>', bbox, flags=re.S):
        width = float(page.group(1))
        for x_max, word in re.findall(r'<word xMin="[\d.]+" yMin="[\d.]+" xMax="([\d.]+)" yMax="[\d.]+">(.*?)</word>',
                                      page.group(2)):
            words.append((width, float(x_max), html_lib.unescape(word)))
    text = subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    return words, " ".join(text.split())


def test_pdf_tables_fit_the_page_and_open_with_a_plain_summary(realistic, tmp_path: Path) -> None:
    logs, ledger = realistic
    pdf = build_report(logs=logs, out=tmp_path / "report.pdf", fmt="pdf", study=LONG_STUDY, ledger=[ledger])
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils, installed by scripts/install.sh --test) is needed to read the PDF")
    words, text = _words(pdf)
    right_margin = 14 * 72 / 25.4  # the template's @page margin, in points
    past = [(word, round(x_max), round(width - right_margin)) for width, x_max, word in words
            if x_max > width - right_margin + 1]
    assert past == [], f"text beyond the right margin (word, right edge, margin at): {past[:10]}"
    # and no column was squeezed until its words split: headers and short values are whole words
    whole = {w for _, _, w in words}
    for word in ("Accountant", "Entries", "Result", "intact", "coordinator", "Round", "Steps", "multiplier",
                 "update", "metrics", "DP-noised,", "encrypted", "rdp", "Protection"):
        assert word in whole, f"{word!r} is split across lines in a table"
    assert f"This report covers study {LONG_STUDY}: 2 hospitals" in text
    assert "All 3 audit logs are intact" in text
    assert "Over 5 training rounds" in text and "10 of them model updates" in text
    assert "All updates were DP-noised and all were encrypted" in text
    assert "Every hospital's privacy spend stayed within its cap" in text
    assert "spent ε = 3.62 of 10" in text
    assert "Training rounds: 5 (1 to 5)" in text
    assert "DP-noised, encrypted" in text  # each update row says how it was protected
    assert "The coordinator" in text and "Coordinator coordinator" not in text
    for raw_text in ("refused={}", "accepted=[", "{'", "0.123456789", "1.0987654321"):
        assert raw_text not in text, raw_text


def test_a_spend_over_the_cap_is_called_out(realistic, tmp_path: Path) -> None:
    logs, ledger = realistic
    with AuditLog.open(logs[0], node=HOSPITALS[0], signing_key=load_or_create_signing_key(tmp_path / f"{HOSPITALS[0]}.pem")) as log:
        log.append(Event.NODE_CONFIGURED, silo=HOSPITALS[0], dataset=f"{HOSPITALS[0]}-cardiology", epsilon_cap=2.0)
    html = build_report(logs=logs, out=tmp_path / "r.html", fmt="html", study=LONG_STUDY, ledger=[ledger]).read_text()
    assert f"Privacy budget EXCEEDED at {HOSPITALS[0]} (3.62 against a cap of 2)" in html
    assert "NO, exceeded" in html
