"""The gRPC face of the Federation: identity, byte accounting, errors to status codes.

Every message is untrusted: the service checks who is calling (the TLS certificate in
secure mode), counts the bytes that cross the wire per study, round and silo, and turns the
coordinator's errors into gRPC status codes with the message intact. An unexpected error
is logged and answered INTERNAL; it never takes the server down.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from compliance.audit import AuditLog
from compliance.errors import ComplianceError
from compliance.witness import SignedHead, WitnessError, witness
from coordinator.analysis import mask_partner_keys
from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import BlobError, BlobTruncated, chunk_blob, read_chunk, receive_blob_to, serialized_data_chunks
from coordinator.api.protocol import TENSORS
from coordinator.auth import Authenticator
from coordinator.downloads import kind_name
from coordinator.errors import CoordinatorError, InvalidInput, NotFound, PermissionDenied, Refused
from coordinator.federation import Federation
from coordinator.inbound import InboundLimits, check_answer, check_report, check_silo_name
from coordinator.store import SiloRow
from coordinator.study_list import list_studies, other_participants, study_status

log = logging.getLogger(__name__)

_STATUS = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    Refused: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}
MAX_CONTROL_BLOB = 64 << 20  # key bundles and final models are bounded separately from updates
NO_HEADER = "a blob stream must start with a header chunk; send the BlobHeader first, then the data"


def rpc_errors(log_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a servicer method: our errors become their gRPC status with the message intact
    (a permission refusal is audited through the servicer's `audit`); anything unexpected is
    logged and answered INTERNAL, naming `log_name` as where to look."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(self, request, context)
            except CoordinatorError as e:
                code = next((c for t, c in _STATUS.items() if isinstance(e, t)), grpc.StatusCode.INVALID_ARGUMENT)
                if isinstance(e, PermissionDenied):
                    _audit_refusal(self, "auth_failure", method.__name__, context, str(e))
                elif method.__name__ in SILO_MESSAGES:
                    _audit_refusal(self, "update_refused", method.__name__, context, str(e))
                context.abort(code, str(e))
            except BlobError as e:
                if not isinstance(e, BlobTruncated):  # an interrupted upload is kept for a resume, not refused
                    _audit_refusal(self, "update_refused", method.__name__, context, f"blob stream: {e}")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"blob stream: {e}")
            except Exception:  # noqa: BLE001 - the server must survive any single bad call
                log.exception("internal error in %s", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see {log_name}")

        return wrapper

    return decorate


_rpc = rpc_errors("the coordinator log")
# What silos send: a refused one (bad hash, NaN, wrong shape, replay, oversized text) is audited.
SILO_MESSAGES = frozenset({"AnswerProposal", "PushBlob", "ReportMetrics", "ReportScreen", "ExchangeHeads"})


def _audit_refusal(servicer: Any, event: str, method: str, context: grpc.ServicerContext, reason: str) -> None:
    try:
        servicer.audit(event, method=method, peer=context.peer(), reason=reason[:300])
    except ComplianceError:  # never lose the refusal itself to a problem recording it
        log.exception("could not audit the refusal of %s", method)


class FederationService(pb_grpc.FederationServicer):
    def __init__(self, federation: Federation, auth: Authenticator, *, audit: Callable[..., None],
                 audit_log: AuditLog | None = None, limits: InboundLimits | None = None) -> None:
        self.fed = federation
        self.limits = limits or InboundLimits()  # sizes of what a silo may have stored
        self.auth = auth
        self.audit = audit
        self.audit_log = audit_log  # where silos' signed heads are witnessed

    def _round_now(self, study_id: str) -> int | None:
        try:
            return self.fed.current_round_of(study_id) if study_id else None
        except NotFound:
            return None

    def _count(self, study_id: str, silo: str, *, up: int = 0, down: int = 0, round_: int | None = None) -> None:
        """Attribute bytes to the round that was current when the call began (it may close the round)."""
        round_ = self._round_now(study_id) if round_ is None else round_
        if round_ is not None:
            self.fed.store.add_traffic(study_id, round_, silo, up=up, down=down)

    # --- silo side ---------------------------------------------------------------------------
    @_rpc
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        silo = self.auth.silo(context, request.silo)
        check_silo_name(silo, self.limits)
        self.fed.join(silo, list(request.modalities), request.wrap_public_key)
        return pb.JoinReply(coordinator="fedcare")

    @_rpc
    def PullTask(self, request: pb.PullTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        silo = self.auth.silo(context, request.silo)
        task = self.fed.next_task(silo, request.wait_s, frozenset(request.deferred_studies[:1000]))
        if task.kind == pb.TASK_PROPOSAL:
            task.other_silos.extend(other_participants(self.fed, task.study_id, silo))
        elif task.kind == pb.TASK_TRAIN:  # an analysis under masking: the partners' keys
            task.participant_keys.update(mask_partner_keys(self.fed, task))
        self._count(task.study_id, silo, up=request.ByteSize(), down=task.ByteSize(),
                    round_=task.round if task.kind == pb.TASK_TRAIN else None)
        return task

    def _record(self, request: Any, context: grpc.ServicerContext, record: Callable[[str, Any], None],
                check: Callable[[Any, InboundLimits], None] | None = None) -> pb.Ack:
        """A silo's answer, report or screening scalars: from whom, checked against the inbound limits,
        recorded by the Federation, its bytes counted against the round current when it arrived."""
        silo = self.auth.silo(context, request.silo)
        if check is not None:
            check(request, self.limits)
        round_ = self._round_now(request.study_id)
        record(silo, request)
        self._count(request.study_id, silo, up=request.ByteSize(), round_=round_)
        return pb.Ack(ok=True)

    @_rpc
    def AnswerProposal(self, request: pb.ProposalAnswer, context: grpc.ServicerContext) -> pb.Ack:
        return self._record(request, context, self.fed.answer_proposal, check_answer)

    @_rpc
    def FetchBlob(self, request: pb.BlobRef, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        if request.kind == pb.BLOB_FINAL_MODEL:  # the researcher (or auditor) downloads the released model
            self.auth.require(context, "researcher", "auditor")
            sha, data = self.fed.final_model(request.study_id)
            return chunk_blob(pb.BlobHeader(ref=request, sha256=sha, encoding=TENSORS), data)
        silo = self.auth.silo(context, request.silo)
        if request.kind == pb.BLOB_MODEL:  # every silo fetches the same version: its chunks are built once
            header = self.fed.model_for(silo, request)
            body = self.fed.blobs.serialized_chunks(header.sha256) if header.size else []
        else:
            header, data = self.fed.blob_for(silo, request)
            header.size = len(data)
            body = serialized_data_chunks(data)
        return self._counted(_prepend_header(header, body), request, silo)

    def _counted(self, chunks: Iterator[bytes], request: pb.BlobRef, silo: str) -> Iterator[bytes]:
        """Stream serialised chunks and count the bytes actually sent."""
        sent, round_ = 0, self._round_now(request.study_id)
        try:
            for chunk in chunks:
                sent += len(chunk)
                yield chunk
        finally:
            self._count(request.study_id, silo, up=request.ByteSize(), down=sent, round_=round_)

    @_rpc
    def PushBlob(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> pb.PushReply:
        """Chunks arrive serialised (see add_to_server): data pieces are hashed and written as views."""
        received = 0

        def counted() -> Iterator[bytes]:
            nonlocal received
            for chunk in request_iterator:
                received += len(chunk)
                yield chunk

        it = counted()
        first = next(it, None)
        try:
            kind, head = read_chunk(first) if first is not None else ("", None)
        except BlobError:
            kind = ""
        if kind != "header":
            raise InvalidInput(NO_HEADER)
        assert isinstance(head, pb.BlobHeader)
        first_header = head
        ref = first_header.ref
        silo = self.auth.silo(context, ref.silo)
        accept = {pb.BLOB_UPDATE: self.fed.accept_update, pb.BLOB_KEY_BUNDLE: self.fed.accept_key_bundle,
                  pb.BLOB_FINAL_MODEL: self.fed.accept_final_model}.get(ref.kind)
        if accept is None:
            raise InvalidInput(f"silos may not push blobs of kind {kind_name(ref.kind)}")
        self.fed.check_upload(silo, first_header)  # before a byte is kept: no partial for a non-participant
        round_ = self._round_now(ref.study_id)
        limit = MAX_CONTROL_BLOB if ref.kind == pb.BLOB_KEY_BUNDLE else self.fed.max_update_bytes(ref.study_id)
        try:
            partial = self.fed.blobs.partial_path(silo, first_header.sha256)
        except ValueError:
            raise InvalidInput(f"blob header: sha256 {first_header.sha256[:80]!r} is not a SHA-256 hex digest") from None
        resumed = partial.read_bytes() if first_header.offset and partial.exists() else b""
        try:
            # Straight to disk while hashing: an upload is never held in memory whole.
            with self.fed.blobs.incoming() as incoming:
                incoming.write(resumed)
                try:
                    header = receive_blob_to(_prepend(first, it), max_bytes=limit, write=incoming.write, resumed=resumed)
                except BlobTruncated:
                    # A cancelled call may end the request stream quietly instead of raising: a
                    # prefix of the declared blob is kept for a resume all the same.
                    incoming.keep_as(partial)
                    raise
                except BlobError:
                    partial.unlink(missing_ok=True)
                    raise
                except Exception:  # noqa: BLE001 - the connection broke: keep what arrived for a resume
                    incoming.keep_as(partial)
                    context.abort(grpc.StatusCode.CANCELLED, "upload interrupted; QueryUpload tells where to resume")
                partial.unlink(missing_ok=True)
                return accept(silo, header, incoming)
        finally:
            self._count(ref.study_id, silo, up=received, round_=round_)

    @_rpc
    def QueryUpload(self, request: pb.BlobHeader, context: grpc.ServicerContext) -> pb.PushReply:
        silo = self.auth.silo(context, request.ref.silo)
        try:
            partial = self.fed.blobs.partial_path(silo, request.sha256)
        except ValueError:
            raise InvalidInput("QueryUpload needs the blob's SHA-256") from None
        held = partial.stat().st_size if partial.exists() else 0
        return pb.PushReply(accepted=False, sha256=request.sha256, size=held)

    @_rpc
    def ReportMetrics(self, request: pb.MetricsReport, context: grpc.ServicerContext) -> pb.Ack:
        return self._record(request, context, self.fed.report_metrics, check_report)

    @_rpc
    def ReportScreen(self, request: pb.ScreenReport, context: grpc.ServicerContext) -> pb.Ack:
        return self._record(request, context, self.fed.report_screen)

    @_rpc
    def ExchangeHeads(self, request: pb.SignedHead, context: grpc.ServicerContext) -> pb.SignedHead:
        """Witness the silo's signed audit head in our log; answer with ours (compliance.witness)."""
        silo = self.auth.silo(context, request.node)
        if self.audit_log is None:
            raise Refused("this server keeps no audit log to witness heads in")
        if self.fed.store.get(SiloRow, silo) is None:
            raise Refused(f"silo {silo!r} has not joined; call Join first")
        try:
            witness(self.audit_log, SignedHead.from_message(request))
        except WitnessError as e:
            raise Refused(str(e)) from None
        return pb.SignedHead(**SignedHead.of(self.audit_log).as_dict())

    # --- researcher side ---------------------------------------------------------------------
    @_rpc
    def SubmitStudy(self, request: pb.SubmitStudyRequest, context: grpc.ServicerContext) -> pb.SubmitStudyReply:
        self.auth.require(context, "researcher")
        if len(request.spec_json) > 1 << 20:
            raise InvalidInput("study spec larger than 1 MiB")
        return pb.SubmitStudyReply(study_id=self.fed.submit_study(request.spec_json))

    @_rpc
    def GetStudyStatus(self, request: pb.StudyRef, context: grpc.ServicerContext) -> pb.StudyStatus:
        self.auth.require(context, "researcher", "auditor")
        return study_status(self.fed, self.fed.study(request.study_id), with_summary=True)

    @_rpc
    def ListStudies(self, request: pb.ListStudiesRequest, context: grpc.ServicerContext) -> pb.StudyList:
        self.auth.require(context, "researcher", "auditor")
        return list_studies(self.fed, request.limit)


def _prepend_header(header: pb.BlobHeader, body: list[bytes]) -> Iterator[bytes]:
    yield pb.Chunk(header=header).SerializeToString()
    yield from body


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _chunk_or_bytes(message: pb.Chunk | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(server: grpc.Server, service: FederationService) -> None:
    """Register every method of federation.proto's service, built from its descriptor.

    FetchBlob's serializer also passes pre-serialised chunks through: every silo fetches the
    same model version, so its chunks are serialised once and then sent without a copy.
    PushBlob has no deserializer: `read_chunk` parses each chunk, data pieces as views.
    """
    from google.protobuf import symbol_database

    db = symbol_database.Default()
    service_desc = pb.DESCRIPTOR.services_by_name["Federation"]
    handlers = {}
    for method in service_desc.methods:
        request_cls = db.GetSymbol(method.input_type.full_name)
        response_cls = db.GetSymbol(method.output_type.full_name)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming, method.server_streaming)]
        serializer = _chunk_or_bytes if method.name == "FetchBlob" else response_cls.SerializeToString
        # PushBlob reads its chunks serialised: data pieces are then hashed and written without copies.
        deserializer = None if method.name == "PushBlob" else request_cls.FromString
        handlers[method.name] = kind(getattr(service, method.name), request_deserializer=deserializer,
                                     response_serializer=serializer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_desc.full_name, handlers),))
