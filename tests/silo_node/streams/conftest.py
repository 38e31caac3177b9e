"""A real Eclipse Mosquitto broker per test (Debian's `mosquitto`), on a free loopback port, no root needed."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """The port of a running broker that keeps every queued QoS 1 message of an offline persistent session."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto not installed: apt-get install mosquitto (scripts/install.sh does)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 100\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def sampled_observation(start: datetime, values: list[float], *, period_ms: float = 1000.0) -> bytes:
    """A FHIR R4 heart-rate Observation carrying `values` as valueSampledData, `period_ms` apart."""
    return json.dumps({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "effectiveDateTime": start.astimezone(timezone.utc).isoformat(),
        "valueSampledData": {"origin": {"value": 0, "unit": "/min", "system": "http://unitsofmeasure.org",
                                        "code": "/min"}, "period": period_ms, "dimensions": 1,
                             "data": " ".join(f"{v:g}" for v in values)},
    }).encode()
