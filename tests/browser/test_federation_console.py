"""A study run from the browsers over a real federation (coordinator and two silos as processes, the two
consoles as `fedcare` processes): a researcher submits it from the form and watches its rounds arrive,
the site admin of the manually-approving hospital approves it in the site console, the silo then trains,
and the researcher downloads the results."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from compliance.audit import read_log
from console.researcher import accounts_in
from console.site import accounts_of
from fedcare.demo import free_port
from silo_node.config import NodeConfig

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout} s") from None
            time.sleep(0.5)


def _sign_in(page, base: str, user: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_submit_approve_watch_and_download_from_the_browser(chromium, cluster, tmp_path):
    cluster.start_coordinator()
    manual, auto = cluster.hospitals
    manual_cfg = cluster.start_silo(manual, approval={"mode": "manual"})
    cluster.start_silo(auto)
    node = NodeConfig.load(manual_cfg)
    deadline = time.monotonic() + 120
    while not (node.state_dir / "audit.sqlite").exists():  # the node creates its log as it starts
        assert time.monotonic() < deadline, cluster.log(manual.name)[-2000:]
        time.sleep(0.5)
    accounts_of(node).add("it-admin", PASSWORD, "site-admin")
    console_dir = tmp_path / "console"
    accounts_in(console_dir).add("dr-who", PASSWORD, "researcher")
    site, researcher = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster._spawn("site-console", ["silo", "console", "--config", str(manual_cfg), "--listen", site])
    cluster._spawn("researcher-console", ["console", "--coordinator", cluster.target, "--insecure", "--state-dir",
                                          str(console_dir), "--listen", researcher,
                                          "--log", str(tmp_path / "coordinator" / "audit.sqlite")])
    _wait_http(f"http://{site}/login")
    _wait_http(f"http://{researcher}/login")

    # The researcher submits a small study from the form.
    rbase = f"http://{researcher}"
    rpage = chromium.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    _sign_in(rpage, rbase, "dr-who")
    rpage.goto(f"{rbase}/studies/new")
    rpage.fill("input[name=name]", "hf-from-the-browser")
    for modality in ("image", "signal"):
        rpage.uncheck(f"input[name=modalities][value={modality}]")
    for field, value in (("training.rounds", "2"), ("training.min_silos", "2"), ("training.local_epochs", "1"),
                         ("privacy.target_epsilon", "8")):
        rpage.fill(f"input[name='{field}']", value)
    rpage.select_option("select[name='privacy.encryption']", "none")
    rpage.click("form[action='/studies/new'] button[type=submit]")
    rpage.wait_for_url(f"{rbase}/studies/*", timeout=600_000)
    study_id = rpage.url.rsplit("/", 1)[1]
    assert rpage.get_attribute("#status", "data-state") in ("enrolling", "keygen", "running")

    # The manual hospital's admin approves it once the proposal reaches the node.
    sbase = f"http://{site}"
    spage = chromium.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    _sign_in(spage, sbase, "it-admin")
    deadline = time.monotonic() + 300
    while not spage.locator(f"a[href='/proposals/{study_id}']").count():
        assert time.monotonic() < deadline, "the proposal never reached the manual node"
        time.sleep(2)
        spage.reload()
    spage.click(f"a[href='/proposals/{study_id}']")
    assert "ehr" in spage.inner_text("main") and "target ε 8.0" in spage.inner_text("main")
    assert "Who else takes part" in spage.inner_text("#others")  # Task.other_silos, as the coordinator told it
    spage.screenshot(path=tmp_path / "site-proposal.png", full_page=True)
    spage.fill("input[name=reason]", "IRB approval 2026-14")
    spage.click("button[value=approve]")
    spage.wait_for_url(f"{sbase}/?done=*")
    assert "approved" in spage.inner_text("main")

    # Rounds arrive on the researcher's page without a reload (server-sent events).
    # at least one aggregated round (a fast model can aggregate round 2 before the page hears of round 1)
    deadline = time.monotonic() + 900
    while int(rpage.get_attribute("#status", "data-round") or 0) < 1:  # the page's CSP forbids wait_for_function's eval
        assert time.monotonic() < deadline, "no aggregated round reached the researcher's page"
        rpage.wait_for_timeout(200)
    rpage.screenshot(path=tmp_path / "study-round-1.png", full_page=True)
    rpage.wait_for_selector("#status[data-state='done']", timeout=900_000)
    assert rpage.locator("#chart-auroc canvas").count() == 1
    assert "Released model" in rpage.inner_text("#final")
    rpage.screenshot(path=tmp_path / "study-done.png", full_page=True)
    listing = chromium.new_context().new_page()  # the study list comes from the coordinator (ListStudies)
    _sign_in(listing, rbase, "dr-who")
    assert listing.locator(f"a[href='/studies/{study_id}']").count() == 1 and "done" in listing.inner_text("main")
    with rpage.expect_download(timeout=300_000) as download:
        rpage.click("#download a")
    archive = tmp_path / "results.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        summary = json.loads(z.read(f"{study_id}/summary.json"))
    assert {f"{study_id}/final_model.pt", f"{study_id}/final_model.sha256"} <= names
    assert summary["state"] == "done" and len(summary["rounds"]) == 3

    # The manual silo trained after the console's approval, and its log says who approved.
    entries = read_log(node.state_dir / "audit.sqlite").entries
    approved = [e for e in entries if e.event == "study_approved" and e.fields["study"] == study_id]
    assert approved and approved[0].fields["by"] == "it-admin (site console)"
    assert any(e.event == "round_joined" and e.fields.get("study") == study_id for e in entries)
    assert [e for e in entries if e.event == "console_decision"][0].fields["reason"] == "IRB approval 2026-14"
