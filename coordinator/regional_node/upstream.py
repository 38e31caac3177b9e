"""The region's link to the central coordinator, where it is one silo: dial out, retry, stream blobs.

The same rules as a silo's client (silo_node.client, which the coordinator room may not
import): transient failures are retried with backoff, a refusal is raised at once with the
central coordinator's message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import chunk_blob, receive_blob, sha256_hex
from coordinator.errors import CoordinatorError

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


class UpstreamError(CoordinatorError):
    """The central coordinator refused a call, or could not be reached after every retry."""


def open_upstream_channel(target: str, *, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


class UpstreamClient:
    def __init__(self, channel: grpc.Channel, *, name: str, max_retries: int = 8, base_delay_s: float = 0.5) -> None:
        self.stub = pb_grpc.FederationStub(channel)
        self.name = name
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except grpc.RpcError as e:
                code = e.code()
                if code not in TRANSIENT:
                    raise UpstreamError(f"central coordinator refused {what} ({code.name}): {e.details()}") from None
                if attempt == self.max_retries:
                    raise UpstreamError(f"{what}: central coordinator unreachable after {attempt + 1} tries "
                                        f"({code.name}: {e.details()})") from None
                delay = min(30.0, self.base_delay_s * 2**attempt) * (0.5 + random.random())
                log.warning("%s failed (%s); retrying in %.1f s", what, code.name, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def join(self, modalities: list[str], wrap_public_key: bytes) -> None:
        req = pb.JoinRequest(silo=self.name, modalities=modalities, wrap_public_key=wrap_public_key,
                             software_version="0.1.0+regional")
        self._call("join", lambda: self.stub.Join(req, timeout=30))

    def pull_task(self, wait_s: float, deferred: list[str]) -> pb.Task:
        req = pb.PullTaskRequest(silo=self.name, wait_s=wait_s, deferred_studies=deferred)
        return self._call("pull task", lambda: self.stub.PullTask(req, timeout=wait_s + 30))

    def answer(self, answer: pb.ProposalAnswer) -> None:
        answer.silo = self.name
        self._call("answer proposal", lambda: self.stub.AnswerProposal(answer, timeout=30))

    def fetch(self, study_id: str, kind: int, *, version: int = 0, max_bytes: int = 8 << 30) -> tuple[pb.BlobHeader, bytes]:
        ref = pb.BlobRef(study_id=study_id, kind=kind, version=version, silo=self.name)

        def go() -> tuple[pb.BlobHeader, bytes]:
            header, data = receive_blob(self.stub.FetchBlob(ref, timeout=600), max_bytes=max_bytes)
            return header, bytes(data)

        return self._call(f"fetch {pb.BlobKind.Name(kind)}", go)

    def push(self, header: pb.BlobHeader, data: bytes) -> pb.PushReply:
        header.ref.silo = self.name
        header.sha256 = sha256_hex(data)
        header.offset = 0
        reply = self._call(f"push {pb.BlobKind.Name(header.ref.kind)}",
                           lambda: self.stub.PushBlob(chunk_blob(header, data), timeout=600))
        if not reply.accepted:
            raise UpstreamError(f"central coordinator did not accept the {pb.BlobKind.Name(header.ref.kind)}: {reply.reason}")
        return reply

    def report(self, report: pb.MetricsReport) -> None:
        report.silo = self.name
        self._call("report metrics", lambda: self.stub.ReportMetrics(report, timeout=30))
