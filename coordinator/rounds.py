"""The round aggregator: check updates as they arrive, aggregate them, store the next model version.

In the clear an update is the silo's model delta (float32 arrays in the shared layout, possibly
compressed by the study's codec), checked by the protocol (coordinator.api.protocol) and
aggregated by the study's robust rule; the server optimiser then steps on the aggregate
(StudyAggregation, whose state persists across rounds and, as a blob named in the round's
outcome, across a restart). Under CKKS the coordinator holds only the public context: it sums
the ciphertexts, weighted, into an encrypted average delta that only the silos can decrypt
(and on which each silo runs the same server step).

Downlink compression (`compression.downlink`, in the clear): version r is defined as version
r-1 plus the decoded compressed step, so the silos, which receive only that delta, hold the
coordinator's weights bit for bit. The full version is still stored (restarts, best version).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation import AggregationError, StreamingFedAvg
from coordinator.aggregation.screened import decide, encrypted_aggregate, scalars_needed
from coordinator.aggregation.state import StudyAggregation
from coordinator.api.codecs import build_codec
from coordinator.api.protocol import (
    ProtocolError,
    Rule,
    ServerOptimizerName,
    check_finite_model,
    check_update_header,
    decode_plain_update,
    encode_screening_scalars,
)
from coordinator.api.server_step import ServerStepError
from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorSpec, allocate_tensors, decode_tensors
from coordinator.blobs import BlobStore
from coordinator.buffer import staleness_scales
from coordinator.errors import InvalidInput
from coordinator.outcome import Downlink, RoundOutcome
from coordinator.store import ModelVersionRow, RoundRow, StudyRow, UpdateRow
from coordinator.versions import ModelVersions
from privacy.errors import HEError
from privacy.he import EncryptedSum
from privacy.he.screening import Screener

log = logging.getLogger(__name__)


@dataclass
class _Running:
    """The open round's running aggregate (None for rules that need all updates at once)."""

    sum: StreamingFedAvg | EncryptedSum | None
    count: int = 0


class RoundAggregator:
    def __init__(self, versions: ModelVersions, *, audit: Callable[..., None]) -> None:
        self.versions = versions
        self.store = versions.store
        self.blobs: BlobStore = versions.blobs
        self.audit = audit
        self._running: dict[tuple[str, int], _Running] = {}
        self._aggregation: dict[str, StudyAggregation] = {}

    # --- the study's rule and server optimiser, with their state ---------------------------------
    def aggregation(self, study_id: str, spec: StudySpec) -> StudyAggregation:
        """Built once per study; after a restart, restored from the last closed round's state blob."""
        if study_id not in self._aggregation:
            agg = StudyAggregation.for_spec(spec)
            study = self.store.get(StudyRow, study_id)
            for number in range(study.current_round if study is not None else 0, 0, -1):
                rnd = self.store.get(RoundRow, study_id, number)
                sha = RoundOutcome.of(rnd.outcome_json).state_sha if rnd is not None and rnd.state == "closed" else None
                if sha:
                    agg.restore(self.blobs.get(sha))
                    log.info("study %s: aggregation state restored from round %d", study_id, number)
                    break
            self._aggregation[study_id] = agg
        return self._aggregation[study_id]

    def adopt(self, study_id: str, aggregation: StudyAggregation) -> None:
        """A new study's rule and optimiser, as built when its spec was checked at submission."""
        self._aggregation[study_id] = aggregation

    # --- checks as an update arrives -----------------------------------------------------------
    def add_update(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, header, data: bytes | memoryview, *,
                   scale: float = 1.0) -> None:
        """Check an update (protocol checks: size, weight, encoding, metadata, layout, dtype,
        finiteness) and, for sum-based rules, add it to the round's running aggregate, weighted by
        its sample weight × `scale` (an asynchronous update's staleness weight, coordinator/buffer.py).
        InvalidInput says why it was refused."""
        protocol = spec.protocol
        try:
            check_update_header(protocol, weight=header.weight, encoding=header.encoding,
                                metadata_json=header.metadata_json, size=len(data),
                                limit=self.versions.max_update_bytes(row.id, spec))
            running = self._accumulator(row, rnd, spec)
            if isinstance(running.sum, EncryptedSum):
                running.sum.add(data, header.weight * scale)
            elif not protocol.encrypted:
                arrays = self.decode_plain(row.id, spec, data)
                if running.sum is not None:
                    running.sum.add(arrays, header.weight * scale)
        except ProtocolError as e:
            raise InvalidInput(str(e)) from None
        except (HEError, AggregationError) as e:
            raise InvalidInput(f"update refused: {e}") from None
        running.count += 1

    def decode_plain(self, study_id: str, spec: StudySpec, data: bytes | memoryview) -> list[np.ndarray]:
        return decode_plain_update(spec.protocol, data, self.versions.layout(study_id),
                                   max_values=self.versions.n_values(study_id))

    def _accumulator(self, row: StudyRow, rnd: RoundRow, spec: StudySpec) -> _Running:
        """The running aggregate of this round: encrypted sum under CKKS, streaming FedAvg in the clear.

        Other rules need every update at once and read them from disk when the round closes."""
        key = (row.id, rnd.number)
        if key not in self._running:
            self._running.clear()  # one open round at a time is aggregated in memory
            protocol = spec.protocol
            if protocol.screened:
                self._running[key] = _Running(None)  # decided only once the scalars are decrypted
            elif protocol.encrypted:
                self._running[key] = _Running(self._encrypted_sum(row, spec))
            else:
                self._running[key] = _Running(StreamingFedAvg() if spec.protocol.rule is Rule.FEDAVG else None)
        return self._running[key]

    def _encrypted_sum(self, row: StudyRow, spec: StudySpec) -> EncryptedSum:
        return EncryptedSum(self.blobs.get(row.public_context_sha), self.versions.he_values(row.id, spec),
                            spec.protocol.encryption.he_mode)

    def forget(self, study_id: str, round_: int) -> None:
        self._running.pop((study_id, round_), None)

    # --- aggregation ------------------------------------------------------------------------------
    def close(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow]) -> RoundOutcome:
        """Aggregate the round's updates into version `rnd.number`; the outcome says who counted."""
        updates = sorted(updates, key=lambda u: u.silo)
        kept = self._running.pop((row.id, rnd.number), None)
        # After a restart the running sum is gone (or partial): rebuild it from the stored updates.
        running = kept.sum if kept is not None and kept.count == len(updates) else None
        protocol = spec.protocol
        previous = RoundOutcome.of(rnd.outcome_json)
        scales = staleness_scales(spec, previous)
        if protocol.screened:
            outcome, data = self._close_screened(row, spec, updates, previous.screen_values or [])
            base = rnd.number - 1
        elif not protocol.encrypted:
            outcome, data = self._close_plain(row, rnd, spec, updates, running, scales)
            base = None
        else:
            outcome, data = self._close_encrypted(row, spec, updates, running, scales)
            base = rnd.number - 1
        outcome.staleness = previous.staleness  # the version's contributors, with how stale each was
        outcome.budget_spent = previous.budget_spent  # and who left the study with its budget spent
        before = self.versions.get(row.id, rnd.number - 1)
        sha = self.blobs.put(data, serve=protocol.downlink_encoding is None,  # silos fetch it, or its delta
                             replaces=before.blob_sha if before is not None else None)
        self.store.add(ModelVersionRow(study_id=row.id, version=rnd.number, blob_sha=sha,
                                       encoding=protocol.version_encoding, base_version=base))
        outcome.model_sha256 = sha
        self.audit("aggregation", study=row.id, round=rnd.number, rule=spec.aggregation.rule,
                   accepted=outcome.accepted, refused=outcome.refused, encrypted=protocol.encrypted,
                   **({"staleness": outcome.staleness} if scales else {}))
        return outcome

    def _close_plain(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow],
                     running: StreamingFedAvg | EncryptedSum | None,
                     scales: dict[str, float]) -> tuple[RoundOutcome, bytes | bytearray]:
        weights = [u.weight for u in updates]
        agg = self.aggregation(row.id, spec)
        # Σ wᵢsᵢΔᵢ / Σ wᵢ: the running sum weighed each update by wᵢsᵢ, so its mean is rescaled by
        # Σ wᵢsᵢ / Σ wᵢ; a rule over all updates aggregates the staleness-scaled sᵢΔᵢ (coordinator/buffer.py).
        shrink = sum(w * scales.get(u.silo, 1.0) for u, w in zip(updates, weights)) / sum(weights)
        if isinstance(running, StreamingFedAvg):
            result = running.result(release=True)  # the float64 sums go before the new version is built
        else:
            shrink = 1.0
            deltas = [self._scaled(self.decode_plain(row.id, spec, self.blobs.get(u.blob_sha)), scales.get(u.silo, 1.0))
                      for u in updates]
            result = agg.rule.aggregate(deltas, weights)
            del deltas
        outcome = RoundOutcome(accepted=[updates[i].silo for i in result.accepted],
                               refused={updates[i].silo: why for i, why in result.refused.items()},
                               total_weight=float(sum(weights[i] for i in result.accepted)))
        delta = [np.asarray(d if shrink == 1.0 else np.multiply(d, shrink), dtype=np.float32) for d in result.update]
        del result
        base_names, base = decode_tensors(self.blobs.get(self.versions.sha(row.id, rnd.number - 1)))
        if spec.aggregation.server_optimizer != ServerOptimizerName.NONE:
            try:
                stepped = agg.step(base, delta)
            except ServerStepError as e:
                raise AggregationError(str(e)) from None
            delta = [np.subtract(s, b, dtype=np.float32) for s, b in zip(stepped, base)]
        down = spec.protocol.downlink_encoding
        if down is not None:
            # Version r := version r-1 + decode(encode(delta)): exactly what the silos reconstruct.
            codec = build_codec(spec.compression.downlink, zstd=spec.compression.zstd)
            encoded = codec.encode(delta)
            delta = codec.decode(encoded, max_values=self.versions.n_values(row.id), max_arrays=len(delta))
            outcome.downlink = Downlink(encoding=down, sha256=self.blobs.put(encoded, serve=True), size=len(encoded))
        # base + delta written straight into the new version's encoded buffer (no third copy).
        data, new = allocate_tensors([TensorSpec(n, tuple(b.shape), "float32") for n, b in zip(base_names, base)])
        for b, d, out in zip(base, delta, new):
            np.add(b, d, out=out, dtype=np.float32)
        try:  # finite after the cast to float32, or the version is not made (issue 16 item 1)
            check_finite_model(new, f"version {rnd.number}")
        except ProtocolError as e:
            raise AggregationError(str(e)) from None
        outcome.state_sha = self.blobs.put(agg.state_bytes())
        return outcome, data

    @staticmethod
    def _scaled(delta: list[np.ndarray], scale: float) -> list[np.ndarray]:
        return delta if scale == 1.0 else [np.multiply(d, scale, dtype=np.float32) for d in delta]

    def _close_encrypted(self, row: StudyRow, spec: StudySpec, updates: list[UpdateRow],
                         running: StreamingFedAvg | EncryptedSum | None,
                         scales: dict[str, float]) -> tuple[RoundOutcome, bytes]:
        acc = running
        refused: dict[str, str] = {}
        if not isinstance(acc, EncryptedSum):
            acc = self._encrypted_sum(row, spec)
            for u in updates:
                try:
                    acc.add(self.blobs.get(u.blob_sha), u.weight * scales.get(u.silo, 1.0))
                except HEError as e:
                    refused[u.silo] = f"ciphertext refused: {e}"
        kept = [u for u in updates if u.silo not in refused]
        if not kept:
            raise InvalidInput("no update of the round could be summed")
        # The silos divide by the weights the ciphertexts were scaled by (Σ wᵢsᵢ) and, with stale
        # updates, multiply by Σ wᵢsᵢ / Σ wᵢ: the same Σ wᵢsᵢΔᵢ / Σ wᵢ as in the clear.
        scaled = float(sum(u.weight * scales.get(u.silo, 1.0) for u in kept))
        samples = float(sum(u.weight for u in kept))
        outcome = RoundOutcome(accepted=[u.silo for u in kept], refused=refused, total_weight=scaled,
                               post_scale=scaled / samples if scaled != samples else None)
        return outcome, acc.result()

    # --- robust rules under encryption ------------------------------------------------------------
    def screening_scalars(self, row: StudyRow, spec: StudySpec, updates: list[UpdateRow]) -> bytes:
        """The encrypted scalars the rule needs (squared norms or pairwise squared distances), for
        the key holder to decrypt. Nothing else about the updates is ever decrypted."""
        updates = sorted(updates, key=lambda u: u.silo)
        screener = Screener(self.blobs.get(row.public_context_sha))
        for u in updates:
            try:
                screener.add(self.blobs.get(u.blob_sha))
            except HEError as e:
                raise InvalidInput(f"update of {u.silo} cannot be screened: {e}") from None
        need = scalars_needed(self.aggregation(row.id, spec).rule, len(updates))
        cts = [screener.sq_norm(i) for i in need["sq_norms"]] + [screener.sq_distance(i, j) for i, j in need["sq_distances"]]
        return encode_screening_scalars(cts)

    def _close_screened(self, row: StudyRow, spec: StudySpec, updates: list[UpdateRow],
                        values: list[float]) -> tuple[RoundOutcome, bytes]:
        rule = self.aggregation(row.id, spec).rule
        need = scalars_needed(rule, len(updates))
        norms = values[: len(need["sq_norms"])] or None
        distances = dict(zip(need["sq_distances"], values[len(need["sq_norms"]):])) or None
        decision = decide(rule, [u.weight for u in updates], sq_norms=norms, sq_distances=distances)
        blobs = [self.blobs.get(u.blob_sha) for u in updates]
        data, total, post = encrypted_aggregate(self.blobs.get(row.public_context_sha), blobs, decision,
                                                n_values=self.versions.n_values(row.id),
                                                mode=spec.protocol.encryption.he_mode)
        outcome = RoundOutcome(accepted=[updates[i].silo for i in decision.accepted],
                               refused={updates[i].silo: why for i, why in decision.refused.items()},
                               scaled={updates[i].silo: f for i, f in decision.factors.items() if f != 1.0},
                               total_weight=total, post_scale=post)
        return outcome, data
