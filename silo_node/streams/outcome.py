"""What became of one streamed message: the answer a receiver gives its sender (MQTT PUBACK or not, an HTTP status)."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    STORED = "stored"  # committed to disk: acknowledge
    QUARANTINED = "quarantined"  # malformed: recorded with its reason, no sample stored
    REFUSED = "refused"  # well-formed but over the device's rate limit: recorded, no sample stored
    BUSY = "busy"  # the store is behind: nothing recorded, the sender retries
