"""`fedcare console --tls-cert/--tls-key/--ca-cert/--crl`: the command serves HTTPS and a study
certificate signs its holder in; a half-given TLS option set is refused in one line."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fedcare import pki


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedcare(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedcare", "console", "--insecure", "--coordinator", "127.0.0.1:1",
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_console_command_serves_https_with_certificate_sign_in(tmp_path: Path, csrf_of) -> None:
    ca = tmp_path / "pki"
    pki.init_ca(ca)
    server_cert, server_key = pki.issue(ca, name="localhost", role="coordinator")
    pki.issue(ca, name="alice", role="researcher")
    port = _free_port()
    proc = _fedcare("--state-dir", str(tmp_path / "console"), "--listen", f"127.0.0.1:{port}",
                    "--tls-cert", str(server_cert), "--tls-key", str(server_key), "--ca-cert", str(ca / "ca.pem"),
                    "--crl", str(ca / "crl.pem"), cwd=tmp_path)
    try:
        context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
        context.load_cert_chain(ca / "researcher" / "alice.pem", ca / "researcher" / "alice.key")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, follow_redirects=False) as alice:
            deadline = time.monotonic() + 120
            while True:
                try:
                    page = alice.get("/login")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.communicate()[0]
                    assert time.monotonic() < deadline, "the console did not come up"
                    time.sleep(0.2)
            signed_in = alice.post("/login/certificate", data={"csrf_token": csrf_of(page.text)})
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_crl_without_https_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "crl.pem").write_text("")
    proc = _fedcare("--crl", str(tmp_path / "crl.pem"), "--state-dir", str(tmp_path / "c"), cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().splitlines() == ["error: --crl needs --tls-cert and --tls-key (certificate sign-in is over "
                                        "HTTPS only)"]
