"""Serving a console: uvicorn on one address, the site console bound to loopback unless told otherwise."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette

from console.addresses import SITE_DEFAULT_LISTEN
from console.client_certs import ConsoleTLS
from console.errors import ConsoleError

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConsoleError(f"--listen {listen!r} is not HOST:PORT; use e.g. {SITE_DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def serve(app: Starlette, listen: str, *, tls: ConsoleTLS | None = None) -> None:
    """Serve ``app`` on ``listen`` (HOST:PORT) until stopped; over TLS, asking for a client certificate, with ``tls``."""
    host, port = split_listen(listen)
    log.info("console at %s://%s:%d/", "https" if tls else "http", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False,
                **(tls.uvicorn_options() if tls else {}))
