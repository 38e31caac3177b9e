"""An auditor opens, in a real Chromium, the anomaly an edited silo log entry creates."""

from __future__ import annotations

import sqlite3

import grpc

from compliance.audit import Event
from compliance.node_log import AUDIT_LOG_FILE, open_node_log
from console.audit_view import AuditSources
from console.researcher import accounts_in, create_app
from fedcare.researcher import ResearcherClient

PASSWORD = "correct horse battery"


def _federation_logs(root):
    """A silo's and the coordinator's real logs of two updates; then one silo entry is edited on disk."""
    silo_dir, coord_dir = root / "st-mary", root / "coordinator"
    with open_node_log(silo_dir, node="st-mary", role="silo") as silo, \
            open_node_log(coord_dir, node="coordinator", role="coordinator") as coord:
        for rnd in (1, 2):
            fields = {"kind": "update", "size": 1204 * rnd, "sha256": f"{rnd:02d}" * 32, "round": rnd, "study": "s-1"}
            silo.append(Event.MESSAGE_SENT, **fields)
            coord.append(Event.MESSAGE_RECEIVED, silo="st-mary", **fields)
    # Someone with the file rewrites the silo's record of round 2's update (a different hash).
    with sqlite3.connect(silo_dir / AUDIT_LOG_FILE) as db:
        db.execute("DROP TRIGGER entries_no_update")
        db.execute("UPDATE entries SET fields = replace(fields, ?, ?) WHERE idx = 2", ("02" * 32, "ff" * 32))
    return silo_dir / AUDIT_LOG_FILE, coord_dir / AUDIT_LOG_FILE


def test_auditor_opens_the_anomaly_of_an_edited_entry(chromium, serve, tmp_path):
    silo_log, coord_log = _federation_logs(tmp_path)
    console_dir = tmp_path / "console"
    accounts_in(console_dir).add("officer", PASSWORD, "auditor")
    target = "127.0.0.1:1"
    app = create_app(ResearcherClient(grpc.insecure_channel(target), target=target), state_dir=console_dir,
                     coordinator=target, audit_sources=AuditSources(logs=[silo_log, coord_log]))
    base = serve(app)
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/login")
    page.fill("input[name=user]", "officer")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{base}/audit")
    assert "TAMPERED" in page.inner_text("table") and "entry 2" in page.inner_text("table")
    anomalies = page.locator("a.anomaly")
    assert anomalies.count() == 2  # the silo's edited send and the coordinator's now unmatched receipt
    page.screenshot(path=tmp_path / "audit-overview.png", full_page=True)
    page.locator("a.anomaly", has_text="st-mary: entry 2").click()
    page.wait_for_url("**/audit/logs/st-mary?entry=2#entry-2")
    marked = page.locator("tr.marked")
    assert marked.count() == 1 and "ff" * 32 in marked.inner_text() and marked.get_attribute("id") == "entry-2"
    page.screenshot(path=tmp_path / "audit-anomaly-entry.png", full_page=True)
