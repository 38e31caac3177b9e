"""`fedcare console --tls-cert/--tls-key/--ca-cert/--crl`: the command serves HTTPS and a study
certificate signs its holder in; a half-given TLS option set is refused in one line."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fedcare import pki
from fedcare.demo import free_port



def _fedcare(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedcare", "console", "--insecure", "--coordinator", "127.0.0.1:1",
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_console_command_serves_https_with_certificate_sign_in(tmp_path: Path, csrf_of) -> None:
    ca = tmp_path / "pki"
    pki.init_ca(ca)
    server_cert, server_key = pki.issue(ca, name="localhost", role="coordinator")
    pki.issue(ca, name="alice", role="researcher")
    port = free_port()
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


def test_add_user_pins_a_site_certificate_and_refuses_to_pin_on_the_researcher_console(tmp_path: Path,
                                                                                        node_config) -> None:
    from console.accounts import certificate_sha256
    from console.site import accounts_of

    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cert, _ = pki.issue(ca, name="it-admin", role="researcher")
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(f'name = "st-mary"\ncoordinator = "127.0.0.1:1"\nstate_dir = "{node_config.state_dir}"\n'
                         f'insecure = true\n[data]\ndataset = "st-mary-2026"\nfhir = ["{tmp_path}"]\n')
    env = {"FEDCARE_CONSOLE_PASSWORD": "correct horse battery"}
    pin = subprocess.run([sys.executable, "-m", "fedcare", "console", "add-user", "it-admin", "--role", "site-admin",
                          "--config", str(node_toml), "--certificate", str(cert)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env})
    assert pin.returncode == 0, pin.stderr
    [account] = accounts_of(node_config).users()
    assert account.certificate_sha256 == certificate_sha256(cert.read_bytes())
    refused = subprocess.run([sys.executable, "-m", "fedcare", "console", "add-user", "bob", "--role", "researcher",
                              "--state-dir", str(tmp_path / "rc"), "--certificate", str(cert)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert refused.returncode == 2 and "--certificate pins a site console user" in refused.stderr
