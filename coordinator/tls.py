"""Server-side TLS: the coordinator's certificate, and client certificates required (mTLS)."""

from __future__ import annotations

from typing import Any

import grpc


def server_credentials(config: Any) -> grpc.ServerCredentials:
    """Mutual TLS: clients must present a certificate signed by the study CA."""
    missing = [n for n in ("ca_cert", "server_cert", "server_key") if getattr(config, n) is None]
    if missing:
        raise ValueError(f"secure mode needs {', '.join(missing)} (see `fedcare pki`), or --insecure for a local demo")
    return grpc.ssl_server_credentials(
        [(config.server_key.read_bytes(), config.server_cert.read_bytes())],
        root_certificates=config.ca_cert.read_bytes(),
        require_client_auth=True,
    )
