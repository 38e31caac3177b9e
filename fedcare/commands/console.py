"""`fedcare console`: the researcher console (web) and console accounts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from console.addresses import RESEARCHER_DEFAULT_LISTEN
from fedcare.commands.common import (CONNECTION, DEFAULT_COORDINATOR, CoordOpt, UserError, check_files, configure_logging,
                                     console_tls, escape, node_config, public_keys, researcher_client)

console_app = typer.Typer(help="The researcher console (web), and console accounts.", rich_markup_mode=None)

# --- web consoles ------------------------------------------------------------------------------------


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
    tls_cert: Annotated[Optional[Path], typer.Option(help="serve HTTPS with this server certificate (PEM); users may "
                                                          "then sign in with their `fedcare pki` certificate")] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="the HTTPS server certificate's key")] = None,
    client_ca: Annotated[Optional[Path], typer.Option(help="the CA whose client certificates sign users in "
                                                           "(default: --ca-cert)")] = None,
    crl: Annotated[Optional[Path], typer.Option(help="the study CA's revocation list (PEM): revoked certificates "
                                                     "cannot sign in")] = None,
) -> None:
    """Serve the researcher console for the coordinator at --coordinator (studies, live curves, submission, audit)."""
    if ctx.invoked_subcommand is not None:
        return
    from console.researcher import create_app
    from console.serve import serve
    from console.audit_view import AuditSources

    configure_logging(False)
    tls = console_tls(tls_cert, tls_key, client_ca or ca_cert, crl)
    CONNECTION.update(ca_cert=ca_cert, cert=cert, key=key, insecure=insecure)
    sources = AuditSources(logs=log, ledgers=ledger, keys=public_keys(public_key, several=True))
    app_ = create_app(researcher_client(coordinator), state_dir=state_dir, coordinator=coordinator, audit_sources=sources,
                      certificates=tls.certificates() if tls else None)
    scheme = "https" if tls else "http"
    Console().print(f"researcher console at {scheme}://{listen}/ (add users with `fedcare console add-user "
                    f"--state-dir {state_dir}`{', or sign in with a study certificate' if tls else ''})",
                    soft_wrap=True, highlight=False)
    serve(app_, listen, tls=tls)



@console_app.command("add-user")
def console_add_user(
    user: Annotated[str, typer.Argument(help="the sign-in name")],
    role: Annotated[str, typer.Option(help="researcher, auditor or site-admin")],
    state_dir: Annotated[Optional[Path], typer.Option(help="the researcher console's state dir")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="a node.toml: a site console user")] = None,
    password: Annotated[str, typer.Option(envvar="FEDCARE_CONSOLE_PASSWORD", prompt=True, hide_input=True,
                                          confirmation_prompt=True, help="asked when not given")] = "",
    certificate: Annotated[Optional[Path], typer.Option(
        help="site console: pin this user's client certificate (PEM); it then signs them in over HTTPS")] = None,
) -> None:
    """Add a console user (or set their password and role); the password is stored scrypt-hashed."""
    from console.researcher import accounts_in
    from console.site import accounts_of

    if (state_dir is None) == (config is None):
        raise UserError("give --state-dir (researcher console) or --config node.toml (site console), one of them")
    if certificate is not None and config is None:
        raise UserError("--certificate pins a site console user (--config node.toml); the researcher console signs "
                        "in the study CA's researcher and auditor certificates by their role")
    check_files(("--certificate", certificate))
    store = accounts_in(state_dir) if state_dir is not None else accounts_of(node_config(config))
    account = store.add(user, password, role, certificate_pem=certificate.read_bytes() if certificate else None)
    Console().print(f"console user {escape(account.user)} ({account.role.value}) saved in {escape(str(store.path))}")
