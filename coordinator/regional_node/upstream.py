"""The region's link to the central coordinator, where it is one silo: dial out, retry, stream blobs.

The same rules as a silo's client, from coordinator.api.transport: transient failures are
retried with backoff, a refusal is raised at once with the central coordinator's message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import chunk_blob, receive_blob, sha256_hex
from coordinator.api.transport import call_with_retries
from coordinator.errors import CoordinatorError

T = TypeVar("T")


class UpstreamError(CoordinatorError):
    """The central coordinator refused a call, or could not be reached after every retry."""


class UpstreamClient:
    def __init__(self, channel: grpc.Channel, *, name: str, max_retries: int = 8, base_delay_s: float = 0.5) -> None:
        self.stub = pb_grpc.FederationStub(channel)
        self.name = name
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        def refused(code: grpc.StatusCode, details: str) -> UpstreamError:
            return UpstreamError(f"central coordinator refused {what} ({code.name}): {details}")

        return call_with_retries(what, fn, peer="central coordinator", max_retries=self.max_retries,
                                 base_delay_s=self.base_delay_s, refused=refused, unreachable=UpstreamError)

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
