"""A local Eclipse Mosquitto broker on a loopback port, for tests, benchmarks and demos (Debian's `mosquitto`).

Configured to keep every queued QoS 1 message of an offline persistent session (`max_queued_messages 0`:
no limit; Mosquitto's default of 1000 would drop messages sent while the silo is down). A hospital's
own broker needs the same setting (docs/streams.md).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONFIG = "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 100\n"


class BrokerError(RuntimeError):
    """Mosquitto is missing or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_broker(workdir: Path, *, timeout_s: float = 10.0) -> Iterator[int]:
    """Run mosquitto on a free loopback port (its config under `workdir`); yields the port; stops it after."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        raise BrokerError("mosquitto is not installed; install Debian's package (apt-get install mosquitto, as "
                          "scripts/install.sh --test does)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(CONFIG.format(port=port))
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None and proc.stderr else ""
                    raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout_s} s: {err}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
