"""What silos send in a round, checked and stored: updates, metrics, screening scalars, the final model.

Every message must name the open round and its nonce (a replayed or late one is refused)
and come from one of its participants; an asynchronous study's update goes to its buffer
instead, with its staleness (coordinator/buffer.py). An update is checked (weight, encoding,
layout, dtype, finiteness: coordinator/rounds.py) and added to the round's running aggregate
as it arrives; a refused one is audited with the reason. Each accepted message is audited as
`message_received`, the counterpart of the silo's `message_sent`, for reconciliation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

from coordinator.analysis import parse_release
from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import ProtocolError, StudyKind, check_screening_values, decode_screening_scalars
from coordinator.api.tensors import TensorFormatError, decode_tensors
from coordinator.blobs import BlobStore, Incoming
from coordinator.buffer import UpdateBuffer, is_async, staleness_weight
from coordinator.errors import InvalidInput, Refused
from coordinator.outcome import RoundOutcome
from coordinator.rounds import RoundAggregator
from coordinator.store import EnrollmentRow, MetricsRow, RoundRow, SkipRow, Store, StudyRow, UpdateRow, dumps
from coordinator.studies import Studies
from coordinator.versions import ModelVersions

MAX_METRIC_NAME = 64  # longer metric names are dropped


def finite_metrics(rep: pb.MetricsReport) -> dict[str, float]:
    """The report's metrics with names up to MAX_METRIC_NAME; InvalidInput if any is NaN or Inf."""
    if not all(math.isfinite(v) for v in rep.metrics.values()):
        raise InvalidInput("metrics contain NaN or Inf")
    return {k: float(v) for k, v in rep.metrics.items() if len(k) <= MAX_METRIC_NAME}


def check_same_model(silo: str, rep: pb.MetricsReport, others: Mapping[str, str]) -> None:
    """Every silo must have obtained the same model for a version (under CKKS each decrypts it itself):
    Refused, naming them, when `others` ({silo: sha256 of the model it evaluated}) differ from this report's."""
    differing = sorted(s for s, sha in others.items() if s != silo and sha and rep.model_sha256 and sha != rep.model_sha256)
    if differing:
        raise Refused(f"silo {silo} obtained a different model for version {rep.model_version} than "
                      f"{', '.join(differing)}: the aggregate was not the same for every silo")


def check_in_round(silo: str, round_: int, nonce: str, *, study_id: str, open_round: int, open_nonce: str,
                   participants: Collection[str]) -> None:
    """A silo's message in a round must name the open round and its nonce (a replayed or late one is
    refused) and come from one of its participants. A region checks the rounds it relays so too."""
    if round_ != open_round:
        why = f"round {round_} of study {study_id} is not open (current round {open_round})"
    elif nonce != open_nonce:
        why = f"round nonce does not match round {round_}: a replayed or late message"
    elif silo not in participants:
        why = f"silo {silo!r} is not a participant of round {round_}"
    else:
        return
    raise Refused(why)


def audit_received(audit: Callable[..., None], kind: str, silo: str, study: str, round_: int, message: Any) -> None:
    """`message_received` for a silo's message (its deterministic wire bytes): the counterpart of the
    silo's message_sent entry, for reconciliation (compliance.reconcile). A region records its silos' too."""
    wire = message.SerializeToString(deterministic=True)
    audit("message_received", study=study, silo=silo, kind=kind, round=round_, size=len(wire),
          sha256=hashlib.sha256(wire).hexdigest())


class Intake:
    def __init__(self, store: Store, blobs: BlobStore, studies: Studies, *, versions: ModelVersions,
                 rounds: RoundAggregator, buffer: UpdateBuffer, audit: Callable[..., None],
                 clock: Callable[[], float]) -> None:
        self.store, self.blobs, self.studies = store, blobs, studies
        self.versions, self.rounds, self.buffer = versions, rounds, buffer
        self.audit, self.clock = audit, clock

    def audit_received(self, kind: str, silo: str, study: str, round_: int, message: Any) -> None:
        audit_received(self.audit, kind, silo, study, round_, message)

    def check_round(self, study_id: str, silo: str, round_: int, nonce: str) -> tuple[StudyRow, RoundRow]:
        """The study and its open round, if the message names that round and its nonce and the silo takes part."""
        row = self.studies.row(study_id)
        rnd = self.store.get(RoundRow, study_id, row.current_round)
        if rnd is None or rnd.state != "open":
            raise Refused(f"round {round_} of study {study_id} is not open (current round {row.current_round})")
        check_in_round(silo, round_, nonce, study_id=study_id, open_round=rnd.number, open_nonce=rnd.nonce,
                       participants=rnd.participant_set())
        return row, rnd

    def check_upload(self, silo: str, header: pb.BlobHeader) -> None:
        """Refused unless the silo may start (or resume) this upload now: an update for the open
        round (or, in an asynchronous study, for its buffer), a final model for the finalizing round."""
        if header.ref.kind == pb.BLOB_UPDATE:
            self._buffer_or_round(silo, header)
        else:
            self.check_round(header.ref.study_id, silo, header.round, header.nonce)

    def _buffer_or_round(self, silo: str, header: pb.BlobHeader) -> tuple[StudyRow, RoundRow, int | None, UpdateRow | None]:
        """The round an update goes to, its staleness (asynchronous studies: the buffer, coordinator/buffer.py)
        and the update the silo already stored there, if any."""
        spec = self.studies.spec(header.ref.study_id)
        staleness = None
        if is_async(spec):
            row = self.studies.row(header.ref.study_id)
            retried = self.buffer.taken(row, silo, header)
            if retried is not None:
                return row, self.store.get(RoundRow, row.id, retried.round), None, retried
            rnd, staleness = self.buffer.place(row, spec, silo, header)
        else:
            row, rnd = self.check_round(header.ref.study_id, silo, header.round, header.nonce)
            if row.state != "running":
                raise Refused(f"study {row.id} is {row.state}; no updates are taken now")
        return row, rnd, staleness, self.store.get(UpdateRow, row.id, rnd.number, silo)

    def _check_weight(self, study_id: str, silo: str, weight: float) -> None:
        """A silo weighs in with at most the training samples it declared at enrollment (a region: its
        accepting silos' sum), so no participant can make FedAvg its own by declaring a huge weight."""
        enrollment = self.store.get(EnrollmentRow, study_id, silo)
        declared = enrollment.train_samples if enrollment is not None else 0
        if declared > 0 and weight > declared:
            raise InvalidInput(f"update weight {weight:g} exceeds the {declared} training samples silo {silo!r} "
                               "declared when it accepted the study; an update weighs at most its declared samples")

    def accept_update(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        row, rnd, staleness, existing = self._buffer_or_round(silo, header)
        if existing is not None:
            if existing.blob_sha == header.sha256:  # a retried upload: idempotent
                return pb.PushReply(accepted=True, sha256=existing.blob_sha, size=existing.size, reason="duplicate")
            raise Refused(f"silo {silo} already sent a different update for round {rnd.number}")
        spec = self.studies.spec(row.id)
        # Checked and added to the round's running aggregate as it arrives (O(model) memory);
        # a refused update is audited with the reason (NaN, dtype, layout, weight, encoding).
        try:
            if spec.kind is StudyKind.ANALYSIS:  # released statistics, checked against the study
                parse_release(spec, header.encoding, blob.view())
            else:
                self._check_weight(row.id, silo, header.weight)
                self.rounds.add_update(row, rnd, spec, header, blob.view(),
                                       scale=staleness_weight(spec, staleness) if staleness is not None else 1.0)
        except InvalidInput as e:
            self.audit("update_refused", study=row.id, silo=silo, round=rnd.number, reason=str(e)[:500])
            raise
        sha = blob.commit(header.sha256)
        if staleness is not None:
            self.buffer.record(rnd, silo, staleness)
        self.store.add(UpdateRow(study_id=row.id, round=rnd.number, silo=silo, blob_sha=sha, size=header.size,
                                 weight=header.weight, encoding=header.encoding,
                                 metadata_json=header.metadata_json or "{}", received_at=self.clock()),
                       *([rnd] if staleness is not None else []))
        self.audit("message_received", study=row.id, silo=silo, kind="update", round=rnd.number,
                   size=header.size, sha256=sha, **({"staleness": staleness} if staleness is not None else {}))
        return pb.PushReply(accepted=True, sha256=sha, size=header.size)

    def accept_final_model(self, silo: str, header: pb.BlobHeader, blob: Incoming) -> pb.PushReply:
        row, rnd = self.check_round(header.ref.study_id, silo, header.round, header.nonce)
        if row.state != "finalizing" or row.final_model_sha:
            raise Refused(f"study {row.id} does not expect a final model now")
        try:
            decode_tensors(blob.view(), expected=self.versions.layout(row.id))
        except TensorFormatError as e:
            raise InvalidInput(f"final model: {e}") from None
        row.final_model_sha = blob.commit(header.sha256)
        self.store.add(row)
        self.audit("message_received", study=row.id, silo=silo, kind="final_model", round=rnd.number,
                   size=header.size, sha256=row.final_model_sha)
        return pb.PushReply(accepted=True, sha256=row.final_model_sha, size=header.size)

    def report_metrics(self, silo: str, rep: pb.MetricsReport) -> None:
        row, rnd = self.check_round(rep.study_id, silo, rep.round, rep.nonce)
        self.audit_received("metrics", silo, row.id, rep.round, rep)
        if rep.skipped:
            if row.state != "running":
                raise Refused("a round can only be skipped while the study is running")
            if rep.budget_spent:  # an asynchronous study offers it no more tasks (coordinator/buffer.py)
                self.buffer.note_budget_spent(self.studies.spec(row.id), rnd, silo)
            self.store.add(SkipRow(study_id=row.id, round=rnd.number, silo=silo, reason=rep.skip_reason[:2000]), rnd)
            self.audit("round_skipped", study=row.id, silo=silo, round=rnd.number, reason=rep.skip_reason[:500])
            return
        outcome = RoundOutcome.of(rnd.outcome_json)
        releasing = (row.state == "finalizing" and silo == row.key_holder and outcome.release is not None
                     and rep.model_version == outcome.release.version)
        if rep.model_version != rnd.number - 1 and not releasing:
            raise Refused(f"metrics for model version {rep.model_version}; round {rnd.number} evaluates {rnd.number - 1}")
        if releasing and self.studies.spec(row.id).protocol.encrypted:
            outcome.release_evaluated = True
            rnd.outcome_json = outcome.to_json()
            self.store.add(rnd)
        self._check_same_aggregate(row, silo, rep)
        clean = finite_metrics(rep)
        self.store.add(MetricsRow(study_id=row.id, model_version=rep.model_version, silo=silo,
                                  metrics_json=dumps(clean), samples=int(rep.samples), model_sha=rep.model_sha256))

    def _check_same_aggregate(self, row: StudyRow, silo: str, rep: pb.MetricsReport) -> None:
        """`check_same_model` against the stored reports of the version; a refusal is audited."""
        shas = self.store.column(MetricsRow.model_sha, study_id=row.id, model_version=rep.model_version)
        if shas <= {rep.model_sha256, ""}:  # the same model everywhere: one distinct value, not N reports, read
            return
        others = {m.silo: m.model_sha for m in self.store.all(MetricsRow, study_id=row.id, model_version=rep.model_version)}
        try:
            check_same_model(silo, rep, others)
        except Refused as e:
            self.audit("update_refused", study=row.id, silo=silo, round=rep.round, reason=str(e)[:500])
            raise

    def report_screen(self, silo: str, rep: pb.ScreenReport) -> None:
        """The key holder's decryption of the round's screening scalars (ckks-screen)."""
        row, rnd = self.check_round(rep.study_id, silo, rep.round, rep.nonce)
        outcome = RoundOutcome.of(rnd.outcome_json)
        if silo != row.key_holder or outcome.screen_sha is None or outcome.screen_values is not None:
            raise Refused(f"silo {silo} is not expected to report screening scalars for round {rnd.number}")
        try:
            expected = len(decode_screening_scalars(self.blobs.get(outcome.screen_sha)))
            outcome.screen_values = check_screening_values(rep.values, expected)
        except ProtocolError as e:
            raise InvalidInput(str(e)) from None
        rnd.outcome_json = outcome.to_json()
        self.store.add(rnd)
        self.audit_received("screen_scalars", silo, row.id, rnd.number, rep)
