"""Model versions: the study's layout and size limits, and what a silo receives for a version.

Version 0 is the initial model (built at submission). Version r >= 1 is stored in full in the
clear, or as the encrypted weighted sum of round r's deltas under CKKS. What travels to a silo
is the stored version, or, when the study compresses its downlink, the compressed delta over
the previous version (version 0: only its hash, the silo rebuilds it from the spec's seed).
Every version is kept, so the study can release the best one rather than the last.
"""

from __future__ import annotations

import hashlib

import numpy as np

from coordinator.api import federation_pb2 as pb
from coordinator.api.protocol import SEEDED_INIT, TENSORS, Codec, RandkSelection, StudyProtocol, VersionMetadata
from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorSpec, decode_tensors
from coordinator.blobs import BlobStore
from coordinator.outcome import RoundOutcome
from coordinator.store import ModelVersionRow, RoundRow, Store

CKKS_BYTES_PER_VALUE_LIMIT = 80  # generous bound over every CKKS mode's wire size (about 8-60 B/value)


class ModelVersions:
    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs
        self._layouts: dict[str, list[TensorSpec]] = {}

    # --- the expected shape of things -------------------------------------------------------
    def layout(self, study_id: str) -> list[TensorSpec]:
        """Names, shapes and dtype (float32) of the study's model, read from version 0 once."""
        if study_id not in self._layouts:
            v0 = self.store.get(ModelVersionRow, study_id, 0)
            names, arrays = decode_tensors(self.blobs.get(v0.blob_sha))
            self._layouts[study_id] = [TensorSpec(n, tuple(a.shape), "float32") for n, a in zip(names, arrays)]
        return self._layouts[study_id]

    def n_values(self, study_id: str) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.layout(study_id))

    def he_values(self, study_id: str, spec: StudySpec) -> int:
        """Values per encrypted update: the model, or the round's random-k coordinates."""
        return spec.protocol.encrypted_values(self.n_values(study_id))

    def max_update_bytes(self, study_id: str, spec: StudySpec) -> int:
        per_value = CKKS_BYTES_PER_VALUE_LIMIT if spec.protocol.encrypted else 4
        return self.n_values(study_id) * per_value + (1 << 20)

    def get(self, study_id: str, version: int) -> ModelVersionRow | None:
        return self.store.get(ModelVersionRow, study_id, version)

    def sha(self, study_id: str, version: int) -> str:
        return self.store.get(ModelVersionRow, study_id, version).blob_sha

    # --- what a silo receives ------------------------------------------------------------------
    def metadata(self, study_id: str, spec: StudySpec, version: ModelVersionRow) -> VersionMetadata:
        if version.base_version is None:
            return VersionMetadata(version=version.version, encoding=version.encoding)
        rnd = self.store.get(RoundRow, study_id, version.version)
        outcome = RoundOutcome.of(rnd.outcome_json)
        randk = None
        if spec.protocol.encrypted and spec.protocol.codec is Codec.RANDK:
            randk = RandkSelection(seed=rnd.seed, fraction=spec.compression.fraction,
                                   kept=self.he_values(study_id, spec))
        return VersionMetadata(version=version.version, encoding=version.encoding, base_version=version.base_version,
                               total_weight=outcome.total_weight, post_scale=outcome.post_scale or 1.0, randk=randk)

    def header(self, study_id: str, spec: StudySpec, version: ModelVersionRow) -> pb.BlobHeader:
        """What a silo receives for a model version (sha256 and size say which blob)."""
        protocol = StudyProtocol(spec)
        if version.encoding == TENSORS and protocol.downlink_encoding is not None:
            if version.version == 0:
                meta = VersionMetadata(version=0, encoding=SEEDED_INIT, seed=spec.training.seed,
                                       model_sha256=version.blob_sha)
                return pb.BlobHeader(sha256=hashlib.sha256(b"").hexdigest(), size=0, encoding=SEEDED_INIT,
                                     metadata_json=meta.to_json())
            rnd = self.store.get(RoundRow, study_id, version.version)
            down = RoundOutcome.of(rnd.outcome_json).downlink if rnd is not None else None
            if down is not None:
                meta = VersionMetadata(version=version.version, encoding=down.encoding, base_version=version.version - 1)
                return pb.BlobHeader(sha256=down.sha256, size=self.blobs.size(down.sha256), encoding=down.encoding,
                                     metadata_json=meta.to_json())
        meta = self.metadata(study_id, spec, version)
        return pb.BlobHeader(sha256=version.blob_sha, size=self.blobs.size(version.blob_sha),
                             encoding=version.encoding, metadata_json=meta.to_json())

    def body(self, header: pb.BlobHeader) -> bytes:
        """The bytes a version's header names (none for a seeded-init version 0)."""
        return self.blobs.get(header.sha256) if header.size else b""

    def blob(self, study_id: str, spec: StudySpec, version: ModelVersionRow) -> tuple[pb.BlobHeader, bytes]:
        """`header` and the bytes it names."""
        header = self.header(study_id, spec, version)
        return header, self.body(header)
