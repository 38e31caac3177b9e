"""A user's mistake ends in one clear line on stderr and exit status 2, never a traceback."""

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
    _one_clear_line(_fedcare("silo", "run", "--config", "node.toml", cwd=tmp_path), "unreachable")


def test_tampered_log_exits_non_zero_and_names_the_file(tmp_path: Path) -> None:
    proc = _fedcare("audit", "verify", "missing.sqlite", cwd=tmp_path)
    _one_clear_line(proc, "missing.sqlite")


def test_researcher_needs_certificates_or_an_explicit_insecure(tmp_path: Path) -> None:
    _one_clear_line(_fedcare("study", "status", "some-study", cwd=tmp_path), "--ca-cert", "--insecure")
