"""Start the coordinator: `fedcare coordinator serve`.

One process: a gRPC server (threads), the Federation state machine over its SQLite (or
PostgreSQL) store, a blob folder, an audit log, and a ticker that enforces deadlines.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from compliance import file_problem
from compliance.durability import Durability
from compliance.node_log import open_node_log
from coordinator.auth import Authenticator
from coordinator.blobs import PARTIAL_MAX_AGE_S, BlobStore
from coordinator.errors import StateError
from coordinator.federation import Federation
from coordinator.inbound import InboundLimits
from coordinator.service import FederationService, add_to_server
from coordinator.store import Store, open_engine

log = logging.getLogger(__name__)

STATE_DATABASE = "coordinator.sqlite"  # the default SQLite store in the state directory
BLOB_DIR = "blobs"
EXPIRY_CHECK_S = 60.0  # how often abandoned partial uploads are looked for

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # No window growth by bandwidth probing: on a LAN it buys little, and it let every upload
    # stream buffer megabytes in gRPC, so memory grew with the number of silos.
    ("grpc.http2.bdp_probe", 0),
]


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (default: 8 per core).

    Every gRPC worker thread otherwise gets an arena of its own, keeps the chunk buffers it
    freed there, and the coordinator's resident memory grows with the number of concurrent
    streams, i.e. with the number of silos. Not glibc: nothing to do.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(M_ARENA_MAX, arenas) != 1:
            log.debug("mallopt(M_ARENA_MAX) refused; keeping glibc's default arenas")
    except (OSError, AttributeError):
        log.debug("not glibc; malloc arenas left as they are")


def listen_on(server: grpc.Server, config: Any) -> int:
    """Bind `server` to `config.listen`: mutual TLS from the config's certificates, or, with
    `config.insecure`, plain (local demos only). The port bound; an error if none."""
    if config.insecure:
        log.warning("INSECURE MODE: no TLS, silo identities are taken at their word. Local demos only.")
        port = server.add_insecure_port(config.listen)
    else:
        from coordinator.tls import server_credentials

        port = server.add_secure_port(config.listen, server_credentials(config))
    if port == 0:
        raise OSError(f"could not listen on {config.listen}")
    return port


class CoordinatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path
    listen: str = "127.0.0.1:50051"
    database: str | None = None  # SQLAlchemy URL; default: SQLite in state_dir
    insecure: bool = False
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    crl: Path | None = None
    workers: int = Field(default=32, ge=4)
    partial_upload_max_age_s: float = Field(default=PARTIAL_MAX_AGE_S, gt=0)
    inbound: InboundLimits = InboundLimits()  # sizes of names, reasons and metric maps a silo may send


class Coordinator:
    """The running coordinator: owns the server, the state and the ticker thread.

    `durability` is not configuration: `fedcare coordinator serve` always writes with
    `Durability.POWER_LOSS`; only `fedcare simulate` passes PROCESS_CRASH (compliance/durability.py)."""

    def __init__(self, config: CoordinatorConfig, *, durability: Durability = Durability.POWER_LOSS) -> None:
        self.config = config
        limit_malloc_arenas()  # before the server's threads exist
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        database = state / STATE_DATABASE
        problem = None if config.database else file_problem(database)
        if problem:
            raise StateError(f"state database {database} {problem}. Restore it from backup; the coordinator "
                             "will not start over it (studies and rounds would be lost)")
        self.audit_log = open_node_log(state, node="coordinator", role="coordinator",
                                       state_files=(STATE_DATABASE, BLOB_DIR), durability=durability)
        self.store = Store(open_engine(config.database or database, durability=durability))
        self.federation = Federation(self.store, BlobStore(state / BLOB_DIR, durability=durability), audit=self.audit)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), options=GRPC_OPTIONS)
        add_to_server(self.server, FederationService(self.federation, self._authenticator(state), audit=self.audit,
                                                     audit_log=self.audit_log, limits=config.inbound))
        self.port = listen_on(self.server, config)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_forever, name="coordinator-ticker", daemon=True)

    def _authenticator(self, state: Path) -> Authenticator:
        """Who may call; a revocation list that cannot be used stops the start here, audited."""
        c = self.config
        try:
            return Authenticator(insecure=c.insecure, ca_cert=c.ca_cert, crl=c.crl, state_dir=state)
        except StateError as e:
            self.audit("auth_failure", method="start", peer="", reason=str(e)[:300])
            raise

    def audit(self, event: str, **fields: Any) -> None:
        self.audit_log.append(event, **fields)

    def start(self) -> "Coordinator":
        self.server.start()
        self._ticker.start()
        log.info("coordinator listening on port %d (state in %s)", self.port, self.config.state_dir)
        return self

    def _tick_forever(self) -> None:
        expired_at = 0.0
        while not self._stop.wait(0.5):
            try:
                self.federation.tick()
                if time.monotonic() - expired_at >= EXPIRY_CHECK_S:
                    expired_at = time.monotonic()
                    self.federation.blobs.expire_partials(self.config.partial_upload_max_age_s)
            except Exception:  # noqa: BLE001 - a bad tick must not stop deadlines for good
                log.exception("deadline check failed")

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()
