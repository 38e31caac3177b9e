"""The client of a coordinator, for whoever dials one as a silo: a hospital's node, and a regional
aggregator upstream (to the central coordinator a region is one silo). Dial out, retry with
backoff, stream blobs, count the bytes.

Only transient failures (coordinator unreachable, restarting, deadline) are retried; a
refusal (wrong round, invalid update, permission) is raised at once as a CoordinatorRefusal
with the coordinator's message, because retrying it cannot succeed (coordinator.api.transport).

A silo is a service: when the coordinator stays away past the first burst of retries, a call
keeps trying with capped exponential backoff, each pause jittered by ±50 % so that silos do
not return in lockstep, for as long as it takes, unless the caller set `max_retry_s`, and says
in one log line every few minutes what it is waiting for. The call then goes on where it
stopped (an upload resumes), so nothing the caller holds is lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import receive_blob, serialized_blob_stream, sha256_hex
from coordinator.api.transport import call_with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 60.0  # the longest pause between two tries while the coordinator is away
WAITING_LOG_EVERY_S = 180.0  # how often a long outage is reported in the log
SOFTWARE_VERSION = "0.1.0"  # JoinRequest.software_version

_SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name
PUSH_BLOB_METHOD, FETCH_BLOB_METHOD = f"/{_SERVICE}/PushBlob", f"/{_SERVICE}/FetchBlob"


class ClientError(Exception):
    """Base of the errors of a call to a coordinator."""


class CoordinatorUnreachable(ClientError):
    """The coordinator stayed away for longer than the caller's `max_retry_s`."""


class CoordinatorRefusal(ClientError):
    """The coordinator answered with a refusal (a non-transient status); `code` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str, *, peer: str = "coordinator", what: str = "") -> None:
        super().__init__(f"{peer} refused {what + ' ' if what else ''}({code.name}): {message}")
        self.code = code


class CoordinatorClient:
    """One participant's calls to a coordinator; `silo` is the name it joins under."""

    def __init__(self, channel: grpc.Channel, *, silo: str, max_retries: int = 8, base_delay_s: float = 0.5,
                 max_retry_s: float | None = None, peer: str = "coordinator",
                 max_backoff_s: float = MAX_BACKOFF_S, waiting_log_every_s: float = WAITING_LOG_EVERY_S,
                 software_version: str = SOFTWARE_VERSION) -> None:
        """`max_retries`: quick retries of a failed call (each logged); after them the coordinator
        counts as away and the call is retried with backoff up to `max_backoff_s`, forever, or
        until `max_retry_s` seconds after the first failure, when CoordinatorUnreachable is raised.
        `peer` names the coordinator in messages (a region's: "central coordinator")."""
        self.stub = pb_grpc.FederationStub(channel)
        # PushBlob with pre-serialised chunks (no serializer: the bytes go out as they are).
        self._push_serialized = channel.stream_unary(PUSH_BLOB_METHOD, request_serializer=None,
                                                     response_deserializer=pb.PushReply.FromString)
        # FetchBlob whose chunks stay serialised: receive_blob reads data pieces as views.
        self._fetch_serialized = channel.unary_stream(FETCH_BLOB_METHOD, request_serializer=pb.BlobRef.SerializeToString,
                                                      response_deserializer=None)
        self.channel, self.silo, self.peer, self.software_version = channel, silo, peer, software_version
        self.max_retries, self.base_delay_s, self.max_retry_s = max_retries, base_delay_s, max_retry_s
        self.max_backoff_s, self.waiting_log_every_s = max_backoff_s, waiting_log_every_s
        self.bytes_up = 0
        self.bytes_down = 0

    def _try(self, what: str, fn: Callable[[], T], *, retries: int) -> T:
        def refused(code: grpc.StatusCode, details: str) -> CoordinatorRefusal:
            return CoordinatorRefusal(code, details, peer=self.peer, what=what)

        return call_with_retries(what, fn, peer=self.peer, max_retries=retries, base_delay_s=self.base_delay_s,
                                 refused=refused, unreachable=CoordinatorUnreachable)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            return self._try(what, fn, retries=self.max_retries)
        except CoordinatorUnreachable as first:
            last = first
        said_at: float | None = None
        attempt = 0
        while True:
            waited = time.monotonic() - started
            if self.max_retry_s is not None and waited >= self.max_retry_s:
                raise CoordinatorUnreachable(f"{last}; gave up after {waited:.0f} s (max_retry_s = {self.max_retry_s:g}; "
                                             f"leave it unset to wait for the {self.peer} as long as it takes)")
            if said_at is None or time.monotonic() - said_at >= self.waiting_log_every_s:
                log.warning("silo %s is waiting for the %s to %s: away for %.0f s (%s); retrying every %.0f s at most",
                            self.silo, self.peer, what, waited, last, self.max_backoff_s)
                said_at = time.monotonic()
            delay = min(self.max_backoff_s, self.base_delay_s * 2 ** min(attempt, 30)) * (0.5 + random.random())
            if self.max_retry_s is not None:
                delay = min(delay, max(0.0, self.max_retry_s - waited))
            time.sleep(delay)
            attempt += 1
            try:
                result = self._try(what, fn, retries=0)
            except CoordinatorUnreachable as e:
                last = e
                continue
            except CoordinatorRefusal:  # it answered, if only to refuse (a round that closed meanwhile): it is back
                self._reached(started, what)
                raise
            self._reached(started, what)
            return result

    def _reached(self, started: float, what: str) -> None:
        log.info("silo %s reached the %s again after %.0f s (%s)", self.silo, self.peer, time.monotonic() - started,
                 what)

    def _counting(self, chunks: Iterator[bytes], *, up: bool) -> Iterator[bytes]:
        """Serialised chunks as they cross the wire, counted (as the coordinator counts them)."""
        for chunk in chunks:
            if up:
                self.bytes_up += len(chunk)
            else:
                self.bytes_down += len(chunk)
            yield chunk

    # --- calls --------------------------------------------------------------------------------
    def join(self, modalities: list[str], wrap_public_key: bytes) -> None:
        req = pb.JoinRequest(silo=self.silo, modalities=modalities, wrap_public_key=wrap_public_key,
                             software_version=self.software_version)
        self._call("join", lambda: self.stub.Join(req, timeout=30))

    def exchange_heads(self, head: pb.SignedHead) -> pb.SignedHead:
        """Send this node's signed audit head; the coordinator's comes back."""
        head.node = self.silo
        return self._call("exchange audit heads", lambda: self.stub.ExchangeHeads(head, timeout=30))

    def pull_task(self, wait_s: float, deferred: list[str] | None = None) -> pb.Task:
        req = pb.PullTaskRequest(silo=self.silo, wait_s=wait_s, deferred_studies=deferred or [])
        task = self._call("pull task", lambda: self.stub.PullTask(req, timeout=wait_s + 30))
        self.bytes_up += req.ByteSize()
        self.bytes_down += task.ByteSize()
        return task

    def answer(self, answer: pb.ProposalAnswer) -> None:
        answer.silo = self.silo
        self._call("answer proposal", lambda: self.stub.AnswerProposal(answer, timeout=30))

    def fetch(self, study_id: str, kind: int, *, version: int = 0, max_bytes: int = 8 << 30) -> tuple[pb.BlobHeader, bytearray]:
        ref = pb.BlobRef(study_id=study_id, kind=kind, version=version, silo=self.silo)

        def go() -> tuple[pb.BlobHeader, bytearray]:
            return receive_blob(self._counting(self._fetch_serialized(ref, timeout=600), up=False), max_bytes=max_bytes)

        return self._call(f"fetch {pb.BlobKind.Name(kind)}", go)

    def push(self, header: pb.BlobHeader, data: bytes | bytearray) -> pb.PushReply:
        """Upload a blob; after a broken connection, resume where the coordinator's copy stopped."""
        header.ref.silo = self.silo
        header.size = len(data)
        if not header.sha256:
            header.sha256 = sha256_hex(data)
        view = memoryview(data)
        what = f"push {pb.BlobKind.Name(header.ref.kind)}"

        def go() -> pb.PushReply:
            held = self.stub.QueryUpload(header, timeout=30).size
            header.offset = held if 0 < held < len(view) else 0
            if header.offset:
                log.info("resuming the upload of %s at byte %d of %d", header.sha256[:12], header.offset, len(view))
            chunks = serialized_blob_stream(header, view[header.offset:], total=len(view))
            return self._push_serialized(self._counting(chunks, up=True), timeout=600)

        reply = self._call(what, go)
        if not reply.accepted:
            raise CoordinatorRefusal(grpc.StatusCode.FAILED_PRECONDITION, reply.reason, peer=self.peer, what=what)
        return reply

    def report_screen(self, report: pb.ScreenReport) -> None:
        report.silo = self.silo
        self._call("report screening scalars", lambda: self.stub.ReportScreen(report, timeout=30))

    def report(self, report: pb.MetricsReport) -> None:
        report.silo = self.silo
        self._call("report metrics", lambda: self.stub.ReportMetrics(report, timeout=30))
