"""Start a regional aggregator: `fedcare coordinator regional --upstream HOST:PORT --listen HOST:PORT`.

One process: a gRPC server for the region's silos (threads), the Region state, an audit log,
and the relay thread that is the region's one connection to the central coordinator.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from compliance.node_log import open_node_log
from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.client import SOFTWARE_VERSION, CoordinatorClient
from coordinator.api.transport import open_channel
from coordinator.auth import Authenticator
from coordinator.regional_node.config import RegionalConfig
from coordinator.regional_node.region import Region
from coordinator.regional_node.relay import Relay
from coordinator.regional_node.service import RegionalService
from coordinator.server import GRPC_OPTIONS, listen_on

log = logging.getLogger(__name__)


def _upstream_credentials(config: RegionalConfig) -> grpc.ChannelCredentials | None:
    if config.insecure:
        return None
    assert config.ca_cert and config.upstream_cert and config.upstream_key  # checked by RegionalConfig
    for what, path in (("ca_cert", config.ca_cert), ("upstream_cert", config.upstream_cert),
                       ("upstream_key", config.upstream_key)):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path}: file not found")
    return grpc.ssl_channel_credentials(root_certificates=config.ca_cert.read_bytes(),
                                        private_key=config.upstream_key.read_bytes(),
                                        certificate_chain=config.upstream_cert.read_bytes())


class RegionalAggregator:
    """The running regional aggregator: owns the downstream server and the upstream relay thread."""

    def __init__(self, config: RegionalConfig) -> None:
        self.config = config
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.audit_log = open_node_log(state, node=config.name, role="coordinator", state_files=("keys",))
        channel = open_channel(config.upstream, credentials=_upstream_credentials(config))
        # To the central coordinator the region is one silo, with a silo's client: an outage is waited out.
        self.upstream = CoordinatorClient(channel, silo=config.name, max_retries=config.max_retries,
                                          peer="central coordinator", software_version=f"{SOFTWARE_VERSION}+regional")
        self.region = Region(config.name, fetch_model=self._fetch_model, audit=self.audit,
                             expected_silos=config.expected_silos, enrollment_timeout_s=config.enrollment_timeout_s,
                             keys_dir=state / "keys")
        self.relay = Relay(self.region, self.upstream, config, audit=self.audit)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), options=GRPC_OPTIONS)
        auth = Authenticator(insecure=config.insecure, ca_cert=config.ca_cert, crl=config.crl, state_dir=state)
        pb_grpc.add_FederationServicer_to_server(RegionalService(self.region, auth, audit=self.audit, limits=config.inbound), self.server)
        self.port = listen_on(self.server, config)
        self._stop = threading.Event()
        self._relay_thread = threading.Thread(target=self.relay.run, args=(self._stop,), name="regional-relay", daemon=True)

    def audit(self, event: str, **fields: Any) -> None:
        self.audit_log.append(event, **fields)

    def _fetch_model(self, study_id: str, version: int) -> tuple[pb.BlobHeader, bytes]:
        header, data = self.upstream.fetch(study_id, pb.BLOB_MODEL, version=version)
        return header, bytes(data)

    def start(self) -> "RegionalAggregator":
        self.server.start()
        self._relay_thread.start()
        log.info("regional aggregator %s listening on port %d, upstream %s", self.config.name, self.port,
                 self.config.upstream)
        return self

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self.server.stop(grace).wait()
        self.upstream.channel.close()  # ends a call that waits for the central coordinator; the relay then stops

    def wait(self) -> None:
        self.server.wait_for_termination()
