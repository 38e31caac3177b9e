"""The client side of the wire, shared by everything that dials a coordinator (a silo, a region
upstream): channel options, which failures are transient, and retrying with backoff.

Only transient failures (unreachable, restarting, deadline) are retried; a refusal (wrong
round, invalid update, permission) is raised at once, because retrying it cannot succeed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def open_channel(target: str, *, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def call_with_retries(what: str, fn: Callable[[], T], *, peer: str, max_retries: int, base_delay_s: float,
                      refused: Callable[[grpc.StatusCode, str], Exception],
                      unreachable: Callable[[str], Exception]) -> T:
    """`fn()`, retried with jittered exponential backoff (at most 30 s) on transient failures.

    A refusal raises `refused(code, details)` at once; the last transient failure raises
    `unreachable(message)`, the message naming `what`, `peer`, the tries and the last status.
    """
    for attempt in range(max_retries + 1):
        try:
            return fn()
        except grpc.RpcError as e:
            code = e.code()
            if code not in TRANSIENT:
                raise refused(code, e.details() or "") from None
            if attempt == max_retries:
                raise unreachable(f"{what}: {peer} unreachable after {attempt + 1} tries ({code.name}: {e.details()})") from None
            delay = min(30.0, base_delay_s * 2**attempt) * (0.5 + random.random())
            log.warning("%s failed (%s); retrying in %.1f s", what, code.name, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
