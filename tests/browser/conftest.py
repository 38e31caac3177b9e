"""Real headless Chromium (Debian's `chromium` package) driven by Playwright, and consoles served by uvicorn.

No browser is downloaded: Playwright launches /usr/bin/chromium (scripts/install.sh --test installs it).
The multi-process federation comes from tests/e2e/conftest.py (its Cluster), loaded by path.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from fedcare.demo import free_port
from pipelines.synthetic import generate_federation

CHROMIUM = Path("/usr/bin/chromium")

_spec = importlib.util.spec_from_file_location("e2e_cluster", Path(__file__).parents[1] / "e2e" / "conftest.py")
e2e = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = e2e  # dataclasses look their module up while the class is made
_spec.loader.exec_module(e2e)  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def chromium():
    """A Playwright Chromium browser (Debian's), or a skip that says what to install."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("no /usr/bin/chromium: install Debian's chromium package (scripts/install.sh --test)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
                                    args=["--no-sandbox"])
        yield browser
        browser.close()


def serve_in_thread(app) -> Iterator[str]:  # noqa: ANN001 - a Starlette app
    """Serve ``app`` on a free loopback port until the generator is closed; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise AssertionError("the console did not start within 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def serve():
    """serve(app) -> base URL; stopped after the test."""
    running: list[Iterator[str]] = []

    def start(app) -> str:  # noqa: ANN001
        gen = serve_in_thread(app)
        running.append(gen)
        return next(gen)

    yield start
    for gen in running:
        gen.close()


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    return generate_federation(tmp_path_factory.mktemp("data"), n_hospitals=2, patients_per_hospital=200, seed=1)


@pytest.fixture
def cluster(tmp_path: Path, hospitals):
    c = e2e.Cluster(root=tmp_path, target=f"127.0.0.1:{free_port()}", hospitals=hospitals)
    yield c
    c.stop()
