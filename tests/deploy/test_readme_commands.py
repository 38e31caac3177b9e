"""README's two commands are what a new user and CI run: CI runs README's test command exactly."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def test_ci_runs_readmes_test_command_exactly() -> None:
    (test_command,) = _bash_blocks("Tests")
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")
                and not line.startswith(("set ", "cd "))]
    assert commands == [test_command.strip()]


def test_quick_start_installs_into_a_virtual_environment() -> None:
    (quick_start,) = _bash_blocks("Quick start")
    assert quick_start.strip() == "bash scripts/install.sh && .venv/bin/fedcare demo"


def test_install_script_refuses_an_unknown_option_in_one_line() -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--nope"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "install.sh: unknown option '--nope'; use --test or nothing"
