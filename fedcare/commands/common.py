"""What every `fedcare` command shares: the error a user can fix, logging, the terminal, options.

Errors a user can cause end in one clear line on stderr and exit status 2 (see fedcare.cli.main).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional, Protocol

import typer
from rich.console import Console

HELP_STYLE = {"no_args_is_help": True, "rich_markup_mode": None}
console = Console(stderr=True)
DEFAULT_COORDINATOR = "127.0.0.1:50051"


def escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def safe(text: str) -> str:
    """Remote text for the terminal: control characters (ESC, CSI, BEL, ...) shown as escapes, markup escaped."""
    return escape("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


class UserError(Exception):
    """Something the user can fix; printed as one line."""


VerboseOpt = Annotated[bool, typer.Option("--verbose", help="log debug messages too")]


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)  # Opacus configures logging at import; ours must win


def check_files(*options: tuple[str, Optional[Path]]) -> None:
    for option, path in options:
        if path is not None and not path.is_file():
            raise UserError(f"{option} {path}: file not found")


@contextlib.contextmanager
def bind_errors(listen: str) -> Iterator[None]:
    """gRPC's bind failure (after check_listen passed: a race, or an address gRPC alone refuses) in one line."""
    try:
        yield
    except RuntimeError as e:
        if "Failed to bind" not in str(e):
            raise
        raise UserError(f"--listen {listen}: gRPC could not bind it (port taken since, or an address this "
                        "machine does not have); choose another --listen") from None


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the node's node.toml")]
StudyArg = Annotated[str, typer.Argument(help="the study id (as `fedcare silo studies` or `study submit` printed it)")]


def node_config(path: Path):  # noqa: ANN202 - silo_node.config.NodeConfig
    from silo_node.config import NodeConfig

    return NodeConfig.load(path)


CoordOpt = Annotated[str, typer.Option("--coordinator", help="host:port of the coordinator")]


CONNECTION: dict = {}


def researcher_client(coordinator: str):  # noqa: ANN202 - fedcare.researcher.ResearcherClient
    import grpc

    from fedcare.researcher import ResearcherClient

    c = CONNECTION
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


def public_keys(values: list[str], *, several: bool) -> dict[str, str]:
    """`--public-key` values by node ('' for a bare key, allowed with one log only)."""
    keys: dict[str, str] = {}
    for value in values:
        node, sep, key = value.rpartition("=")
        if several and not sep:
            raise UserError(f"--public-key {value}: with several logs write NODE=HEX (the node named in the log)")
        keys[node] = key
    return keys


def console_tls(cert: Optional[Path], key: Optional[Path], client_ca: Optional[Path],
                crl: Optional[Path]):  # noqa: ANN202 - console.client_certs.ConsoleTLS | None
    """HTTPS with certificate sign-in when --tls-cert is given; every file it needs checked first."""
    if cert is None and key is None:
        if crl is not None:
            raise UserError("--crl needs --tls-cert and --tls-key (certificate sign-in is over HTTPS only)")
        return None
    if cert is None or key is None or client_ca is None:
        raise UserError("HTTPS needs --tls-cert, --tls-key and the CA of the users' certificates (--client-ca)")
    check_files(("--tls-cert", cert), ("--tls-key", key), ("--client-ca", client_ca), ("--crl", crl))
    from console.client_certs import ConsoleTLS

    return ConsoleTLS(cert=cert, key=key, ca_cert=client_ca, crl=crl)


def take_sigint() -> None:
    """SIGINT raises KeyboardInterrupt here, whatever this process inherited: a parent that ignored or blocked
    it (a shell's background job, a supervisor's own mask) would otherwise make the stop signal of the
    systemd units (KillSignal=SIGINT) a no-op, and the service would only end by SIGKILL."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class Server(Protocol):
    def wait(self) -> None: ...
    def stop(self) -> None: ...


def serve_until_interrupted(start: Callable[[], Server], listen: str) -> None:
    """Start a gRPC server and serve until SIGINT (Ctrl-C, and the systemd units' KillSignal), then stop it.

    While the server starts, SIGINT only records a stop request: once its port is open a supervisor may
    signal at any moment, and a KeyboardInterrupt raised inside `start()` would leave a running server
    that nothing holds (exit 130, never stopped). Python runs signal handlers in the main thread, so this
    holds whichever thread the kernel delivered the signal to."""
    take_sigint()
    server: Server | None = None
    requested: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: requested.append(signum))
    try:
        with bind_errors(listen):
            server = start()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C interrupts wait()
        if not requested:
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if server is not None:
            server.stop()
