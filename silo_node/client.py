"""The silo's connection to the coordinator: `coordinator.api.client.CoordinatorClient`, the one
client a silo node and a regional aggregator (upstream) both use; it dials out, waits out an
outage with backoff, and streams blobs. The names the node and its commands import are here.
"""

from __future__ import annotations

from coordinator.api.client import (
    WAITING_LOG_EVERY_S,
    ClientError,
    CoordinatorClient,
    CoordinatorRefusal,
    CoordinatorUnreachable,
)
from coordinator.api.transport import open_channel

SiloError = ClientError  # what reaches a hospital's operator from the node's link: a refusal, or an outage past max_retry_s

__all__ = ["WAITING_LOG_EVERY_S", "CoordinatorClient", "CoordinatorRefusal", "CoordinatorUnreachable", "SiloError",
           "open_channel"]
