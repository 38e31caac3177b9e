"""`fedcare coordinator`: the central coordinator and regional aggregators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedcare.commands.common import (HELP_STYLE, UserError, VerboseOpt, check_files, configure_logging,
                                     serve_until_interrupted)
from fedcare.listen import check_listen

coordinator_app = typer.Typer(help="Run the central coordinator.", **HELP_STYLE)

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

    configure_logging(verbose)
    if not insecure and not (ca_cert and cert and key):
        raise UserError("give --ca-cert, --cert and --key (see `fedcare pki`), or --insecure for a local demo")
    check_files(("--ca-cert", ca_cert), ("--cert", cert), ("--key", key), ("--crl", crl))
    check_listen(listen)
    config = CoordinatorConfig(state_dir=state_dir, listen=listen, database=database, insecure=insecure,
                               ca_cert=ca_cert, server_cert=cert, server_key=key, crl=crl,
                               inbound=_inbound_limits(limit))
    serve_until_interrupted(lambda: Coordinator(config).start(), listen)


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

    configure_logging(verbose)
    check_files(("--ca-cert", ca_cert), ("--cert", cert), ("--key", key), ("--upstream-cert", upstream_cert),
                 ("--upstream-key", upstream_key), ("--crl", crl))
    check_listen(listen)
    try:
        config = RegionalConfig(name=name, upstream=upstream, listen=listen, state_dir=state_dir, insecure=insecure,
                                ca_cert=ca_cert, server_cert=cert, server_key=key, upstream_cert=upstream_cert,
                                upstream_key=upstream_key, crl=crl, expected_silos=expected_silos,
                                enrollment_timeout_s=enrollment_timeout, inbound=_inbound_limits(limit))
    except ValidationError as e:
        raise UserError(f"regional aggregator: {describe_validation_error(e)}") from None
    serve_until_interrupted(lambda: RegionalAggregator(config).start(), listen)
