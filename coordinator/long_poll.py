"""PullTask's long poll, shared by the coordinator and the regional aggregator."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from coordinator.api import federation_pb2 as pb

MAX_WAIT_S = 60.0  # a silo's wait_s beyond this is cut: a call must not hold a server thread for long
RECHECK_S = 1.0  # deadlines and timers move without a notify; look again at least this often


def long_poll(changed: threading.Condition, wait_s: float, find: Callable[[], pb.Task | None]) -> pb.Task:
    """`find()`'s task as soon as it has one, else TASK_WAIT once `wait_s` (at most MAX_WAIT_S) has passed
    (`find`'s own TASK_WAIT, which says why, if it gave one: that is no work, so the poll goes on).

    The caller holds `changed`'s lock; `find` runs under it, and the wait releases it until state
    changes (a notify) or RECHECK_S passes."""
    deadline = time.monotonic() + max(0.0, min(wait_s, MAX_WAIT_S))
    while True:
        task = find()
        remaining = deadline - time.monotonic()
        if (task is not None and task.kind != pb.TASK_WAIT) or remaining <= 0:
            return task or pb.Task(kind=pb.TASK_WAIT)
        changed.wait(timeout=min(remaining, RECHECK_S))
