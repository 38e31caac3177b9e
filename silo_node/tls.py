"""Client-side TLS: the silo presents its certificate and trusts only the study CA."""

from __future__ import annotations

import grpc

from silo_node.config import TLSConfig


def channel_credentials(tls: TLSConfig | None) -> grpc.ChannelCredentials:
    if tls is None:
        raise ValueError("node.toml has no [tls] table; set it, or insecure = true for a local demo")
    for what, path in (("ca_cert", tls.ca_cert), ("cert", tls.cert), ("key", tls.key)):
        if not path.exists():
            raise FileNotFoundError(f"[tls] {what} = {path}: file not found")
    return grpc.ssl_channel_credentials(root_certificates=tls.ca_cert.read_bytes(), private_key=tls.key.read_bytes(),
                                        certificate_chain=tls.cert.read_bytes())
