"""`fedcare study`: researchers submit and follow studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedcare.commands.common import (CONNECTION, DEFAULT_COORDINATOR, HELP_STYLE, CoordOpt, StudyArg, UserError,
                                     researcher_client, safe)

study_app = typer.Typer(help="Submit and follow studies (researchers).", **HELP_STYLE)

@study_app.callback()
def study_connection(
    ca_cert: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_CA_CERT", help="the study CA (ca.pem)")] = None,
    cert: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_CERT", help="your researcher certificate")] = None,
    key: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_KEY", help="your researcher key")] = None,
    insecure: Annotated[bool, typer.Option(help="plain-text gRPC to a local demo coordinator")] = False,
) -> None:
    """Connection options shared by the study commands (mutual TLS unless --insecure)."""
    CONNECTION.update(ca_cert=ca_cert, cert=cert, key=key, insecure=insecure)


@study_app.command("submit")
def study_submit(spec: Annotated[Path, typer.Argument(help="the study spec (TOML); see examples/")],
                 coordinator: CoordOpt = DEFAULT_COORDINATOR,
                 standardise_from: Annotated[Optional[str], typer.Option(
                     help="a finished analysis study: its pooled means and sds become the features' standardisation")] = None,
                 ) -> None:
    """Validate a study spec (TOML) and submit it; prints the study id."""
    from coordinator.api.study import StudySpec
    from fedcare.standardise import StandardisationError, standardised_from

    parsed = StudySpec.from_toml(spec)  # refuse an invalid spec before connecting anywhere
    client = researcher_client(coordinator)
    if standardise_from is not None:
        try:
            parsed = standardised_from(parsed, client.status(standardise_from)[1])
        except StandardisationError as e:
            raise UserError(f"--standardise-from: {e}") from None
    study_id = client.submit(parsed)
    print(study_id)


@study_app.command("status")
def study_status(study_id: StudyArg, coordinator: CoordOpt = DEFAULT_COORDINATOR) -> None:
    """State, round and latest metrics of a study."""
    st, summary = researcher_client(coordinator).status(study_id)
    # Names come from whoever submitted the study: no rich markup, no terminal escapes reach the screen.
    Console().print(f"[bold]{safe(st.study_id)}[/] ({safe(st.name)}): {safe(st.state)}, round {st.current_round}/"
                    f"{st.rounds}, silos: {safe(', '.join(st.silos)) or '-'}", highlight=False)
    for r in summary.get("rounds", []):
        m = r.get("metrics") or {}
        if m:
            Console().print(f"  round {r['round']}: AUROC {m.get('auroc', 0):.3f} accuracy {m.get('accuracy', 0):.3f}")
    if st.error:
        Console().print(f"  error: {safe(st.error)}", highlight=False)


@study_app.command("results")
def study_results(study_id: StudyArg, out: Annotated[Path, typer.Option(help="folder for summary.json and final_model.pt")],
                  coordinator: CoordOpt = DEFAULT_COORDINATOR) -> None:
    """Download summary.json and the final model of a finished study (an analysis study: its pooled
    statistics as analysis.json, analysis.csv and analysis.html)."""
    paths = researcher_client(coordinator).results(study_id, out)
    Console().print(f"wrote {', '.join(str(p) for p in paths.values())}")
