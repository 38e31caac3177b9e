"""`fedcare demo --console`: the researcher console and one site console per hospital on the demo federation.

Each console runs as its own `fedcare` process next to the demo's coordinator and silos. The demo makes
one throw-away password for its users (researcher, auditor, and site-admin at every hospital) and prints
it with the addresses; the consoles stay up after the study until the demo is stopped.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compliance.node_log import AUDIT_LOG_FILE
from console.accounts import Role
from console.researcher import FOLLOWED_FILE, FollowedStudies, accounts_in
from console.site import accounts_of
from silo_node.config import NodeConfig
from silo_node.state_files import LEDGER_FILE

Spawn = Callable[[list[str], Path], subprocess.Popen]
CONSOLE_DIR = "console"


@dataclass
class DemoConsoles:
    researcher: str  # URL
    sites: dict[str, str]  # hospital -> URL
    password: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    state_dir: Path = Path()

    def follow(self, study_id: str) -> None:
        """List the demo's study in the researcher console (it was submitted by the demo, not the console)."""
        FollowedStudies(self.state_dir / FOLLOWED_FILE).add(study_id)

    def lines(self) -> list[str]:
        return [f"researcher console: {self.researcher}  (users 'researcher' and 'auditor')",
                *(f"site console of {name}: {url}  (user 'site-admin')" for name, url in self.sites.items()),
                f"password for every demo console user: {self.password}"]


def open_consoles(out: Path, *, coordinator: str, silo_configs: dict[str, Path], spawn: Spawn,
                  free_port: Callable[[], int]) -> DemoConsoles:
    """Start the consoles (as processes, logs in OUT/logs) with the demo's users; return their addresses."""
    password = secrets.token_urlsafe(12)
    state_dir = out / CONSOLE_DIR
    researchers = accounts_in(state_dir)
    researchers.add("researcher", password, Role.RESEARCHER)
    researchers.add("auditor", password, Role.AUDITOR)
    args = ["console", "--coordinator", coordinator, "--insecure", "--state-dir", str(state_dir),
            "--log", str(out / "coordinator" / AUDIT_LOG_FILE)]
    for name, cfg in silo_configs.items():
        state = NodeConfig.load(cfg).state_dir
        args += ["--log", str(state / AUDIT_LOG_FILE), "--ledger", str(state / LEDGER_FILE)]
    listen = f"127.0.0.1:{free_port()}"
    procs = {"researcher-console": spawn([*args, "--listen", listen], out / "logs" / "researcher-console.log")}
    consoles = DemoConsoles(researcher=f"http://{listen}/", sites={}, password=password, procs=procs,
                            state_dir=state_dir)
    for name, cfg in silo_configs.items():
        accounts_of(NodeConfig.load(cfg)).add("site-admin", password, Role.SITE_ADMIN)
        site = f"127.0.0.1:{free_port()}"
        procs[f"{name}-console"] = spawn(["silo", "console", "--config", str(cfg), "--listen", site],
                                         out / "logs" / f"{name}-console.log")
        consoles.sites[name] = f"http://{site}/"
    return consoles
