"""`fedcare audit`: verify audit logs and write compliance reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedcare.commands.common import HELP_STYLE, UserError, console, escape, public_keys

audit_app = typer.Typer(help="Verify audit logs and write compliance reports.", **HELP_STYLE)

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
    keys = public_keys(public_key, several=len(logs) > 1)
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
            Console().print(f"[green]OK[/] {escape(str(contents.path))}: {result.entries} entries, chain and signatures "
                            "intact", soft_wrap=True)
        else:
            failed.append((contents.path, result.reason))
    for path, reason in failed:
        console.print("[red]TAMPERED[/] " + escape(f"{path}: {reason}"), highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


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
                        keys=public_keys(public_key, several=True))
    Console().print(f"report written to {path}")
