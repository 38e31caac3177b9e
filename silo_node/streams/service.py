"""`fedcare silo stream`: the node's stream receivers (MQTT, HTTPS) feeding its stream store until stopped."""

from __future__ import annotations

import logging
from pathlib import Path

from compliance.audit import AuditLog
from compliance.node_log import open_node_log
from pipelines.deid import Deidentifier
from pipelines.wearables.stream_store import StreamStore, StreamWriter
from pipelines.wearables.stream_windows import WindowKeeper, pairs_of
from silo_node.state_files import STATE_FILES, STREAMS_DIR

from .intake import StreamIntake
from .refusals import RefusalAudit
from .settings import StreamsConfig

log = logging.getLogger(__name__)


def stream_store_dir(state_dir: Path) -> Path:
    """Where the node keeps its stream store (the receivers write it, the node's studies snapshot it)."""
    return Path(state_dir) / STREAMS_DIR


def open_stream_audit(state_dir: Path, *, node: str) -> AuditLog:
    """The node's own audit log (the one `silo_node.node` writes), opened before the stream store is created."""
    return open_node_log(Path(state_dir), node=node, role="silo", state_files=STATE_FILES)


class StreamService:
    """The store, its writer and the configured receivers; `run()` blocks until `stop()` (or Ctrl-C).

    Refusals are written to `audit`, the node's audit log (`open_stream_audit`), which the caller closes.
    """

    def __init__(self, config: StreamsConfig, *, state_dir: Path, pseudonym_key: bytes, audit: AuditLog) -> None:
        self.config = config
        self.store = StreamStore(stream_store_dir(state_dir))
        self.windows = WindowKeeper(self.store.connect, every_s=config.window_every_s)  # incremental windowing
        self.writer = StreamWriter(self.store, capacity=config.queue_batches,
                                   on_commit=lambda batches: self.windows.touched(pairs_of(batches)))
        self.refusals = RefusalAudit(audit, self.store, interval_s=config.audit_interval_s)
        self.intake = StreamIntake(self.store, self.writer, Deidentifier(pseudonym_key), config, self.refusals)
        self.mqtt = None
        if config.mqtt is not None:
            from .mqtt import MqttReceiver

            try:
                self.mqtt = MqttReceiver(config.mqtt, self.intake)
            except Exception:
                self.stop()
                raise

    def run(self) -> None:
        """Serve until stopped; raises `MqttRefused` (one line) when the broker refuses the silo's sign-in or TLS."""
        try:
            if self.mqtt is not None:
                self.mqtt.start()
            if self.config.http is not None:
                from .http import serve

                serve(self.config.http, self.intake)  # returns on Ctrl-C / SIGTERM
            elif self.mqtt is not None:
                self.mqtt.join()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
        self.writer.close()
        self.windows.close()
        self.refusals.close()
        log.info("streams stopped: %s", self.store.counts())
        self.store.close()
