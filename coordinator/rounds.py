"""Closing a round: check updates as they arrive, aggregate them, store the next model version.

In the clear an update is the silo's model delta (float32 arrays in the shared layout) and
the study's robust rule aggregates the deltas. Under CKKS the coordinator holds only the
public context: it checks each ciphertext blob's framing and sums them, weighted, into an
encrypted average delta that only the silos can decrypt.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from coordinator.aggregation import build_rule
from coordinator.api import federation_pb2 as pb
from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorFormatError, TensorSpec, decode_tensors, encode_tensors
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput
from coordinator.store import ModelVersionRow, RoundRow, Store, StudyRow, UpdateRow, dumps
from privacy.errors import HEError
from privacy.he import EncryptedSum, context_has_secret_key

log = logging.getLogger(__name__)

PLAIN_ENCODING = "tensors"
CKKS_BYTES_PER_VALUE_LIMIT = 80  # generous bound over every CKKS mode's wire size (about 8-60 B/value)


def he_mode(spec: StudySpec) -> str:
    return spec.privacy.encryption.removeprefix("ckks-")


class RoundCloser:
    def __init__(self, store: Store, blobs: BlobStore, *, audit: Callable[..., None]) -> None:
        self.store = store
        self.blobs = blobs
        self.audit = audit
        self._layouts: dict[str, list[TensorSpec]] = {}

    # --- the expected shape of things -------------------------------------------------------
    def layout(self, study_id: str, spec: StudySpec) -> list[TensorSpec]:
        if study_id not in self._layouts:
            v0 = self.store.get(ModelVersionRow, study_id, 0)
            names, arrays = decode_tensors(self.blobs.get(v0.blob_sha))
            self._layouts[study_id] = [TensorSpec(n, tuple(a.shape), "float32") for n, a in zip(names, arrays)]
        return self._layouts[study_id]

    def n_values(self, study_id: str, spec: StudySpec) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.layout(study_id, spec))

    def max_update_bytes(self, study_id: str, spec: StudySpec) -> int:
        n = self.n_values(study_id, spec)
        per_value = CKKS_BYTES_PER_VALUE_LIMIT if spec.privacy.encryption != "none" else 4
        return n * per_value + (1 << 20)

    def version_sha(self, study_id: str, version: int) -> str:
        return self.store.get(ModelVersionRow, study_id, version).blob_sha

    def version_metadata(self, study_id: str, version: ModelVersionRow) -> str:
        meta: dict[str, Any] = {"version": version.version, "encoding": version.encoding}
        if version.base_version is not None:
            meta["base_version"] = version.base_version
            rnd = self.store.get(RoundRow, study_id, version.version)
            meta["total_weight"] = json.loads(rnd.outcome_json or "{}").get("total_weight")
        return dumps(meta)

    # --- checks as an update arrives -----------------------------------------------------------
    def validate_update(self, row: StudyRow, spec: StudySpec, header: pb.BlobHeader, data: bytes) -> None:
        limit = self.max_update_bytes(row.id, spec)
        if len(data) > limit:
            raise InvalidInput(f"update of {len(data)} bytes exceeds the study's limit of {limit} bytes")
        if spec.privacy.encryption == "none":
            if header.encoding != PLAIN_ENCODING:
                raise InvalidInput(f"update encoding {header.encoding!r}; this study expects {PLAIN_ENCODING!r}")
            self.decode_plain(row.id, spec, data)
        elif header.encoding != spec.privacy.encryption:
            raise InvalidInput(f"update encoding {header.encoding!r}; this study expects {spec.privacy.encryption!r}")
        try:
            json.loads(header.metadata_json or "{}")
        except ValueError:
            raise InvalidInput("update metadata is not valid JSON") from None

    def decode_plain(self, study_id: str, spec: StudySpec, data: bytes) -> list[np.ndarray]:
        try:
            return decode_tensors(data, expected=self.layout(study_id, spec))[1]
        except TensorFormatError as e:
            raise InvalidInput(f"update: {e}") from None

    # --- CKKS key material ------------------------------------------------------------------------
    def store_key_bundle(self, row: StudyRow, data: bytes, participants: list[str]) -> tuple[str, dict[str, str]]:
        """Split the key holder's bundle; refuse a 'public' context that carries a secret key."""
        try:
            bundle = json.loads(data)
            public = base64.b64decode(bundle["public_context"], validate=True)
            wrapped = {s: base64.b64decode(bundle["wrapped"][s], validate=True) for s in participants}
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInput(f"key bundle is malformed or lacks a participant's wrapped key: {e}") from None
        try:
            has_secret = context_has_secret_key(public)
        except HEError as e:
            raise InvalidInput(f"key bundle: the public context does not load: {e}") from None
        if has_secret:
            # The coordinator must never hold the secret key: refuse and do not store it.
            raise InvalidInput("key bundle: the 'public' context carries a secret key; refused and not stored")
        return self.blobs.put(public), {s: self.blobs.put(w) for s, w in wrapped.items()}

    # --- aggregation ------------------------------------------------------------------------------
    def close(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow]) -> dict[str, Any]:
        updates = sorted(updates, key=lambda u: u.silo)
        weights = [u.weight for u in updates]
        if spec.privacy.encryption == "none":
            outcome, data, encoding = self._close_plain(row, rnd, spec, updates, weights)
            base = None
        else:
            outcome, data, encoding = self._close_encrypted(row, spec, updates, weights)
            base = rnd.number - 1
        sha = self.blobs.put(data)
        self.store.add(ModelVersionRow(study_id=row.id, version=rnd.number, blob_sha=sha, encoding=encoding, base_version=base))
        outcome["model_sha256"] = sha
        self.audit("aggregation", study=row.id, round=rnd.number, rule=spec.aggregation.rule,
                   accepted=outcome["accepted"], refused=outcome["refused"], encrypted=spec.privacy.encryption != "none")
        return outcome

    def _close_plain(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow],
                     weights: list[float]) -> tuple[dict[str, Any], bytes, str]:
        deltas = [self.decode_plain(row.id, spec, self.blobs.get(u.blob_sha)) for u in updates]
        rule = build_rule(spec.aggregation.rule, dict(spec.aggregation.params))
        result = rule.aggregate(deltas, weights)
        base_names, base = decode_tensors(self.blobs.get(self.version_sha(row.id, rnd.number - 1)))
        new = [(b + d).astype(np.float32) for b, d in zip(base, result.update)]
        outcome = {
            "accepted": [updates[i].silo for i in result.accepted],
            "refused": {updates[i].silo: why for i, why in result.refused.items()},
            "total_weight": float(sum(weights[i] for i in result.accepted)),
        }
        return outcome, encode_tensors(base_names, new), PLAIN_ENCODING

    def _close_encrypted(self, row: StudyRow, spec: StudySpec, updates: list[UpdateRow],
                         weights: list[float]) -> tuple[dict[str, Any], bytes, str]:
        acc = EncryptedSum(self.blobs.get(row.public_context_sha), self.n_values(row.id, spec), he_mode(spec))
        accepted, refused = [], {}
        for u, w in zip(updates, weights):
            try:
                acc.add(self.blobs.get(u.blob_sha), w)
                accepted.append(u.silo)
            except HEError as e:
                refused[u.silo] = f"ciphertext refused: {e}"
        if not accepted:
            raise InvalidInput("no update of the round could be summed")
        outcome = {"accepted": accepted, "refused": refused,
                   "total_weight": float(sum(w for u, w in zip(updates, weights) if u.silo in accepted))}
        return outcome, acc.result(), spec.privacy.encryption
