"""The `fedcare` command: wiring only; every command calls into the rooms that do the work.

Each command group lives in fedcare/commands/; this module assembles them, holds the demo
and the entry point. Errors a user can cause (a bad config or spec, an unreachable
coordinator, a refused request) end in one clear line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fedcare.commands.audit import audit_app
from fedcare.commands.common import HELP_STYLE, UserError, VerboseOpt, console, escape
from fedcare.commands.console import console_app
from fedcare.commands.coordinator import coordinator_app
from fedcare.commands.pki import pki_app
from fedcare.commands.silo import silo_app
from fedcare.commands.simulate import simulate
from fedcare.commands.study import study_app
from fedcare.listen import ListenError

app = typer.Typer(add_completion=False, help="fedcare: federated learning for hospitals.", **HELP_STYLE)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(silo_app, name="silo")
app.add_typer(study_app, name="study")
app.add_typer(audit_app, name="audit")
app.add_typer(pki_app, name="pki")
app.add_typer(console_app, name="console")
app.command("simulate")(simulate)


# --- demo ---------------------------------------------------------------------------------------
@app.command()
def demo(
    rounds: Annotated[int, typer.Option(min=1, help="federated rounds")] = 5,
    silos: Annotated[int, typer.Option(min=2, max=20, help="number of hospitals")] = 3,
    out: Annotated[Path, typer.Option(help="results folder (replaced)")] = Path("fedcare-demo"),
    seed: Annotated[int, typer.Option(help="seed of the synthetic hospitals and the model")] = 0,
    patients: Annotated[int, typer.Option(min=40, help="patients per hospital")] = 300,
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="DP-SGD at every silo")] = True,
    encryption: Annotated[str, typer.Option(help="none | ckks-exact | ckks-packed")] = "ckks-exact",
    rule: Annotated[str, typer.Option(help="aggregation rule (fedavg, median, trimmed_mean, krum, ...)")] = "fedavg",
    epsilon: Annotated[float, typer.Option(help="target ε per silo for the whole study")] = 8.0,
    attack: Annotated[Optional[str], typer.Option(help="robustness demo: sign_flip, scaling, gaussian_noise, label_flip, alie, ipm, backdoor")] = None,
    malicious: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of silos that attack")] = 0.0,
    analysis: Annotated[bool, typer.Option("--analysis", help="first an analysis study: the cohort table across "
                                                              "hospitals (results in OUT/analysis), then training")] = False,
    console_: Annotated[bool, typer.Option("--console", help="also serve the researcher console and a site console "
                                                             "per hospital; they stay up after the study until Ctrl-C")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run a whole federation on this machine: coordinator + one process per hospital over gRPC."""
    from fedcare.demo import Demo, DemoOptions

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    # the pairing first: the list of attacks imports torch (seconds), a missing option needs none of it
    if attack is not None and malicious <= 0:
        raise UserError("--attack needs --malicious FRACTION > 0 (the share of silos that attack)")
    if attack is None and malicious > 0:
        raise UserError("--malicious needs --attack KIND (which attack the malicious silos run)")
    if attack is not None:
        from silo_node.attacks import ATTACKS

        if attack not in ATTACKS:
            raise UserError(f"--attack must be one of {', '.join(ATTACKS)}, not {attack!r}")
    options = DemoOptions(out=out, rounds=rounds, silos=silos, seed=seed, patients=patients, dp=dp,
                          encryption=encryption, rule=rule, epsilon=epsilon, attack=attack, malicious=malicious,
                          analysis=analysis, console=console_)
    _demo_spec_or_refuse(options)  # before minutes of data generation
    summary = Demo(options, console).run()
    table = Table(title=f"study {summary['study']}")
    for col in ("round", "AUROC", "accuracy", "bytes up (all silos)", "max ε"):
        table.add_column(col, justify="right")
    for r in summary["rounds"]:
        m = r.get("metrics") or {}
        eps = [e for e in r["epsilon"].values() if e is not None]
        table.add_row(str(r["round"]), f"{m.get('auroc', float('nan')):.3f}", f"{m.get('accuracy', float('nan')):.3f}",
                      f"{sum(r['bytes_up'].values()):,}", f"{max(eps):.2f}" if eps else "-")
    Console().print(table)
    totals = Table(title="per silo, whole study")
    for col in ("silo", "rounds taken part in", "bytes up", "bytes down", "final ε"):
        totals.add_column(col, justify="left" if col == "silo" else "right")
    for silo, t in summary.get("totals", {}).items():
        totals.add_row(silo, str(t["rounds"]), f"{t['bytes_up']:,}", f"{t['bytes_down']:,}",
                       "-" if t["epsilon"] is None else f"{t['epsilon']:.2f}")
    Console().print(totals)
    Console().print(f"results in [bold]{out}[/]: summary.json, final_model.pt (+ .sha256), study.toml, "
                    "audit/ (logs, report.html, report.pdf)")


# The demo option behind each study-spec field it sets, to name the option the user typed.
_DEMO_OPTION_OF_FIELD = {"rule": "--rule", "target_epsilon": "--epsilon", "encryption": "--encryption",
                         "rounds": "--rounds", "expected_silos": "--silos"}


def _demo_spec_or_refuse(options):  # noqa: ANN001, ANN202 - fedcare.demo.DemoOptions -> StudySpec
    """The demo's study spec, or one line naming the demo option that made it invalid."""
    from pydantic import ValidationError

    from fedcare.demo import demo_spec

    try:
        return demo_spec(options)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][-1]) if err["loc"] else e.title
        option = _DEMO_OPTION_OF_FIELD.get(field, field)
        reason = str(err["msg"]).removeprefix("Value error, ")
        raise UserError(f"{option} {err.get('input')!r}: {reason}") from None


def _user_errors() -> tuple[type[BaseException], ...]:
    from coordinator.api.study import SpecError
    from fedcare.pki import PKIError
    from fedcare.researcher import ResearcherError
    from coordinator.errors import StateError
    from silo_node.client import SiloError

    from compliance import ComplianceError

    from console.errors import ConsoleError

    return (UserError, SpecError, ResearcherError, SiloError, PKIError, ComplianceError, FileNotFoundError, ListenError,
            StateError, ConsoleError)


def main() -> None:
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - known user errors become one line; the rest re-raise
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # a usage error from typer's (vendored) click
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, _user_errors()):
            console.print("[red]error:[/] " + escape(str(e)), highlight=False, soft_wrap=True)  # one line, any width
            sys.exit(2)
        raise
