"""The region's downstream gRPC face: the coordinator protocol, as its silos expect it.

Silos point their node.toml at the region and run unchanged. What a region does not serve
is refused with a status that says why: studies are submitted to the central coordinator,
screening scalars (`ckks-screen`) are not relayed, and an interrupted upload restarts from
its first byte (QueryUpload always answers 0: the region keeps no partial uploads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import chunk_blob, receive_blob
from coordinator.auth import Authenticator
from coordinator.downloads import check_own_key, kind_name
from coordinator.errors import InvalidInput, Refused
from coordinator.inbound import InboundLimits, check_answer, check_report, check_silo_name
from coordinator.regional_node.region import Region
from coordinator.service import NO_HEADER, rpc_errors

MAX_KEY_BUNDLE = 64 << 20
MAX_BLOB = 8 << 30  # updates and final models: the study's own limit (from the round's task) applies first


_rpc = rpc_errors("the regional aggregator's log")


class RegionalService(pb_grpc.FederationServicer):
    def __init__(self, region: Region, auth: Authenticator, *, audit: Callable[..., None],
                 limits: InboundLimits | None = None) -> None:
        self.region = region
        self.limits = limits or InboundLimits()  # checked here too: what the region keeps and relays upstream
        self.auth = auth
        self.audit = audit

    @_rpc
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        silo = self.auth.silo(context, request.silo)
        check_silo_name(silo, self.limits)
        self.region.join(silo, list(request.modalities), request.wrap_public_key)
        return pb.JoinReply(coordinator=f"fedcare regional aggregator {self.region.name}")

    @_rpc
    def PullTask(self, request: pb.PullTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        silo = self.auth.silo(context, request.silo)
        return self.region.next_task(silo, request.wait_s, frozenset(request.deferred_studies[:1000]))

    def _take(self, request: Any, context: grpc.ServicerContext, check: Callable[[Any, InboundLimits], None],
              take: Callable[[str, Any], None]) -> pb.Ack:
        """A silo's message: its caller identified, its free text within the inbound limits, then taken."""
        silo = self.auth.silo(context, request.silo)
        check(request, self.limits)
        take(silo, request)
        return pb.Ack(ok=True)

    @_rpc
    def AnswerProposal(self, request: pb.ProposalAnswer, context: grpc.ServicerContext) -> pb.Ack:
        return self._take(request, context, check_answer, self.region.answer_proposal)

    @_rpc
    def FetchBlob(self, request: pb.BlobRef, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        if request.kind == pb.BLOB_FINAL_MODEL:
            raise Refused("a regional aggregator does not release final models; fetch it from the central coordinator")
        silo = self.auth.silo(context, request.silo)
        if request.kind == pb.BLOB_MODEL:
            upstream_header, data = self.region.model(silo, request.study_id, request.version)
            header = pb.BlobHeader()
            header.CopyFrom(upstream_header)
            header.ref.CopyFrom(request)
        elif request.kind == pb.BLOB_WRAPPED_KEY:
            check_own_key(silo, request)
            data = self.region.wrapped_key(silo, request.study_id)
            header = pb.BlobHeader(ref=request)
        elif request.kind == pb.BLOB_PUBLIC_CONTEXT:
            data = self.region.public_context(silo, request.study_id)
            header = pb.BlobHeader(ref=request)
        elif request.kind == pb.BLOB_SCREEN_SCALARS:
            raise Refused("screening scalars (ckks-screen) are not relayed by a regional aggregator")
        else:
            raise InvalidInput(f"unknown blob kind {request.kind}")
        header.sha256 = ""  # chunk_blob hashes what is actually sent
        return chunk_blob(header, data)

    @_rpc
    def PushBlob(self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext) -> pb.PushReply:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "header":
            raise InvalidInput(NO_HEADER)
        ref = first.header.ref
        silo = self.auth.silo(context, ref.silo)
        if first.header.offset:
            raise InvalidInput("a regional aggregator keeps no partial uploads; send the blob from offset 0")
        limit = MAX_KEY_BUNDLE if ref.kind == pb.BLOB_KEY_BUNDLE else MAX_BLOB
        header, data = receive_blob(_prepend(first, request_iterator), max_bytes=limit)
        blob = bytes(data)
        if ref.kind == pb.BLOB_UPDATE:
            self.region.accept_update(silo, header, blob)
        elif ref.kind == pb.BLOB_KEY_BUNDLE:
            self.region.accept_key_bundle(silo, ref.study_id, blob, header.sha256)
        elif ref.kind == pb.BLOB_FINAL_MODEL:
            self.region.accept_final_model(silo, header, blob)
        else:
            raise InvalidInput(f"silos may not push blobs of kind {kind_name(ref.kind)}")
        return pb.PushReply(accepted=True, sha256=header.sha256, size=header.size)

    @_rpc
    def QueryUpload(self, request: pb.BlobHeader, context: grpc.ServicerContext) -> pb.PushReply:
        self.auth.silo(context, request.ref.silo)
        return pb.PushReply(accepted=False, sha256=request.sha256, size=0)

    @_rpc
    def ReportMetrics(self, request: pb.MetricsReport, context: grpc.ServicerContext) -> pb.Ack:
        return self._take(request, context, check_report, self.region.report_metrics)

    @_rpc
    def ReportScreen(self, request: pb.ScreenReport, context: grpc.ServicerContext) -> pb.Ack:
        self.auth.silo(context, request.silo)
        raise Refused("screening scalars (ckks-screen) are not relayed by a regional aggregator")

    @_rpc
    def SubmitStudy(self, request: pb.SubmitStudyRequest, context: grpc.ServicerContext) -> pb.SubmitStudyReply:
        raise Refused(f"this is regional aggregator {self.region.name}; submit studies to the central coordinator")

    @_rpc
    def GetStudyStatus(self, request: pb.StudyRef, context: grpc.ServicerContext) -> pb.StudyStatus:
        raise Refused(f"this is regional aggregator {self.region.name}; ask the central coordinator for a study's status")


def _prepend(first: pb.Chunk, rest: Iterator[pb.Chunk]) -> Iterator[pb.Chunk]:
    yield first
    yield from rest
