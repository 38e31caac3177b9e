"""Check a server's `--listen HOST:PORT` before gRPC binds it, so a mistake is one clear line.

gRPC's own failure is `RuntimeError: Failed to bind to address ...`, the same for a typo, a
port already in use and an address this machine does not have; this names which.
"""

from __future__ import annotations

import errno
import socket


class ListenError(Exception):
    """A listen address that cannot be served; the message names it and what to do."""


def parse_listen(address: str, *, option: str = "--listen") -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets, `[::]:50051`) as (host, port); ListenError otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenError(f"{option} {address!r} is not HOST:PORT with a port from 1 to 65535; "
                          "e.g. 0.0.0.0:50051 (every interface) or 127.0.0.1:50051 (this machine only)")
    return host, int(port)


def check_listen(address: str, *, option: str = "--listen") -> None:
    """Refuse an address that does not parse, is not this machine's, or whose port is taken."""
    host, port = parse_listen(address, option=option)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ListenError(f"{option} {address}: host {host!r} does not resolve; give an IP address or "
                          "a name of this machine") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
        try:
            probe.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ListenError(f"{option} {address}: port {port} is already in use by another process "
                                  f"(see `ss -ltnp 'sport = :{port}'`); stop it or choose another port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ListenError(f"{option} {address}: {host} is not an address of this machine; "
                                  "use 0.0.0.0 for every interface") from None
            if e.errno == errno.EACCES:
                raise ListenError(f"{option} {address}: port {port} needs privileges; choose a port above 1023") from None
            raise ListenError(f"{option} {address}: cannot listen there ({e.strerror})") from None
