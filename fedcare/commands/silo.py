"""`fedcare silo`: run and manage a hospital silo node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from console.addresses import SITE_DEFAULT_LISTEN
from fedcare.commands.common import (HELP_STYLE, ConfigOpt, StudyArg, UserError, VerboseOpt, configure_logging, console,
                                     console_tls, escape, node_config, take_sigint)

silo_app = typer.Typer(help="Run and manage a hospital silo node.", **HELP_STYLE)

# --- silo -------------------------------------------------------------------------------------------
@silo_app.command("init")
def silo_init(config: ConfigOpt) -> None:
    """Create the node's audit log and signing key; print the public key to register out of band."""
    from compliance.node_log import open_node_log
    from silo_node.state_files import STATE_FILES

    cfg = node_config(config)
    with open_node_log(Path(cfg.state_dir), node=cfg.name, role="silo", state_files=STATE_FILES) as audit:
        key = audit.public_key_hex
    Console().print(f"silo {escape(cfg.name)}: audit log in {escape(str(cfg.state_dir))}, signing key "
                    f"[bold]{key}[/]. Give this key to the coordinator's operator and your compliance officer "
                    f"(fedcare audit verify/report --public-key {escape(cfg.name)}={key}).", soft_wrap=True)


@silo_app.command("run")
def silo_run(config: ConfigOpt, exit_after_studies: Annotated[Optional[int], typer.Option(
        min=1, help="exit once this many studies have finished (tests and demos; default: run until stopped)")] = None,
             max_retry_s: Annotated[Optional[float], typer.Option(
                 min=0.001, help="give up when the coordinator stays away this long (default: the node config's "
                                 "max_retry_s; unset there too: reconnect for as long as it takes)")] = None,
             verbose: VerboseOpt = False) -> None:
    """Dial out to the coordinator and take part in approved studies."""
    configure_logging(verbose)
    take_sigint()  # the unit's KillSignal stops the node even if this process inherited SIGINT ignored
    cfg = node_config(config)  # a bad config is refused before seconds of torch and MONAI imports
    import torch

    from silo_node.client import CoordinatorClient, open_channel
    from silo_node.node import SiloNode
    from silo_node.trainer import DeviceUnavailable

    torch.set_num_threads(1)  # several silos may share one machine in demos; hospitals can raise it
    credentials = None
    if not cfg.insecure:
        from silo_node.tls import channel_credentials

        credentials = channel_credentials(cfg.tls)
    client = CoordinatorClient(open_channel(cfg.coordinator, credentials=credentials), silo=cfg.name,
                               max_retries=cfg.max_retries, peer=f"coordinator at {cfg.coordinator}",
                               max_retry_s=max_retry_s if max_retry_s is not None else cfg.max_retry_s)
    try:
        node = SiloNode(cfg, client)
    except DeviceUnavailable as exc:
        raise UserError(f"{config}: {exc}") from None
    node.run(exit_after_studies=exit_after_studies)


@silo_app.command("ingest")
def silo_ingest(
    out: Annotated[Path, typer.Option(help="folder for the de-identified cache, quarantine and report")],
    fhir: Annotated[list[Path], typer.Option("--fhir", help="FHIR bundles / NDJSON (file or folder)")] = [],
    dicom: Annotated[list[Path], typer.Option("--dicom", help="DICOM files or folders")] = [],
    dicomweb: Annotated[list[str], typer.Option("--dicomweb", help="DICOMweb base URL of a PACS")] = [],
    wearables: Annotated[list[Path], typer.Option("--wearables", help="wearable CSV / WFDB (file or folder)")] = [],
    tabular: Annotated[list[Path], typer.Option("--tabular", help="EHR extracts: CSV / Parquet, generic or OMOP (file or folder)")] = [],
    report: Annotated[Optional[Path], typer.Option(help="JSON report (default OUT/ingest-report.json)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="take the data sources from node.toml")] = None,
    spec: Annotated[Optional[Path], typer.Option(help="study spec whose cohort/features to apply (default cohort)")] = None,
) -> None:
    """Ingest local data (de-identified, quarantined, cached) and report what was found, outside any study."""
    from coordinator.api.study import CohortSpec, StudySpec

    configure_logging(False)
    tables, limits, split_file, mrn_system, mapping = [], None, None, None, None  # node.toml only ([[data.tables]], ...)
    validation = None  # the pipelines' default unless node.toml names one
    if config is not None:
        node = node_config(config)
        d, mapping = node.data, node.wearables
        fhir, dicom, dicomweb, wearables = [*fhir, *d.fhir], [*dicom, *d.dicom], [*dicomweb, *d.dicomweb], [*wearables, *d.wearables]
        tabular, tables, limits, split_file, mrn_system = [*tabular, *d.tabular], d.tables, d.limits, d.split_file, d.fhir_mrn_system
        validation = d.fhir_validation
    if not (fhir or dicom or dicomweb or wearables or tabular or tables):
        raise UserError("name at least one input: --fhir, --tabular, --dicom, --dicomweb, --wearables (or --config node.toml)")
    for option, paths in (("--fhir", fhir), ("--dicom", dicom), ("--wearables", wearables), ("--tabular", tabular)):
        for path in paths:
            if not path.exists():
                source = f" (named in {config})" if config is not None else ""
                raise UserError(f"{option} {path}{source}: no such file or folder; check the path and that this "
                                "user may read it")
    cohort = StudySpec.from_toml(spec).cohort if spec else CohortSpec()
    from silo_node.ingest_command import render_table, run_ingest  # torch and MONAI: after the checks above

    with console.status("ingesting…"):
        result = run_ingest(fhir=fhir, dicom=dicom, dicomweb=dicomweb, wearables=wearables, tabular=tabular, out=out,
                            report=report, cohort=cohort, tables=tables, limits=limits, split_file=split_file,
                            fhir_mrn_system=mrn_system, fhir_validation=validation, wearable_mapping=mapping)
    Console().print(render_table(result))


@silo_app.command("studies")
def silo_studies(config: ConfigOpt) -> None:
    """List the studies proposed to this node, what each would do, and the decisions taken."""
    from silo_node.approval import ApprovalBook

    cfg = node_config(config)
    proposals = ApprovalBook(cfg.state_dir).proposals()
    if not proposals:
        Console().print("no studies proposed to this node yet")
    for p in proposals:
        d = p["decision"]
        state = "PENDING" if d is None else ("APPROVED" if d["approved"] else "REJECTED") + f" by {d['by']}"
        Console().print(f"[bold]{p['study_id']}[/]  {state}")
        Console().print_json(json.dumps(p["summary"]))


def _decide(config: Path, study: str, approved: bool, reason: str) -> None:
    from silo_node.approval import ApprovalBook

    cfg = node_config(config)
    try:
        d = ApprovalBook(cfg.state_dir).decide(study, approved=approved, reason=reason)
    except KeyError as e:
        raise UserError(str(e).strip("'\"")) from None
    Console().print(f"study {study} {'approved' if approved else 'rejected'} by {d.by} (spec {d.spec_sha256[:12]}…); "
                    "the running node sends the decision at its next poll")


@silo_app.command("approve")
def silo_approve(study: StudyArg, config: ConfigOpt,
                 reason: Annotated[str, typer.Option(help="why, for the audit log")] = "approved by hospital IT") -> None:
    """Approve a proposed study (binds to its spec hash and the model code version)."""
    _decide(config, study, True, reason)


@silo_app.command("reject")
def silo_reject(study: StudyArg, config: ConfigOpt,
                reason: Annotated[str, typer.Option(help="why, for the audit log")] = "rejected by hospital IT") -> None:
    """Reject a proposed study."""
    _decide(config, study, False, reason)


@silo_app.command("console")
def silo_console(config: ConfigOpt, listen: Annotated[str, typer.Option(
        help="HOST:PORT to serve on (loopback by default: hospital IT opens it on the node itself)")] = SITE_DEFAULT_LISTEN,
        allow_remote: Annotated[bool, typer.Option(
            help="accept non-local clients (over --tls-cert, or behind the hospital's TLS proxy)")] = False,
        tls_cert: Annotated[Optional[Path], typer.Option(
            help="serve HTTPS with this server certificate (PEM); pinned client certificates then sign in")] = None,
        tls_key: Annotated[Optional[Path], typer.Option(help="the HTTPS server certificate's key")] = None,
        client_ca: Annotated[Optional[Path], typer.Option(
            help="the CA (the hospital's own, or the study's) whose client certificates are asked for")] = None,
        crl: Annotated[Optional[Path], typer.Option(help="that CA's revocation list (PEM)")] = None) -> None:
    """Serve the site console: proposals to approve or reject, ingestion, privacy ledger, audit log."""
    from console.serve import serve
    from console.site import create_app

    configure_logging(False)
    tls = console_tls(tls_cert, tls_key, client_ca, crl)
    app_ = create_app(node_config(config), allow_remote=allow_remote, tls=tls)
    Console().print(f"site console at {'https' if tls else 'http'}://{listen}/ (add users with `fedcare console "
                    f"add-user --config {config}`{' --certificate FILE' if tls else ''})", soft_wrap=True, highlight=False)
    serve(app_, listen, tls=tls)


from fedcare.commands.silo_stream import stream  # noqa: E402  (live wearable streams, docs/streams.md)
silo_app.command("stream")(stream)
