"""The `fedcare` command: wiring only; every command calls into the rooms that do the work.

Errors a user can cause (a bad config or spec, an unreachable coordinator, a refused
request) end in one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from console.addresses import RESEARCHER_DEFAULT_LISTEN, SITE_DEFAULT_LISTEN
from fedcare.listen import ListenError, check_listen
from fedcare.pki import ROLES

# Click's plain help wraps long option names and texts at any width; typer's rich panels cut them at 80 columns.
_HELP_STYLE = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(add_completion=False, help="fedcare: federated learning for hospitals.", **_HELP_STYLE)
coordinator_app = typer.Typer(help="Run the central coordinator.", **_HELP_STYLE)
silo_app = typer.Typer(help="Run and manage a hospital silo node.", **_HELP_STYLE)
study_app = typer.Typer(help="Submit and follow studies (researchers).", **_HELP_STYLE)
audit_app = typer.Typer(help="Verify audit logs and write compliance reports.", **_HELP_STYLE)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(silo_app, name="silo")
app.add_typer(study_app, name="study")
app.add_typer(audit_app, name="audit")
pki_app = typer.Typer(help="Issue the study CA and certificates (mutual TLS).", **_HELP_STYLE)
app.add_typer(pki_app, name="pki")

console = Console(stderr=True)
DEFAULT_COORDINATOR = "127.0.0.1:50051"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _safe(text: str) -> str:
    """Remote text for the terminal: control characters (ESC, CSI, BEL, ...) shown as escapes, markup escaped."""
    return _escape("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


class UserError(Exception):
    """Something the user can fix; printed as one line."""


VerboseOpt = Annotated[bool, typer.Option("--verbose", help="log debug messages too")]


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)  # Opacus configures logging at import; ours must win


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
    if attack is not None:
        from silo_node.attacks import ATTACKS

        if attack not in ATTACKS:
            raise UserError(f"--attack must be one of {', '.join(ATTACKS)}, not {attack!r}")
        if malicious <= 0:
            raise UserError("--attack needs --malicious FRACTION > 0 (the share of silos that attack)")
    elif malicious > 0:
        raise UserError("--malicious needs --attack KIND (which attack the malicious silos run)")
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


# --- coordinator ------------------------------------------------------------------------------------
LimitOpt = Annotated[Optional[list[str]], typer.Option(
    metavar="NAME=VALUE", help="a size limit on what silos may send, e.g. reason_chars=500 or metrics=32; "
                               "repeat for more; an unknown NAME is answered with the list")]


def _inbound_limits(pairs: Optional[list[str]]):  # noqa: ANN202 - coordinator.inbound.InboundLimits
    """`--limit NAME=VALUE ...` as InboundLimits; an unknown name, a bad value or one past its ceiling in one line."""
    from pydantic import ValidationError

    from coordinator.api.study import describe_validation_error
    from coordinator.inbound import InboundLimits

    values: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or name not in InboundLimits.model_fields:
            raise UserError(f"--limit {pair}: expected NAME=VALUE with NAME one of "
                            f"{', '.join(InboundLimits.model_fields)}")
        values[name] = value
    try:
        return InboundLimits.model_validate(values)
    except ValidationError as e:
        raise UserError(f"--limit: {describe_validation_error(e)}") from None


@coordinator_app.command("serve")
def coordinator_serve(
    state_dir: Annotated[Path, typer.Option(help="where studies, models and the audit log are kept")],
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve on; silos and researchers dial it")] = "0.0.0.0:50051",
    database: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL, e.g. postgresql://fedcare@db/fedcare "
                                                         "(default: SQLite in the state dir)")] = None,
    insecure: Annotated[bool, typer.Option(help="plain-text gRPC without identities: local demos only")] = False,
    ca_cert: Annotated[Optional[Path], typer.Option(help="the study CA (ca.pem) that signed every participant")] = None,
    cert: Annotated[Optional[Path], typer.Option(help="this coordinator's server certificate (pki issue --coordinator)")] = None,
    key: Annotated[Optional[Path], typer.Option(help="its private key")] = None,
    crl: Annotated[Optional[Path], typer.Option(help="certificate revocation list (PEM)")] = None,
    limit: LimitOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the federation's gRPC API until interrupted."""
    from coordinator.server import Coordinator, CoordinatorConfig

    _logging(verbose)
    if not insecure and not (ca_cert and cert and key):
        raise UserError("give --ca-cert, --cert and --key (see `fedcare pki`), or --insecure for a local demo")
    _check_files(("--ca-cert", ca_cert), ("--cert", cert), ("--key", key), ("--crl", crl))
    check_listen(listen)
    config = CoordinatorConfig(state_dir=state_dir, listen=listen, database=database, insecure=insecure,
                               ca_cert=ca_cert, server_cert=cert, server_key=key, crl=crl,
                               inbound=_inbound_limits(limit))
    with _bind_errors(listen):
        coordinator = Coordinator(config).start()
    try:
        coordinator.wait()
    except KeyboardInterrupt:
        coordinator.stop()


@coordinator_app.command("regional")
def coordinator_regional(
    name: Annotated[str, typer.Option(help="the region's name upstream (its silo identity at the central coordinator)")],
    upstream: Annotated[str, typer.Option(help="host:port of the central coordinator")],
    state_dir: Annotated[Path, typer.Option(help="where the region's audit log is kept")],
    listen: Annotated[str, typer.Option(help="host:port this region's silos dial in to")] = "0.0.0.0:50061",
    insecure: Annotated[bool, typer.Option(help="plain-text gRPC both ways without identities: local demos only")] = False,
    ca_cert: Annotated[Optional[Path], typer.Option(help="the study CA (ca.pem)")] = None,
    cert: Annotated[Optional[Path], typer.Option(help="this region's server certificate (pki issue --coordinator)")] = None,
    key: Annotated[Optional[Path], typer.Option(help="its key")] = None,
    upstream_cert: Annotated[Optional[Path], typer.Option(help="this region's silo certificate (pki issue --silo NAME)")] = None,
    upstream_key: Annotated[Optional[Path], typer.Option(help="its key")] = None,
    crl: Annotated[Optional[Path], typer.Option(help="certificate revocation list (PEM)")] = None,
    expected_silos: Annotated[Optional[int], typer.Option(min=1, help="answer a proposal upstream once this many silos answered")] = None,
    enrollment_timeout: Annotated[float, typer.Option(help="seconds to wait for the region's silos to answer a proposal")] = 60.0,
    limit: LimitOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run a regional aggregator: one participant upstream for the silos that dial in to it."""
    from pydantic import ValidationError

    from coordinator.api.study import describe_validation_error
    from coordinator.regional_node.config import RegionalConfig
    from coordinator.regional_node.server import RegionalAggregator

    _logging(verbose)
    _check_files(("--ca-cert", ca_cert), ("--cert", cert), ("--key", key), ("--upstream-cert", upstream_cert),
                 ("--upstream-key", upstream_key), ("--crl", crl))
    check_listen(listen)
    try:
        config = RegionalConfig(name=name, upstream=upstream, listen=listen, state_dir=state_dir, insecure=insecure,
                                ca_cert=ca_cert, server_cert=cert, server_key=key, upstream_cert=upstream_cert,
                                upstream_key=upstream_key, crl=crl, expected_silos=expected_silos,
                                enrollment_timeout_s=enrollment_timeout, inbound=_inbound_limits(limit))
    except ValidationError as e:
        raise UserError(f"regional aggregator: {describe_validation_error(e)}") from None
    with _bind_errors(listen):
        region = RegionalAggregator(config).start()
    try:
        region.wait()
    except KeyboardInterrupt:
        region.stop()


def _check_files(*options: tuple[str, Optional[Path]]) -> None:
    for option, path in options:
        if path is not None and not path.is_file():
            raise UserError(f"{option} {path}: file not found")


@contextlib.contextmanager
def _bind_errors(listen: str) -> Iterator[None]:
    """gRPC's bind failure (after check_listen passed: a race, or an address gRPC alone refuses) in one line."""
    try:
        yield
    except RuntimeError as e:
        if "Failed to bind" not in str(e):
            raise
        raise UserError(f"--listen {listen}: gRPC could not bind it (port taken since, or an address this "
                        "machine does not have); choose another --listen") from None


# --- silo -------------------------------------------------------------------------------------------
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the node's node.toml")]
StudyArg = Annotated[str, typer.Argument(help="the study id (as `fedcare silo studies` or `study submit` printed it)")]


def _node_config(path: Path):  # noqa: ANN202 - silo_node.config.NodeConfig
    from silo_node.config import NodeConfig

    return NodeConfig.load(path)


@silo_app.command("init")
def silo_init(config: ConfigOpt) -> None:
    """Create the node's audit log and signing key; print the public key to register out of band."""
    from compliance.node_log import open_node_log
    from silo_node.node import STATE_FILES

    cfg = _node_config(config)
    with open_node_log(Path(cfg.state_dir), node=cfg.name, role="silo", state_files=STATE_FILES) as audit:
        key = audit.public_key_hex
    Console().print(f"silo {_escape(cfg.name)}: audit log in {_escape(str(cfg.state_dir))}, signing key "
                    f"[bold]{key}[/]. Give this key to the coordinator's operator and your compliance officer "
                    f"(fedcare audit verify/report --public-key {_escape(cfg.name)}={key}).", soft_wrap=True)


@silo_app.command("run")
def silo_run(config: ConfigOpt, exit_after_studies: Annotated[Optional[int], typer.Option(
        min=1, help="exit once this many studies have finished (tests and demos; default: run until stopped)")] = None,
             max_retry_s: Annotated[Optional[float], typer.Option(
                 min=0.001, help="give up when the coordinator stays away this long (default: the node config's "
                                 "max_retry_s; unset there too: reconnect for as long as it takes)")] = None,
             verbose: VerboseOpt = False) -> None:
    """Dial out to the coordinator and take part in approved studies."""
    import torch

    from silo_node.client import CoordinatorClient, open_channel
    from silo_node.node import SiloNode

    _logging(verbose)
    torch.set_num_threads(1)  # several silos may share one machine in demos; hospitals can raise it
    cfg = _node_config(config)
    credentials = None
    if not cfg.insecure:
        from silo_node.tls import channel_credentials

        credentials = channel_credentials(cfg.tls)
    client = CoordinatorClient(open_channel(cfg.coordinator, credentials=credentials), silo=cfg.name,
                               max_retries=cfg.max_retries, peer=f"coordinator at {cfg.coordinator}",
                               max_retry_s=max_retry_s if max_retry_s is not None else cfg.max_retry_s)
    SiloNode(cfg, client).run(exit_after_studies=exit_after_studies)


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
    from silo_node.ingest_command import render_table, run_ingest

    _logging(False)
    tables, limits, split_file, mrn_system = [], None, None, None  # in node.toml only ([[data.tables]], [data.limits], ...)
    if config is not None:
        d = _node_config(config).data
        fhir, dicom, dicomweb, wearables = [*fhir, *d.fhir], [*dicom, *d.dicom], [*dicomweb, *d.dicomweb], [*wearables, *d.wearables]
        tabular, tables, limits, split_file, mrn_system = [*tabular, *d.tabular], d.tables, d.limits, d.split_file, d.fhir_mrn_system
    if not (fhir or dicom or dicomweb or wearables or tabular or tables):
        raise UserError("name at least one input: --fhir, --tabular, --dicom, --dicomweb, --wearables (or --config node.toml)")
    for option, paths in (("--fhir", fhir), ("--dicom", dicom), ("--wearables", wearables), ("--tabular", tabular)):
        for path in paths:
            if not path.exists():
                source = f" (named in {config})" if config is not None else ""
                raise UserError(f"{option} {path}{source}: no such file or folder; check the path and that this "
                                "user may read it")
    cohort = StudySpec.from_toml(spec).cohort if spec else CohortSpec()
    with console.status("ingesting…"):
        result = run_ingest(fhir=fhir, dicom=dicom, dicomweb=dicomweb, wearables=wearables, tabular=tabular, out=out,
                            report=report, cohort=cohort, tables=tables, limits=limits, split_file=split_file,
                            fhir_mrn_system=mrn_system)
    Console().print(render_table(result))


@silo_app.command("studies")
def silo_studies(config: ConfigOpt) -> None:
    """List the studies proposed to this node, what each would do, and the decisions taken."""
    from silo_node.approval import ApprovalBook

    cfg = _node_config(config)
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

    cfg = _node_config(config)
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
            help="accept non-local clients (only behind the hospital's TLS proxy)")] = False) -> None:
    """Serve the site console: proposals to approve or reject, ingestion, privacy ledger, audit log."""
    from console.serve import serve
    from console.site import create_app

    _logging(False)
    app_ = create_app(_node_config(config), allow_remote=allow_remote)
    Console().print(f"site console at http://{listen}/ (add users with `fedcare console add-user --config {config}`)",
                    soft_wrap=True, highlight=False)
    serve(app_, listen)


# --- researcher --------------------------------------------------------------------------------------
CoordOpt = Annotated[str, typer.Option("--coordinator", help="host:port of the coordinator")]


@study_app.callback()
def study_connection(
    ca_cert: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_CA_CERT", help="the study CA (ca.pem)")] = None,
    cert: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_CERT", help="your researcher certificate")] = None,
    key: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_KEY", help="your researcher key")] = None,
    insecure: Annotated[bool, typer.Option(help="plain-text gRPC to a local demo coordinator")] = False,
) -> None:
    """Connection options shared by the study commands (mutual TLS unless --insecure)."""
    _CONNECTION.update(ca_cert=ca_cert, cert=cert, key=key, insecure=insecure)


_CONNECTION: dict = {}


def _researcher(coordinator: str):  # noqa: ANN202 - fedcare.researcher.ResearcherClient
    import grpc

    from fedcare.researcher import ResearcherClient

    c = _CONNECTION
    if c.get("insecure"):
        return ResearcherClient(grpc.insecure_channel(coordinator), target=coordinator)
    if not (c.get("ca_cert") and c.get("cert") and c.get("key")):
        raise UserError("give --ca-cert, --cert and --key (or FEDCARE_CA_CERT/CERT/KEY), or --insecure for a local demo")
    for name in ("ca_cert", "cert", "key"):
        if not c[name].exists():
            raise UserError(f"--{name.replace('_', '-')} {c[name]}: file not found")
    creds = grpc.ssl_channel_credentials(root_certificates=c["ca_cert"].read_bytes(), private_key=c["key"].read_bytes(),
                                         certificate_chain=c["cert"].read_bytes())
    return ResearcherClient(grpc.secure_channel(coordinator, creds), target=coordinator)


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
    client = _researcher(coordinator)
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
    st, summary = _researcher(coordinator).status(study_id)
    # Names come from whoever submitted the study: no rich markup, no terminal escapes reach the screen.
    Console().print(f"[bold]{_safe(st.study_id)}[/] ({_safe(st.name)}): {_safe(st.state)}, round {st.current_round}/"
                    f"{st.rounds}, silos: {_safe(', '.join(st.silos)) or '-'}", highlight=False)
    for r in summary.get("rounds", []):
        m = r.get("metrics") or {}
        if m:
            Console().print(f"  round {r['round']}: AUROC {m.get('auroc', 0):.3f} accuracy {m.get('accuracy', 0):.3f}")
    if st.error:
        Console().print(f"  error: {_safe(st.error)}", highlight=False)


@study_app.command("results")
def study_results(study_id: StudyArg, out: Annotated[Path, typer.Option(help="folder for summary.json and final_model.pt")],
                  coordinator: CoordOpt = DEFAULT_COORDINATOR) -> None:
    """Download summary.json and the final model of a finished study (an analysis study: its pooled
    statistics as analysis.json, analysis.csv and analysis.html)."""
    paths = _researcher(coordinator).results(study_id, out)
    Console().print(f"wrote {', '.join(str(p) for p in paths.values())}")


# --- audit --------------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    logs: Annotated[list[Path], typer.Argument(help="audit logs (*.audit.sqlite); several are also checked "
                                                    "against the heads they witnessed of each other")],
    public_key: Annotated[list[str], typer.Option(
        help="a node's Ed25519 public key, 64 hex digits obtained out of band; NODE=HEX with several logs "
             "(repeatable); default: the key stored in each log")] = [],
) -> None:
    """Check logs' hash chains and signatures; exit 1 and name the first bad entry of any altered log."""
    from compliance import read_log, verify_logs
    from compliance.errors import AuditLogError

    missing = [str(p) for p in logs if not p.is_file()]
    if missing:
        raise UserError(f"audit log not found: {', '.join(missing)}")
    keys = _public_keys(public_key, several=len(logs) > 1)
    readable, failed = [], []
    for path in logs:
        try:
            readable.append(read_log(path))
        except AuditLogError as e:
            failed.append((path, str(e)))
    if "" in keys and readable:
        keys = {readable[0].node: keys[""]}
    try:
        results = verify_logs(readable, keys=keys)
    except ValueError as e:  # a key that is not 32 bytes of hex
        raise UserError(f"--public-key {', '.join(public_key)}: {e}") from None
    for contents, result in zip(readable, results):
        if result.ok:
            Console().print(f"[green]OK[/] {_escape(str(contents.path))}: {result.entries} entries, chain and signatures "
                            "intact", soft_wrap=True)
        else:
            failed.append((contents.path, result.reason))
    for path, reason in failed:
        console.print("[red]TAMPERED[/] " + _escape(f"{path}: {reason}"), highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _public_keys(values: list[str], *, several: bool) -> dict[str, str]:
    """`--public-key` values by node ('' for a bare key, allowed with one log only)."""
    keys: dict[str, str] = {}
    for value in values:
        node, sep, key = value.rpartition("=")
        if several and not sep:
            raise UserError(f"--public-key {value}: with several logs write NODE=HEX (the node named in the log)")
        keys[node] = key
    return keys


@audit_app.command("report")
def audit_report(
    log: Annotated[list[Path], typer.Option("--log", help="an audit log (repeat for the silos and the coordinator)")],
    out: Annotated[Path, typer.Option(help="report file (or folder)")],
    format: Annotated[str, typer.Option("--format", help="html or pdf")] = "html",
    study: Annotated[Optional[str], typer.Option(help="only this study")] = None,
    silo: Annotated[Optional[str], typer.Option(help="only this silo")] = None,
    ledger: Annotated[list[Path], typer.Option("--ledger", help="a silo's privacy ledger (repeatable)")] = [],
    public_key: Annotated[list[str], typer.Option(
        help="a node's registered Ed25519 public key as NODE=HEX (repeatable; see `fedcare silo init`)")] = [],
) -> None:
    """Write a compliance report: what left each hospital, ε over rounds, approvals, reconciliation."""
    from compliance import build_report

    missing = [str(p) for p in log if not p.exists()]
    if missing:
        raise UserError(f"audit log not found: {', '.join(missing)}")
    if format not in ("html", "pdf"):
        raise UserError(f"--format must be html or pdf, not {format!r}")
    path = build_report(logs=log, out=out, fmt=format, study=study, silo=silo, ledger=ledger,  # type: ignore[arg-type]
                        keys=_public_keys(public_key, several=True))
    Console().print(f"report written to {path}")


# --- pki ----------------------------------------------------------------------------------------------
PkiDir = Annotated[Path, typer.Option("--dir", help="folder of the study CA")]


@pki_app.command("init")
def pki_init(dir: PkiDir = Path("pki")) -> None:
    """Create the study CA (ca.pem, ca.key, an empty crl.pem)."""
    from fedcare.pki import init_ca

    Console().print(f"study CA written to {init_ca(dir)}")


@pki_app.command("issue")
def pki_issue(
    dir: PkiDir = Path("pki"),
    silo: Annotated[Optional[str], typer.Option(help="issue a silo certificate")] = None,
    researcher: Annotated[Optional[str], typer.Option(help="issue a researcher certificate")] = None,
    auditor: Annotated[Optional[str], typer.Option(help="issue an auditor certificate")] = None,
    coordinator: Annotated[Optional[str], typer.Option(help="issue the coordinator's server certificate")] = None,
    host: Annotated[list[str], typer.Option(help="coordinator host names / IPs")] = ["localhost", "127.0.0.1"],
) -> None:
    """Issue a certificate for one holder; its role is bound into the certificate."""
    from fedcare.pki import issue

    role, name = _one_holder(silo=silo, researcher=researcher, auditor=auditor, coordinator=coordinator)
    cert, key = issue(dir, name=name, role=role, hosts=tuple(host))
    Console().print(f"{role} {name}: certificate {cert}, key {key}")


def _one_holder(**names: Optional[str]) -> tuple[str, str]:
    chosen = [(role, name) for role, name in names.items() if name]
    if len(chosen) != 1:
        raise UserError("name exactly one of --silo, --researcher, --auditor, --coordinator")
    return chosen[0]


HolderOpt = {role: Annotated[Optional[str], typer.Option(help=f"the {role}'s name (certificate CN)")]
             for role in ROLES}


@pki_app.command("request")
def pki_request(
    out: Annotated[Path, typer.Option(help="folder for the new key (stays here, mode 600) and the request")] = Path("pki"),
    silo: HolderOpt["silo"] = None, researcher: HolderOpt["researcher"] = None,
    auditor: HolderOpt["auditor"] = None, coordinator: HolderOpt["coordinator"] = None,
) -> None:
    """At a hospital (or any holder): make a private key and a signing request (CSR) for the study CA.

    Send only NAME.csr to the CA operator; NAME.key never leaves this machine."""
    from fedcare.pki import request

    role, name = _one_holder(silo=silo, researcher=researcher, auditor=auditor, coordinator=coordinator)
    csr, key = request(out, name=name, role=role)
    Console().print(f"{role} {name}: key {key} (keep it here), signing request {csr}: send it to the study CA "
                    f"operator, who runs `fedcare pki sign {csr.name} --{role} {name}`", soft_wrap=True)


@pki_app.command("sign")
def pki_sign(
    csr: Annotated[Path, typer.Argument(help="the holder's signing request (NAME.csr from `fedcare pki request`)")],
    dir: PkiDir = Path("pki"),
    out: Annotated[Optional[Path], typer.Option(help="the certificate to write (default: DIR/ROLE/NAME.pem)")] = None,
    host: Annotated[list[str], typer.Option(help="coordinator host names / IPs")] = ["localhost", "127.0.0.1"],
    silo: HolderOpt["silo"] = None, researcher: HolderOpt["researcher"] = None,
    auditor: HolderOpt["auditor"] = None, coordinator: HolderOpt["coordinator"] = None,
) -> None:
    """At the study CA: sign a request as the holder and role you name; the request must ask for the same."""
    from fedcare.pki import sign_request

    role, name = _one_holder(silo=silo, researcher=researcher, auditor=auditor, coordinator=coordinator)
    cert = sign_request(dir, csr, name=name, role=role, out=out or dir / role / f"{name}.pem", hosts=tuple(host))
    Console().print(f"{role} {name}: certificate {cert}; send it and {dir / 'ca.pem'} back (both are public)",
                    soft_wrap=True)


@pki_app.command("revoke")
def pki_revoke(cert: Annotated[Path, typer.Argument(help="the certificate (PEM) to revoke")], dir: PkiDir = Path("pki")) -> None:
    """Revoke a certificate: its serial joins the CA's CRL, which the coordinator honours."""
    from fedcare.pki import revoke

    Console().print(f"revoked; CRL updated at {revoke(dir, cert)}")


# --- entry point ---------------------------------------------------------------------------------------
# --- web consoles ------------------------------------------------------------------------------------
console_app = typer.Typer(help="The researcher console (web), and console accounts.", rich_markup_mode=None)
app.add_typer(console_app, name="console")


@console_app.callback(invoke_without_command=True)
def console_serve(
    ctx: typer.Context,
    coordinator: CoordOpt = DEFAULT_COORDINATOR,
    state_dir: Annotated[Path, typer.Option(help="the console's accounts, audit log and followed studies")] = Path(
        "fedcare-console"),
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve on")] = RESEARCHER_DEFAULT_LISTEN,
    log: Annotated[list[Path], typer.Option("--log", help="an audit log auditors may read (repeatable)")] = [],
    ledger: Annotated[list[Path], typer.Option("--ledger", help="a silo's privacy ledger (repeatable)")] = [],
    public_key: Annotated[list[str], typer.Option(help="NODE=HEX registered signing key (repeatable)")] = [],
    ca_cert: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_CA_CERT", help="the study CA (ca.pem)")] = None,
    cert: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_CERT", help="the console's researcher certificate")] = None,
    key: Annotated[Optional[Path], typer.Option(envvar="FEDCARE_KEY", help="its key")] = None,
    insecure: Annotated[bool, typer.Option(help="plain-text gRPC to a local demo coordinator")] = False,
) -> None:
    """Serve the researcher console for the coordinator at --coordinator (studies, live curves, submission, audit)."""
    if ctx.invoked_subcommand is not None:
        return
    from console.researcher import create_app
    from console.serve import serve
    from console.audit_view import AuditSources

    _logging(False)
    _CONNECTION.update(ca_cert=ca_cert, cert=cert, key=key, insecure=insecure)
    sources = AuditSources(logs=log, ledgers=ledger, keys=_public_keys(public_key, several=True))
    app_ = create_app(_researcher(coordinator), state_dir=state_dir, coordinator=coordinator, audit_sources=sources)
    Console().print(f"researcher console at http://{listen}/ (add users with `fedcare console add-user "
                    f"--state-dir {state_dir}`)", soft_wrap=True, highlight=False)
    serve(app_, listen)


@console_app.command("add-user")
def console_add_user(
    user: Annotated[str, typer.Argument(help="the sign-in name")],
    role: Annotated[str, typer.Option(help="researcher, auditor or site-admin")],
    state_dir: Annotated[Optional[Path], typer.Option(help="the researcher console's state dir")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="a node.toml: a site console user")] = None,
    password: Annotated[str, typer.Option(envvar="FEDCARE_CONSOLE_PASSWORD", prompt=True, hide_input=True,
                                          confirmation_prompt=True, help="asked when not given")] = "",
) -> None:
    """Add a console user (or set their password and role); the password is stored scrypt-hashed."""
    from console.researcher import accounts_in
    from console.site import accounts_of

    if (state_dir is None) == (config is None):
        raise UserError("give --state-dir (researcher console) or --config node.toml (site console), one of them")
    store = accounts_in(state_dir) if state_dir is not None else accounts_of(_node_config(config))
    account = store.add(user, password, role)
    Console().print(f"console user {_escape(account.user)} ({account.role.value}) saved in {_escape(str(store.path))}")


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
            console.print("[red]error:[/] " + _escape(str(e)), highlight=False, soft_wrap=True)  # one line, any width
            sys.exit(2)
        raise
