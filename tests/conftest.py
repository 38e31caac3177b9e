"""Suite-wide settings: one version-0 model cache shared by every coordinator the tests start.

Building version 0 costs a child process that imports torch and MONAI (about 6 s); the same
model is submitted by dozens of tests, in this process and in coordinator processes they spawn
(which inherit the environment). The cache is keyed by everything the build depends on.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_made: list[str] = []


def pytest_configure(config) -> None:
    if not os.environ.get("FEDCARE_MODEL_CACHE"):
        folder = tempfile.mkdtemp(prefix="fedcare-model-cache-")
        _made.append(folder)
        os.environ["FEDCARE_MODEL_CACHE"] = folder


def pytest_unconfigure(config) -> None:
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(session, config, items) -> None:
    """Files with slow (multi-process) tests first, each file's tests kept together and in order.

    The suite runs on two workers a file each (`-n 2 --dist loadfile`, pyproject.toml); a
    minute-long end-to-end file handed out last would leave the other worker idle at the end.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: collection order otherwise
