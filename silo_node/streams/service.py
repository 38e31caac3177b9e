"""`fedcare silo stream`: the node's stream receivers (MQTT, HTTPS) feeding its stream store until stopped."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pipelines.deid import Deidentifier
from pipelines.wearables.stream_store import StreamStore, StreamWriter

from .intake import StreamIntake
from .settings import StreamsConfig

log = logging.getLogger(__name__)
STREAMS_DIR = "streams"  # under the node's state_dir


def stream_store_dir(state_dir: Path) -> Path:
    """Where the node keeps its stream store (the receivers write it, the node's studies snapshot it)."""
    return Path(state_dir) / STREAMS_DIR


class StreamService:
    """The store, its writer and the configured receivers; `run()` blocks until `stop()` (or Ctrl-C)."""

    def __init__(self, config: StreamsConfig, *, state_dir: Path, pseudonym_key: bytes) -> None:
        self.config = config
        self.store = StreamStore(stream_store_dir(state_dir))
        self.writer = StreamWriter(self.store, capacity=config.queue_batches)
        self.intake = StreamIntake(self.store, self.writer, Deidentifier(pseudonym_key), config)
        self.mqtt = None
        if config.mqtt is not None:
            from .mqtt import MqttReceiver

            self.mqtt = MqttReceiver(config.mqtt, self.intake)

    def run(self) -> None:
        threads = []
        if self.mqtt is not None:
            threads.append(threading.Thread(target=self.mqtt.run, name="mqtt", daemon=True))
        for t in threads:
            t.start()
        try:
            if self.config.http is not None:
                from .http import serve

                serve(self.config.http, self.intake)  # returns on Ctrl-C / SIGTERM
            else:
                for t in threads:
                    t.join()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
        self.writer.close()
        log.info("streams stopped: %s", self.store.counts())
        self.store.close()
