"""A user's mistake ends in one clear line on stderr and exit status 2, never a traceback."""

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fedcare.demo import free_port


def _fedcare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcare", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _one_clear_line(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and "Warning" not in line and "warn" not in line and not line[:4].isdigit()]  # log records
    text = " ".join(lines)
    assert text.startswith("error:"), proc.stderr
    for word in expected:
        assert word in text, text


NODE = """name = "st-mary"
coordinator = "127.0.0.1:{port}"
state_dir = "state"
insecure = true
max_retries = 0
[data]
dataset = "st-mary-ehr"
fhir = ["fhir"]
"""


@pytest.mark.parametrize(
    "text, words",
    [
        ('name = "st-mary"\ncoordinator = "x:1"\nstate_dir = "s"\ninsecure = true\n', ["node config", "data", "Field required"]),
        (NODE.replace('name = "st-mary"', 'name = "bad name!"'), ["node config", "name"]),
        (NODE.replace("insecure = true", ""), ["node config", "tls"]),
        (NODE.replace("max_retries = 0", "max_retries = -1"), ["node config", "max_retries"]),
        ("name = = 1", ["node config", "not valid TOML"]),
    ],
)
def test_bad_node_config(tmp_path: Path, text: str, words: list[str]) -> None:
    (tmp_path / "node.toml").write_text(text.format(port=1))
    _one_clear_line(_fedcare("silo", "run", "--config", "node.toml", cwd=tmp_path), *words)


def test_missing_node_config(tmp_path: Path) -> None:
    _one_clear_line(_fedcare("silo", "run", "--config", "nope.toml", cwd=tmp_path), "nope.toml", "not found")


def test_bad_study_spec(tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text('name = "hf"\n[training]\nrounds = 0\n')
    _one_clear_line(_fedcare("study", "submit", "study.toml", cwd=tmp_path), "study.toml", "training.rounds")


def test_unreachable_coordinator_for_a_researcher(tmp_path: Path) -> None:
    proc = _fedcare("study", "--insecure", "status", "some-study", "--coordinator", f"127.0.0.1:{free_port()}",
                    cwd=tmp_path)
    _one_clear_line(proc, "unreachable")


def test_unreachable_coordinator_for_a_silo(tmp_path: Path) -> None:
    (tmp_path / "fhir").mkdir()
    (tmp_path / "node.toml").write_text(NODE.format(port=free_port()))
    # A node waits for its coordinator as long as it takes; a script gives it a limit.
    _one_clear_line(_fedcare("silo", "run", "--config", "node.toml", "--max-retry-s", "1", cwd=tmp_path), "unreachable",
                    "gave up")


def test_tampered_log_exits_non_zero_and_names_the_file(tmp_path: Path) -> None:
    proc = _fedcare("audit", "verify", "missing.sqlite", cwd=tmp_path)
    _one_clear_line(proc, "missing.sqlite")


def test_researcher_needs_certificates_or_an_explicit_insecure(tmp_path: Path) -> None:
    _one_clear_line(_fedcare("study", "status", "some-study", cwd=tmp_path), "--ca-cert", "--insecure")


# --- friction points of issue #21: each refused in one line, before any slow work ------------------------
def test_listen_that_is_not_host_port(tmp_path: Path) -> None:
    proc = _fedcare("coordinator", "serve", "--state-dir", "state", "--listen", "foo", "--insecure", cwd=tmp_path)
    _one_clear_line(proc, "--listen 'foo'", "HOST:PORT")


def test_listen_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _fedcare("coordinator", "serve", "--state-dir", "state", "--listen", f"127.0.0.1:{port}", "--insecure",
                        cwd=tmp_path)
    _one_clear_line(proc, f"port {port} is already in use", "choose another port")


def test_regional_listen_on_an_address_not_of_this_machine(tmp_path: Path) -> None:
    proc = _fedcare("coordinator", "regional", "--name", "east", "--upstream", "127.0.0.1:1", "--state-dir", "s",
                    "--listen", "192.0.2.1:50061", "--insecure", cwd=tmp_path)
    _one_clear_line(proc, "192.0.2.1 is not an address of this machine")


def test_a_limit_past_its_ceiling_is_refused_at_start(tmp_path: Path) -> None:
    proc = _fedcare("coordinator", "serve", "--state-dir", "state", "--listen", f"127.0.0.1:{free_port()}",
                    "--insecure", "--limit", "reason_chars=500", "--limit", "metrics=5000", cwd=tmp_path)
    _one_clear_line(proc, "--limit", "metrics", "less than or equal to 1000")
    assert not (tmp_path / "state").exists()
    proc = _fedcare("coordinator", "regional", "--name", "east", "--upstream", "127.0.0.1:1", "--state-dir", "s",
                    "--listen", f"127.0.0.1:{free_port()}", "--insecure", "--limit", "reasons=5", cwd=tmp_path)
    _one_clear_line(proc, "--limit reasons=5", "reason_chars")


def test_public_key_that_is_not_one(tmp_path: Path) -> None:
    _one_clear_line(_fedcare("audit", "verify", "--public-key", "00ff", _a_log(tmp_path, "st-mary"), cwd=tmp_path),
                    "--public-key 00ff", "64 hex digits")


def _a_log(folder: Path, node: str) -> str:
    from compliance import AuditLog, Event, load_or_create_signing_key

    path = folder / f"{node}.audit.sqlite"
    with AuditLog.open(path, node=node, signing_key=load_or_create_signing_key(folder / f"{node}.key")) as log:
        log.append(Event.STUDY_RECEIVED, study="s1")
    return str(path)


def test_audit_verify_takes_several_logs_and_fails_if_any_is_altered(tmp_path: Path) -> None:
    logs = [_a_log(tmp_path, "st-mary"), _a_log(tmp_path, "st-luke")]
    proc = _fedcare("audit", "verify", *logs, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("OK") == 2 and "st-luke" in proc.stdout and "st-mary" in proc.stdout
    with sqlite3.connect(logs[1]) as db:
        db.execute("DROP TRIGGER entries_no_update")
        db.execute("""UPDATE entries SET fields = '{"edited": true}' WHERE idx = (SELECT MAX(idx) FROM entries)""")
    proc = _fedcare("audit", "verify", *logs, cwd=tmp_path)
    assert proc.returncode == 1
    assert "OK" in proc.stdout and "st-mary" in proc.stdout
    assert "TAMPERED" in proc.stderr and "st-luke.audit.sqlite" in proc.stderr and "Traceback" not in proc.stderr


def test_ingest_of_a_missing_folder(tmp_path: Path) -> None:
    proc = _fedcare("silo", "ingest", "--fhir", "/nope", "--out", "ingest", cwd=tmp_path)
    _one_clear_line(proc, "--fhir /nope", "no such file or folder")
    assert not (tmp_path / "ingest").exists()


@pytest.mark.parametrize("args, words", [
    (["--rule", "nope"], ["--rule 'nope'", "fedavg"]),
    (["--epsilon", "-1"], ["--epsilon -1.0", "greater than 0"]),
    (["--encryption", "rot13"], ["--encryption 'rot13'", "ckks-exact"]),
    (["--malicious", "0.5"], ["--malicious needs --attack"]),
    (["--attack", "sign_flip"], ["--attack needs --malicious"]),
])
def test_demo_refuses_bad_options_before_generating_data(tmp_path: Path, args: list[str], words: list[str]) -> None:
    proc = _fedcare("demo", *args, "--out", "results", cwd=tmp_path)
    _one_clear_line(proc, *words)
    assert not (tmp_path / "results").exists()  # refused before the results folder and its data were made


def _commands(group, path=()):  # noqa: ANN001, ANN202 - click groups and commands
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name)) if hasattr(command, "commands") else [((*path, name), command)]


def test_every_option_and_argument_has_help_text() -> None:
    import typer.main

    from fedcare.cli import app

    missing = [f"{' '.join(path)} {param.name}" for path, command in _commands(typer.main.get_command(app))
               for param in command.params if not getattr(param, "help", None)]
    assert missing == []


def test_help_is_not_cut_at_80_columns() -> None:
    import typer.main
    from typer.testing import CliRunner

    from fedcare.cli import app

    # In this process (help is rendered from COLUMNS at call time): a process per command cost ~0.5 s each.
    runner = CliRunner(env={"COLUMNS": "80"})
    for path, command in _commands(typer.main.get_command(app)):
        proc = runner.invoke(app, [*path, "--help"])
        assert proc.exit_code == 0, proc.output
        assert "…" not in proc.stdout, proc.stdout
        assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
        for option in (o for p in command.params for o in p.opts if o.startswith("--")):
            assert option in proc.stdout, f"{' '.join(path)}: {option} missing from --help"
