"""What the region gathers from its silos for one upstream task, and the one answer it forwards.

- `KeygenWork`: when the central coordinator picks the region as the study's key holder, one silo
  of the region generates the keys and wraps the secret for every recipient of the KEYGEN task
  (the region's members as "<region>/<member>", coordinator.key_recipients); the region checks
  the bundle with the coordinator's own check (coordinator.keystore.open_bundle), keeps its
  members' wrapped keys (it cannot open them) and forwards the bundle upstream. When the key
  holder is elsewhere, `keys_from_upstream` takes the same material from the central coordinator;
  both go through `region_keys`.
- `RoundWork`: a training round relayed to every member silo; their updates are aggregated into
  ONE update (the study's rule in the clear, a ciphertext sum under CKKS) whose weight is the
  sum of the accepted weights, and their evaluations into one sample-weighted metrics report.
- `FinalizeWork`: the final evaluation relayed to every member; one silo publishes the final
  model when the central coordinator asks the region to.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.aggregation import AggregationError
from coordinator.api import federation_pb2 as pb
from coordinator.api.codecs import ErrorFeedback
from coordinator.api.protocol import (
    Codec,
    KeyBundle,
    ProtocolError,
    RegionMembers,
    UpdateMetadata,
    check_update_header,
    decode_plain_update,
    decode_wrapped_keys,
)
from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorFormatError, TensorSpec, decode_tensors, encode_tensors
from coordinator.errors import InvalidInput, Refused
from coordinator.intake import check_in_round, check_same_model, finite_metrics
from coordinator.key_recipients import participants_of
from coordinator.keystore import open_bundle, public_only
from coordinator.regional import EncryptedRegionalAggregate, RegionalAggregate
from coordinator.release import pool
from privacy.errors import HEError

log = logging.getLogger(__name__)


@dataclass
class Work:
    """One upstream task relayed to some of the region's silos under a regional nonce."""

    upstream: pb.Task
    spec: StudySpec
    participants: list[str]
    nonce: str
    deadline: float

    def task_for(self, silo: str) -> pb.Task | None:
        raise NotImplementedError

    def answered(self, silo: str) -> bool:
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        return all(self.answered(s) for s in self.participants)

    @property
    def expired(self) -> bool:
        return time.time() >= self.deadline

    def check(self, silo: str, round_: int, nonce: str) -> None:
        """As at the coordinator (coordinator.intake): the relayed round, the region's own nonce, a participant."""
        check_in_round(silo, round_, nonce, study_id=self.upstream.study_id, open_round=self.upstream.round,
                       open_nonce=self.nonce, participants=self.participants)


class MetricsBook:
    """Members' evaluations of one model version, combined sample-weighted (as the central summary does)."""

    def __init__(self, model_version: int) -> None:
        self.model_version = model_version
        self.reports: dict[str, pb.MetricsReport] = {}

    def add(self, silo: str, rep: pb.MetricsReport) -> None:
        if rep.model_version != self.model_version:
            raise Refused(f"metrics for model version {rep.model_version}; this task evaluates {self.model_version}")
        finite_metrics(rep)
        check_same_model(silo, rep, {s: r.model_sha256 for s, r in self.reports.items()})
        self.reports[silo] = rep

    def combined(self, upstream: pb.Task) -> pb.MetricsReport | None:
        if not self.reports:
            return None
        reps = list(self.reports.values())
        metrics = pool((r.metrics, r.samples) for r in reps) or {}
        sha = next((r.model_sha256 for r in reps if r.model_sha256), "")
        return pb.MetricsReport(study_id=upstream.study_id, round=upstream.round, nonce=upstream.nonce,
                                model_version=self.model_version, metrics=metrics,
                                samples=sum(r.samples for r in reps), model_sha256=sha)


# --- keys --------------------------------------------------------------------------------------------
@dataclass
class KeyMaterial:
    """What the region holds of a study's CKKS keys: the public context and its silos' wrapped keys."""

    public_context: bytes
    wrapped: dict[str, bytes]

    def to_json(self) -> bytes:
        return KeyBundle(public_context=self.public_context, wrapped=self.wrapped).to_json()


def region_keys(public_context: bytes, region_blob: bytes, members: list[str]) -> KeyMaterial:
    """The region's share of a study's keys, wherever its key holder is: the public context (checked
    by the caller: `public_only`) and its members' wrapped keys from the region's blob
    `{member: base64(wrapped)}` (coordinator.key_recipients), as the coordinator keeps it."""
    try:
        wrapped = decode_wrapped_keys(region_blob)
    except ProtocolError as e:
        raise InvalidInput(f"the region's wrapped keys: {e}") from None
    missing = sorted(set(members) - set(wrapped))
    if missing:
        raise InvalidInput(f"the study's key holder wrapped no key for member(s) {', '.join(missing)} of this region")
    return KeyMaterial(public_context=public_context, wrapped={s: wrapped[s] for s in members})


def keys_from_upstream(public: bytes, wrapped_blob: bytes, members: list[str]) -> KeyMaterial:
    """The region's keys as the central coordinator serves them when the key holder is outside the
    region: the public context, and the region's wrapped-key blob."""
    return region_keys(public_only(public, "public context from the central coordinator"), wrapped_blob, members)


@dataclass
class KeygenWork(Work):
    participant_keys: dict[str, bytes] = field(default_factory=dict)
    bundle: bytes | None = None  # as the key holder silo sent it, and as the region forwards it

    @property
    def key_holder(self) -> str:
        return self.participants[0]

    def task_for(self, silo: str) -> pb.Task | None:
        if silo != self.key_holder or self.bundle is not None:
            return None
        return pb.Task(kind=pb.TASK_KEYGEN, study_id=self.upstream.study_id, participant_keys=self.participant_keys,
                       spec_json=self.upstream.spec_json)

    def answered(self, silo: str) -> bool:
        return silo != self.key_holder or self.bundle is not None

    def accept_bundle(self, silo: str, data: bytes, members: list[str], region: str) -> KeyMaterial:
        """Check the key holder's bundle as the central coordinator does (coordinator.keystore:
        every recipient the task names, no secret in the public context) and keep the region's
        members' wrapped keys, which neither the region nor the central coordinator can open. The
        bundle goes upstream as it is; a refused one is not kept."""
        if silo != self.key_holder or self.bundle is not None:
            raise Refused(f"silo {silo} is not expected to send keys for study {self.upstream.study_id}")
        public, blobs, _ = open_bundle(data, participants_of(self.participant_keys))
        keys = region_keys(public, blobs[region], members)
        self.bundle = data
        return keys


# --- training rounds -----------------------------------------------------------------------------------
@dataclass
class Forward:
    """The region's answer to one training round."""

    metrics: pb.MetricsReport | None
    update: tuple[pb.BlobHeader, bytes] | None
    skip_reason: str = ""
    audit: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundWork(Work):
    keys: KeyMaterial | None = None
    n_values: int = 0  # CKKS: values per encrypted update (the model, or the round's random-k share)
    feedback: ErrorFeedback | None = None  # top-k / random-k residual of the region's forwarded update
    updates: dict[str, pb.BlobHeader] = field(default_factory=dict)
    metadata: dict[str, UpdateMetadata] = field(default_factory=dict)
    skips: dict[str, str] = field(default_factory=dict)
    metrics: MetricsBook = field(init=False)
    _plain: RegionalAggregate | None = field(default=None, init=False)
    _cipher: EncryptedRegionalAggregate | None = field(default=None, init=False)
    _layout: list[TensorSpec] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.metrics = MetricsBook(self.upstream.model_version)

    def task_for(self, silo: str) -> pb.Task | None:
        if self.answered(silo):
            return None
        t = self.upstream
        return pb.Task(kind=pb.TASK_TRAIN, study_id=t.study_id, round=t.round, nonce=self.nonce, spec_json=t.spec_json,
                       model_version=t.model_version, round_seed=t.round_seed, max_update_bytes=t.max_update_bytes)

    def answered(self, silo: str) -> bool:
        return silo in self.updates or silo in self.skips

    def skip(self, silo: str, reason: str) -> None:
        if self.answered(silo):
            raise Refused(f"silo {silo} already answered round {self.upstream.round}")
        self.skips[silo] = reason

    def add_update(self, silo: str, header: pb.BlobHeader, data: bytes) -> None:
        if self.answered(silo):
            raise Refused(f"silo {silo} already answered round {self.upstream.round}")
        try:  # the protocol's key-free checks, as at the central coordinator
            meta = check_update_header(self.spec.protocol, weight=header.weight, encoding=header.encoding,
                                       metadata_json=header.metadata_json, size=len(data),
                                       limit=self.upstream.max_update_bytes or len(data))
            if not self.spec.protocol.encrypted:
                self._plain_aggregate().add(self._decode_plain(data), header.weight)
            else:
                self._cipher_aggregate().add(data, header.weight)
        except ProtocolError as e:
            raise InvalidInput(str(e)) from None
        except (HEError, AggregationError) as e:
            raise InvalidInput(f"update refused: {e}") from None
        self.updates[silo] = header
        self.metadata[silo] = meta

    def _plain_aggregate(self) -> RegionalAggregate:
        if self._plain is None:
            a = self.spec.aggregation
            self._plain = RegionalAggregate(a.rule, dict(a.params))
        return self._plain

    def _cipher_aggregate(self) -> EncryptedRegionalAggregate:
        if self._cipher is None:
            if self.keys is None:
                raise Refused("the region holds no public context for this study")
            self._cipher = EncryptedRegionalAggregate(self.keys.public_context, self.n_values,
                                                      self.spec.protocol.encryption.he_mode)
        return self._cipher

    def _decode_plain(self, data: bytes) -> list[np.ndarray]:
        """A plaintext update as float32 arrays; every member's must have the first one's layout
        (the central coordinator checks the forwarded update against the model's own layout)."""
        protocol = self.spec.protocol
        arrays = decode_plain_update(protocol, data, self._layout, max_values=max(1, self.upstream.max_update_bytes // 4))
        if self._layout is None:
            names = (decode_tensors(data)[0] if protocol.codec is Codec.NONE
                     else [f"{i}" for i in range(len(arrays))])
            self._layout = [TensorSpec(n, tuple(a.shape), "float32") for n, a in zip(names, arrays)]
        return arrays

    def forward(self) -> Forward:
        """Metrics and ONE update (or the reason the region skips the round) for the central coordinator."""
        metrics = self.metrics.combined(self.upstream)
        accepted = sorted(self.updates)
        if not accepted:
            reasons = "; ".join(f"{s}: {r}" for s, r in sorted(self.skips.items())) or "no silo answered in time"
            return Forward(metrics, None, skip_reason=f"region: no update from its silos ({reasons})"[:2000],
                           audit={"accepted": [], "skipped": sorted(self.skips)})
        if self._plain is not None:
            arrays, weight = self._plain.forward()
            data = self._encode_plain(arrays)
            norm = float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))
        else:
            data, weight = self._cipher_aggregate().forward()
            norm = max(self.metadata[s].update_norm or 0.0 for s in accepted)
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=self.upstream.study_id, kind=pb.BLOB_UPDATE),
                               round=self.upstream.round, nonce=self.upstream.nonce, weight=weight,
                               encoding=self.spec.update_encoding(), metadata_json=self._metadata(norm).to_json())
        return Forward(metrics, (header, data),
                       audit={"accepted": accepted, "skipped": sorted(self.skips), "weight": weight})

    def _encode_plain(self, arrays: list[np.ndarray]) -> bytes:
        protocol = self.spec.protocol
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        if protocol.codec is Codec.NONE:
            assert self._layout is not None
            return encode_tensors([t.name for t in self._layout], arrays)
        # Random-k of an aggregate of the same round's random-k updates keeps exactly their
        # coordinates (lossless); top-k carries what it drops to the next round (error feedback).
        coder = self.feedback if self.feedback is not None else protocol.uplink_codec()
        return coder.encode(arrays, seed=self.upstream.round_seed)

    def _metadata(self, norm: float) -> UpdateMetadata:
        """Per-silo accounting stays at the silos; upstream sees the region's worst ε and its mean loss."""
        worst = max((m.privacy for m in self.metadata.values()), key=lambda p: p.epsilon or 0.0)
        losses = [(self.metadata[s].train_loss, h.weight) for s, h in self.updates.items()]
        losses = [(x, w) for x, w in losses if x is not None and math.isfinite(x)]
        loss = sum(x * w for x, w in losses) / sum(w for _, w in losses) if losses else None
        return UpdateMetadata(privacy=worst, train_loss=loss, update_norm=norm,
                              region=RegionMembers(silos=sorted(self.updates), skipped=sorted(self.skips)))


# --- finalization ----------------------------------------------------------------------------------------
@dataclass
class FinalizeWork(Work):
    final_model: bytes | None = None
    metrics: MetricsBook = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = MetricsBook(self.upstream.model_version)

    @property
    def publisher(self) -> str | None:
        return self.participants[0] if self.upstream.publish_model and self.participants else None

    def task_for(self, silo: str) -> pb.Task | None:
        if self.answered(silo):
            return None
        t = self.upstream
        return pb.Task(kind=pb.TASK_FINALIZE, study_id=t.study_id, round=t.round, nonce=self.nonce,
                       spec_json=t.spec_json, model_version=t.model_version, publish_model=silo == self.publisher)

    def answered(self, silo: str) -> bool:
        published = silo != self.publisher or self.final_model is not None
        return silo in self.metrics.reports and published

    def accept_final_model(self, silo: str, data: bytes) -> None:
        if silo != self.publisher or self.final_model is not None:
            raise Refused(f"silo {silo} is not expected to publish the final model of study {self.upstream.study_id}")
        try:
            decode_tensors(data)
        except TensorFormatError as e:
            raise InvalidInput(f"final model: {e}") from None
        self.final_model = data
