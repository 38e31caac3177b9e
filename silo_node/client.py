"""The silo's connection to the coordinator: dial out, retry with backoff, stream blobs.

Only transient failures (coordinator unreachable, restarting, deadline) are retried; a
refusal (wrong round, invalid update, permission) is raised at once as a CoordinatorRefusal
with the coordinator's message, because retrying it cannot succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import receive_blob, serialized_blob_stream, sha256_hex
from coordinator.api.transport import call_with_retries, open_channel  # noqa: F401 - re-exported: the silo's dial

log = logging.getLogger(__name__)
T = TypeVar("T")

_SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name
PUSH_BLOB_METHOD, FETCH_BLOB_METHOD = f"/{_SERVICE}/PushBlob", f"/{_SERVICE}/FetchBlob"


class SiloError(Exception):
    """Base of the silo node's errors."""


class CoordinatorUnreachable(SiloError):
    pass


class CoordinatorRefusal(SiloError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"coordinator refused ({code.name}): {message}")
        self.code = code


class CoordinatorClient:
    def __init__(self, channel: grpc.Channel, *, silo: str, max_retries: int = 8, base_delay_s: float = 0.5) -> None:
        self.stub = pb_grpc.FederationStub(channel)
        # PushBlob with pre-serialised chunks (no serializer: the bytes go out as they are).
        self._push_serialized = channel.stream_unary(PUSH_BLOB_METHOD, request_serializer=None,
                                                     response_deserializer=pb.PushReply.FromString)
        # FetchBlob whose chunks stay serialised: receive_blob reads data pieces as views.
        self._fetch_serialized = channel.unary_stream(FETCH_BLOB_METHOD, request_serializer=pb.BlobRef.SerializeToString,
                                                      response_deserializer=None)
        self.channel = channel
        self.silo = silo
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s
        self.bytes_up = 0
        self.bytes_down = 0

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retries(what, fn, peer="coordinator", max_retries=self.max_retries,
                                 base_delay_s=self.base_delay_s, refused=CoordinatorRefusal,
                                 unreachable=CoordinatorUnreachable)

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
        req = pb.JoinRequest(silo=self.silo, modalities=modalities, wrap_public_key=wrap_public_key, software_version="0.1.0")
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

        def go() -> pb.PushReply:
            held = self.stub.QueryUpload(header, timeout=30).size
            header.offset = held if 0 < held < len(view) else 0
            if header.offset:
                log.info("resuming the upload of %s at byte %d of %d", header.sha256[:12], header.offset, len(view))
            chunks = serialized_blob_stream(header, view[header.offset:], total=len(view))
            return self._push_serialized(self._counting(chunks, up=True), timeout=600)

        reply = self._call(f"push {pb.BlobKind.Name(header.ref.kind)}", go)
        if not reply.accepted:
            raise CoordinatorRefusal(grpc.StatusCode.FAILED_PRECONDITION, reply.reason)
        return reply

    def report_screen(self, report: pb.ScreenReport) -> None:
        report.silo = self.silo
        self._call("report screening scalars", lambda: self.stub.ReportScreen(report, timeout=30))

    def report(self, report: pb.MetricsReport) -> None:
        report.silo = self.silo
        self._call("report metrics", lambda: self.stub.ReportMetrics(report, timeout=30))
