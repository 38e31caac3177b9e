"""deploy/ and docs/deploy.md as an operator uses them: every `fedcare` command they contain parses
(its `--help` form, which click refuses on an unknown option), the coordinator's unit command really
serves and stops cleanly on the unit's KillSignal, systemd accepts the units and rates their hardening,
and the container image builds where a container engine runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedcare.demo import free_port
from fedcare.pki import init_ca, issue

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
INSTALLED = "/opt/fedcare/.venv/bin/fedcare"


def _unit_setting(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(f"{key}=")]


def _exec_start(unit: Path) -> list[str]:
    (command,) = _unit_setting(unit, "ExecStart")
    args = shlex.split(command)
    assert args[0] == INSTALLED, f"{unit.name} runs {args[0]}, not the venv's fedcare"
    return args[1:]


def _docs_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("fedcare ")]


def _compose_command() -> list[str]:
    match = re.search(r"command: (\[.*?\])", (DEPLOY / "compose.yaml").read_text(), flags=re.S)
    assert match, "compose.yaml: the coordinator's command is not a flow list"
    return json.loads(match.group(1))


def _dockerfile_cmd() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, flags=re.M)
    return json.loads(cmd)


def _parses(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedcare", *args, "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, f"fedcare {' '.join(args)}: {proc.stdout[-500:]}{proc.stderr[-1500:]}"
    for option in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert option in proc.stdout, f"fedcare {' '.join(args)}: {option} is not an option of this command"


COMMANDS = ([(f"{u.name} ExecStart", _exec_start(u)) for u in UNITS]
            + [(f"docs/deploy.md: fedcare {' '.join(c[:2])}", c) for c in _docs_commands()]
            + [("compose.yaml command", _compose_command()), ("Dockerfile CMD", _dockerfile_cmd())])


def test_there_is_a_unit_for_each_service_and_commands_in_the_docs() -> None:
    assert {u.name for u in UNITS} == {"fedcare-coordinator.service", "fedcare-silo.service"}
    subcommands = {tuple(c[:2]) for c in _docs_commands()}
    assert {("pki", "request"), ("pki", "sign"), ("coordinator", "serve"), ("silo", "run"), ("audit", "verify")} <= subcommands


@pytest.mark.parametrize("where, args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_deployment_command_parses(where: str, args: list[str]) -> None:
    _parses(args)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_units_are_hardened_and_run_unprivileged(unit: Path) -> None:
    settings = {line.split("=", 1)[0] for line in unit.read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert _unit_setting(unit, "User") == ["fedcare"]
    assert {"NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet", "RestrictAddressFamilies",
            "SystemCallFilter", "StateDirectory"} <= settings
    assert _unit_setting(unit, "KillSignal") == ["SIGINT"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax and exposure were not checked by systemd")
    # systemd checks that ExecStart is executable: point it at this environment's fedcare
    local = unit.read_text().replace(INSTALLED, str(Path(sys.executable).parent / "fedcare"))
    copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"test-{os.getpid()}-{unit.name}"
    copy.write_text(local)
    try:
        verify = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
        security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)], capture_output=True,
                                  text=True, timeout=60)
    finally:
        copy.unlink()
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert exposure <= 2.0, security.stdout[-2000:]


def test_the_coordinator_units_command_serves_and_stops_on_its_kill_signal(tmp_path: Path) -> None:
    """The unit's own command line, its paths moved into a temporary folder and SQLite for PostgreSQL."""
    pki = tmp_path / "pki"
    init_ca(pki)
    cert, key = issue(pki, name="coordinator", role="coordinator")
    port = free_port()
    moved = {"/etc/fedcare/pki/ca.pem": pki / "ca.pem", "/etc/fedcare/pki/coordinator.pem": cert,
             "/etc/fedcare/pki/coordinator.key": key, "/etc/fedcare/pki/crl.pem": pki / "crl.pem",
             "/var/lib/fedcare-coordinator": tmp_path / "state", "0.0.0.0:50051": f"127.0.0.1:{port}"}
    args = _exec_start(DEPLOY / "fedcare-coordinator.service")
    args = [str(moved.get(a, a)) for a in args]
    database = args.index("--database")
    del args[database:database + 2]
    proc = subprocess.Popen([sys.executable, "-m", "fedcare", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the coordinator did not listen within 120 s"
                time.sleep(0.5)
        proc.send_signal(getattr(signal, _unit_setting(DEPLOY / "fedcare-coordinator.service", "KillSignal")[0]))
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    assert (tmp_path / "state" / "audit.sqlite").exists()


def test_the_container_image_runs_unprivileged_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert user not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)
    if shutil.which("docker") is None:
        pytest.skip("no container engine (docker) here: the image build was not checked")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("docker is installed but its daemon is not reachable: the image build was not checked")
    build = subprocess.run(["docker", "build", "-q", "-f", str(DEPLOY / "Dockerfile"), str(ROOT)], capture_output=True,
                           text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-3000:]
    image = build.stdout.strip()
    inspect = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True,
                                        check=True).stdout)[0]["Config"]
    assert inspect["User"] == user and inspect["Healthcheck"]["Test"]
    run = subprocess.run(["docker", "run", "--rm", image, "--help"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "coordinator" in run.stdout


def test_the_container_image_copies_every_package_fedcare_installs() -> None:
    """The image installs from COPYed folders: a package added to pyproject.toml but not copied would
    install nothing and fail at `import` in the container (checked here without a container engine)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = set(re.findall(r"^COPY (\S+) \1$", (DEPLOY / "Dockerfile").read_text(), flags=re.M))
    assert packages <= copied, f"deploy/Dockerfile does not COPY {sorted(packages - copied)}"
