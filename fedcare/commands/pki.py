"""`fedcare pki`: the study CA and its certificates (mutual TLS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedcare.commands.common import HELP_STYLE, UserError
from fedcare.pki import ROLES

pki_app = typer.Typer(help="Issue the study CA and certificates (mutual TLS).", **HELP_STYLE)

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
