"""Where a streamed message enters the silo, whichever receiver took it: validate, de-identify, rate-limit, store.

`StreamIntake.offer` parses the message (`silo_node.streams.messages`), replaces the patient
reference by the keyed pseudonym and the device id by a keyed token (`pipelines.deid`: the same
pseudonym the EHR, imaging and wearable files of that patient get), charges the device's token
bucket, and queues the samples for the store's writer. The receiver learns the `Outcome` through
`done`, only after the store committed (STORED) or recorded why not (QUARANTINED, REFUSED; each also
counted and audited through `silo_node.streams.refusals`); BUSY means nothing was recorded and the
sender must retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from pipelines.deid import Deidentifier
from pipelines.errors import SignalError
from pipelines.wearables.stream_store import (
    SampleBatch,
    StoreBusy,
    StreamStore,
    StreamWriter,
)

from .messages import parse_message
from .outcome import Outcome
from .refusals import RefusalAudit
from .settings import RateSettings, StreamsConfig

log = logging.getLogger(__name__)
RATE_LIMITED = "rate_limited"


#: done(outcome, reason or None)
Done = Callable[[Outcome, str | None], None]


class TokenBucket:
    """Per-device rate limit: `rate` samples per second sustained, `burst` at once (the classic token bucket)."""

    def __init__(self, settings: RateSettings) -> None:
        self.rate, self.burst = settings.samples_per_s, settings.burst
        self._tokens: dict[str, tuple[float, float]] = {}  # device -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, device: str, n: int) -> bool:
        with self._lock:
            now = time.monotonic()
            tokens, last = self._tokens.get(device, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            ok = tokens >= n
            self._tokens[device] = (tokens - n if ok else tokens, now)
            return ok

    def retry_after_s(self, n: int) -> int:
        return max(1, int(n / self.rate + 0.999))


class StreamIntake:
    """Validate, de-identify, rate-limit and queue one message (see the module docstring)."""

    def __init__(self, store: StreamStore, writer: StreamWriter, deid: Deidentifier, config: StreamsConfig,
                 refusals: RefusalAudit) -> None:
        self.store, self.writer, self.deid, self.config, self.refusals = store, writer, deid, config, refusals
        self.limits = TokenBucket(config.rate)
        self.stats: Counter = Counter()

    def device_token(self, device: str) -> str:
        """The keyed token that names `device` in the store, the quarantine and the logs (never its own id)."""
        return self.deid.reference(f"device:{device}")

    def quarantine(self, *, device: str, via: str, error: SignalError, done: Done) -> None:
        """A malformed message: recorded with its reason, counted and audited, then `done(QUARANTINED, reason)`."""
        if self.refusals.record(Outcome.QUARANTINED, error.reason, via):  # the first of its interval: its own row
            self.store.quarantine(f"{via} device {self.device_token(device)}", error)  # the token: stays de-identified
        self.stats[f"quarantined_{error.reason}"] += 1
        done(Outcome.QUARANTINED, error.reason)

    def offer(self, *, device: str, patient: str, payload: bytes, via: str, done: Done, wait_s: float = 0.0) -> None:
        """`device` and `patient` as the sender names them (topic levels or URL path); `via`: "mqtt" or "http"."""
        token = self.device_token(device)
        try:
            if not device or not patient:
                raise SignalError("names no device or no patient; expected fedcare/<site>/<device>/<patient-ref>",
                                  reason="bad_topic")
            parsed = parse_message(payload, max_bytes=self.config.max_message_bytes,
                                   max_samples=self.config.max_samples_per_message,
                                   validation=self.config.fhir_validation)
        except SignalError as e:
            self.quarantine(device=device, via=via, error=e, done=done)
            return
        pid = self.deid.pseudonym(patient)
        batches = [SampleBatch(pid, token, channel, t, v) for channel, t, v in parsed]
        n = sum(len(b) for b in batches)
        if not self.limits.take(device, n):
            if self.refusals.record(Outcome.REFUSED, RATE_LIMITED, via, samples=n):
                self.store.refuse(token, RATE_LIMITED, n)
            self.stats["refused"] += 1
            done(Outcome.REFUSED, RATE_LIMITED)
            return

        def committed(error: BaseException | None) -> None:
            self.stats["stored" if error is None else "failed"] += 1
            done(Outcome.STORED if error is None else Outcome.BUSY, None if error is None else "store_failed")

        try:
            self.writer.submit(batches, committed, wait_s=wait_s)
        except StoreBusy:
            self.stats["busy"] += 1
            done(Outcome.BUSY, "store_busy")
