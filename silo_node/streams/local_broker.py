"""A local Eclipse Mosquitto broker on a loopback port, for tests, benchmarks and demos (Debian's `mosquitto`).

Configured to keep every queued QoS 1 message of an offline persistent session (`max_queued_messages 0`:
no limit; Mosquitto's default of 1000 would drop messages sent while the silo is down). A hospital's
own broker needs the same setting (docs/streams.md).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# `user`: run as whoever started it (as root, mosquitto would switch to its own user, who cannot read the test's files)
CONFIG = ("listener {port} 127.0.0.1\nuser {user}\npersistence false\nmax_queued_messages 0\n"
          "max_inflight_messages 100\n")


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS: its certificate and key, and the CA of the clients' certificates (`require_client`)."""

    cert: Path
    key: Path
    ca_cert: Path
    require_client: bool = False


class BrokerError(RuntimeError):
    """Mosquitto is missing or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _executable(name: str) -> str:
    exe = shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                      if p.exists()), None)
    if exe is None:
        raise BrokerError(f"{name} is not installed; install Debian's package (apt-get install mosquitto, as "
                          "scripts/install.sh --test does)")
    return exe


def _password_file(workdir: Path, users: dict[str, str]) -> Path:
    """Mosquitto's password file (salted PBKDF2 hashes), written by its own `mosquitto_passwd`."""
    path = workdir / "mosquitto.passwd"
    path.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
    path.chmod(0o600)
    subprocess.run([_executable("mosquitto_passwd"), "-U", str(path)], check=True, capture_output=True)
    return path


@contextmanager
def local_broker(workdir: Path, *, timeout_s: float = 10.0, tls: BrokerTls | None = None,
                 users: dict[str, str] | None = None) -> Iterator[int]:
    """Run mosquitto on a free loopback port (its config under `workdir`); yields the port; stops it after.

    Anonymous clients are allowed unless `users` (name -> password) are given; with `tls` it speaks only TLS."""
    exe = _executable("mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    text = CONFIG.format(port=port, user=pwd.getpwuid(os.getuid()).pw_name)
    if users:
        text += f"allow_anonymous false\npassword_file {_password_file(workdir, users)}\n"
    else:
        text += "allow_anonymous true\n"
    if tls is not None:
        text += (f"cafile {tls.ca_cert}\ncertfile {tls.cert}\nkeyfile {tls.key}\n"
                 f"require_certificate {'true' if tls.require_client else 'false'}\n")
    conf.write_text(text)
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
