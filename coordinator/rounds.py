"""Closing a round: check updates as they arrive, aggregate them, store the next model version.

In the clear an update is the silo's model delta (float32 arrays in the shared layout,
possibly compressed by the study's codec: decoded here, checked against the layout) and the
study's robust rule aggregates the deltas. Under CKKS the coordinator holds only the public
context: it checks each ciphertext blob's framing and sums them, weighted, into an encrypted
average delta that only the silos can decrypt (under random-k: of the round's kept coordinates).

Downlink compression (`compression.downlink`, in the clear): version r is defined as version
r-1 plus the decoded compressed delta, so the silos, which receive only that delta, hold the
coordinator's weights bit for bit. The full version is still stored (restarts, final model).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np

from coordinator.aggregation import AggregationError, StreamingFedAvg, build_rule
from coordinator.aggregation.screened import decide, encrypted_aggregate, scalars_needed
from coordinator.api import federation_pb2 as pb
from coordinator.api.codecs import CodecError, build_codec, keep_count
from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorFormatError, TensorSpec, allocate_tensors, decode_tensors
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput
from coordinator.key_recipients import split_wrapped
from coordinator.store import ModelVersionRow, RoundRow, Store, StudyRow, UpdateRow, dumps
from privacy.errors import HEError
from privacy.he import EncryptedSum, context_has_secret_key
from privacy.he.screening import Screener

log = logging.getLogger(__name__)

PLAIN_ENCODING = "tensors"
CKKS_BYTES_PER_VALUE_LIMIT = 80  # generous bound over every CKKS mode's wire size (about 8-60 B/value)


SCREENED_RULES = ("norm_bounding", "krum")


def needs_screening(spec: StudySpec) -> bool:
    """A robust rule under encryption: decide on decrypted norms/distances, then sum ciphertexts."""
    return spec.privacy.encryption == "ckks-screen" and spec.aggregation.rule in SCREENED_RULES


def he_mode(spec: StudySpec) -> str:
    return spec.privacy.encryption.removeprefix("ckks-")


DOWNLINK_PREFIX = "delta+"  # silo_node.update reads versions with this encoding
SEEDED_INIT = "seeded-init"  # version 0 rebuilt at the silo from the spec; only its SHA-256 travels


def downlink_encoding(spec: StudySpec) -> str | None:
    """How versions >= 1 travel to the silos: None = full tensors (or CKKS delta), else "delta+<codec>"."""
    c = spec.compression
    if spec.privacy.encryption != "none" or c.downlink == "none":
        return None
    return DOWNLINK_PREFIX + c.downlink + ("+zstd" if c.zstd else "")


@dataclass
class _Running:
    """The open round's running aggregate (None for rules that need all updates at once)."""

    sum: StreamingFedAvg | EncryptedSum | None
    count: int = 0


class RoundCloser:
    def __init__(self, store: Store, blobs: BlobStore, *, audit: Callable[..., None]) -> None:
        self.store = store
        self.blobs = blobs
        self.audit = audit
        self._layouts: dict[str, list[TensorSpec]] = {}
        self._running: dict[tuple[str, int], _Running] = {}

    # --- the expected shape of things -------------------------------------------------------
    def layout(self, study_id: str, spec: StudySpec) -> list[TensorSpec]:
        if study_id not in self._layouts:
            v0 = self.store.get(ModelVersionRow, study_id, 0)
            names, arrays = decode_tensors(self.blobs.get(v0.blob_sha))
            self._layouts[study_id] = [TensorSpec(n, tuple(a.shape), "float32") for n, a in zip(names, arrays)]
        return self._layouts[study_id]

    def n_values(self, study_id: str, spec: StudySpec) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.layout(study_id, spec))

    def he_values(self, study_id: str, spec: StudySpec) -> int:
        """Values per encrypted update: the model, or the round's random-k coordinates."""
        n = self.n_values(study_id, spec)
        return keep_count(n, spec.compression.fraction) if spec.compression.codec == "randk" else n

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
            outcome = json.loads(rnd.outcome_json or "{}")
            meta["total_weight"] = outcome.get("total_weight")
            meta["post_scale"] = outcome.get("post_scale", 1.0)
            spec = StudySpec.from_json(self.store.get(StudyRow, study_id).spec_json)
            if spec.compression.codec == "randk":
                meta["randk"] = {"seed": rnd.seed, "fraction": spec.compression.fraction,
                                 "kept": self.he_values(study_id, spec)}
        return dumps(meta)

    def model_header(self, study_id: str, version: ModelVersionRow) -> pb.BlobHeader:
        """What a silo receives for a model version (sha256 and size say which blob): the stored
        version, or, when the study compresses its downlink, the compressed delta over the
        previous version (version 0: only its hash, the silo rebuilds it from the spec's seed)."""
        if version.version == 0 and version.encoding == PLAIN_ENCODING:
            spec = StudySpec.from_json(self.store.get(StudyRow, study_id).spec_json)
            if downlink_encoding(spec) is not None:
                meta = dumps({"version": 0, "encoding": SEEDED_INIT, "seed": spec.training.seed,
                              "model_sha256": version.blob_sha})
                return pb.BlobHeader(sha256=hashlib.sha256(b"").hexdigest(), size=0, encoding=SEEDED_INIT,
                                     metadata_json=meta)
        if version.version > 0 and version.encoding == PLAIN_ENCODING:
            rnd = self.store.get(RoundRow, study_id, version.version)
            down = json.loads(rnd.outcome_json or "{}").get("downlink") if rnd is not None else None
            if down:
                meta = dumps({"version": version.version, "encoding": down["encoding"], "base_version": version.version - 1})
                return pb.BlobHeader(sha256=down["sha256"], size=self.blobs.size(down["sha256"]),
                                     encoding=down["encoding"], metadata_json=meta)
        meta = self.version_metadata(study_id, version)
        return pb.BlobHeader(sha256=version.blob_sha, size=self.blobs.size(version.blob_sha),
                             encoding=version.encoding, metadata_json=meta)

    def model_blob(self, study_id: str, version: ModelVersionRow) -> tuple[pb.BlobHeader, bytes]:
        """`model_header` and the bytes it names."""
        header = self.model_header(study_id, version)
        return header, (self.blobs.get(header.sha256) if header.size else b"")

    # --- checks as an update arrives -----------------------------------------------------------
    def add_update(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, silo: str, header: pb.BlobHeader,
                   data: bytes | memoryview) -> None:
        """Check an update and, for sum-based rules, add it to the round's running aggregate."""
        limit = self.max_update_bytes(row.id, spec)
        if len(data) > limit:
            raise InvalidInput(f"update of {len(data)} bytes exceeds the study's limit of {limit} bytes")
        try:
            json.loads(header.metadata_json or "{}")
        except ValueError:
            raise InvalidInput("update metadata is not valid JSON") from None
        expected = spec.update_encoding()
        if header.encoding != expected:
            raise InvalidInput(f"update encoding {header.encoding!r}; this study expects {expected!r}")
        running = self._accumulator(row, rnd, spec)
        try:
            if isinstance(running.sum, EncryptedSum):
                running.sum.add(data, header.weight)
            elif spec.privacy.encryption == "none":
                arrays = self.decode_plain(row.id, spec, data)
                if running.sum is not None:
                    running.sum.add(arrays, header.weight)
        except (HEError, AggregationError) as e:
            raise InvalidInput(f"update refused: {e}") from None
        running.count += 1

    def _accumulator(self, row: StudyRow, rnd: RoundRow, spec: StudySpec) -> "_Running":
        """The running aggregate of this round: encrypted sum under CKKS, streaming FedAvg in the clear.

        Other rules need every update at once and read them from disk when the round closes.
        """
        key = (row.id, rnd.number)
        if key not in self._running:
            self._running.clear()  # one open round at a time is aggregated in memory
            if needs_screening(spec):
                self._running[key] = _Running(None)  # decided only once the scalars are decrypted
            elif spec.privacy.encryption != "none":
                self._running[key] = _Running(EncryptedSum(self.blobs.get(row.public_context_sha),
                                                           self.he_values(row.id, spec), he_mode(spec)))
            else:
                self._running[key] = _Running(StreamingFedAvg() if spec.aggregation.rule == "fedavg" else None)
        return self._running[key]

    def forget(self, study_id: str, round_: int) -> None:
        self._running.pop((study_id, round_), None)

    def decode_plain(self, study_id: str, spec: StudySpec, data: bytes) -> list[np.ndarray]:
        """A plaintext update as float32 arrays in the study's layout (decoded if compressed)."""
        layout = self.layout(study_id, spec)
        c = spec.compression
        if c.codec == "none":
            try:
                return decode_tensors(data, expected=layout)[1]
            except TensorFormatError as e:
                raise InvalidInput(f"update: {e}") from None
        try:
            codec = build_codec(c.codec, c.fraction, c.zstd)  # also refuses another codec or fraction
            arrays = codec.decode(bytes(data), max_values=self.n_values(study_id, spec), max_arrays=len(layout))
        except CodecError as e:
            raise InvalidInput(f"update ({c.codec}): {e}") from None
        got = [(a.shape, a.dtype) for a in arrays]
        want = [(tuple(t.shape), np.dtype(np.float32)) for t in layout]
        if got != want:
            bad = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
            raise InvalidInput(f"update ({c.codec}): {len(got)} arrays, the model has {len(want)}; first mismatch at "
                               f"array {bad} ({layout[bad].name if bad < len(layout) else '-'})")
        return arrays

    # --- CKKS key material ------------------------------------------------------------------------
    def store_key_bundle(self, row: StudyRow, data: bytes,
                         members: dict[str, list[str]]) -> tuple[str, dict[str, str], list[str]]:
        """Split the key holder's bundle; refuse a 'public' context that carries a secret key.

        `members`: {participant: its members, [] for a direct silo} (coordinator.key_recipients).
        Returns the public context's sha, each participant's wrapped-key blob sha (a region's
        blob is its members' wrapped keys) and the recipients the secret was wrapped for.
        """
        try:
            bundle = json.loads(data)
            public = base64.b64decode(bundle["public_context"], validate=True)
            entries = bundle["wrapped"]
            if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
                raise TypeError("'wrapped' must map recipient names to base64 strings")
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInput(f"key bundle is malformed: {e}") from None
        wrapped, wrapped_for = split_wrapped(entries, members)
        try:
            has_secret = context_has_secret_key(public)
        except HEError as e:
            raise InvalidInput(f"key bundle: the public context does not load: {e}") from None
        if has_secret:
            # The coordinator must never hold the secret key: refuse and do not store it.
            raise InvalidInput("key bundle: the 'public' context carries a secret key; refused and not stored")
        return self.blobs.put(public), {s: self.blobs.put(w) for s, w in wrapped.items()}, wrapped_for

    # --- aggregation ------------------------------------------------------------------------------
    def close(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow]) -> dict[str, Any]:
        updates = sorted(updates, key=lambda u: u.silo)
        kept = self._running.pop((row.id, rnd.number), None)
        # After a restart the running sum is gone (or partial): rebuild it from the stored updates.
        running = kept.sum if kept is not None and kept.count == len(updates) else None
        if needs_screening(spec):
            values = json.loads(rnd.outcome_json or "{}")["screen_values"]
            outcome, data, encoding = self._close_screened(row, spec, updates, values)
            base = rnd.number - 1
        elif spec.privacy.encryption == "none":
            outcome, data, encoding = self._close_plain(row, rnd, spec, updates, running)
            base = None
        else:
            outcome, data, encoding = self._close_encrypted(row, spec, updates, running)
            base = rnd.number - 1
        previous = self.store.get(ModelVersionRow, row.id, rnd.number - 1)
        sha = self.blobs.put(data, serve=downlink_encoding(spec) is None,  # silos fetch it, or its delta
                             replaces=previous.blob_sha if previous is not None else None)
        self.store.add(ModelVersionRow(study_id=row.id, version=rnd.number, blob_sha=sha, encoding=encoding, base_version=base))
        outcome["model_sha256"] = sha
        self.audit("aggregation", study=row.id, round=rnd.number, rule=spec.aggregation.rule,
                   accepted=outcome["accepted"], refused=outcome["refused"], encrypted=spec.privacy.encryption != "none")
        return outcome

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
        need = scalars_needed(build_rule(spec.aggregation.rule, dict(spec.aggregation.params)), len(updates))
        cts = [screener.sq_norm(i) for i in need["sq_norms"]] + [screener.sq_distance(i, j) for i, j in need["sq_distances"]]
        return json.dumps([base64.b64encode(c).decode() for c in cts]).encode()

    def _close_screened(self, row: StudyRow, spec: StudySpec, updates: list[UpdateRow],
                        values: list[float]) -> tuple[dict[str, Any], bytes, str]:
        rule = build_rule(spec.aggregation.rule, dict(spec.aggregation.params))
        need = scalars_needed(rule, len(updates))
        norms = values[: len(need["sq_norms"])] or None
        distances = dict(zip(need["sq_distances"], values[len(need["sq_norms"]):])) or None
        decision = decide(rule, [u.weight for u in updates], sq_norms=norms, sq_distances=distances)
        blobs = [self.blobs.get(u.blob_sha) for u in updates]
        data, total, post = encrypted_aggregate(self.blobs.get(row.public_context_sha), blobs, decision,
                                                n_values=self.n_values(row.id, spec), mode=he_mode(spec))
        outcome = {"accepted": [updates[i].silo for i in decision.accepted],
                   "refused": {updates[i].silo: why for i, why in decision.refused.items()},
                   "scaled": {updates[i].silo: f for i, f in decision.factors.items() if f != 1.0},
                   "total_weight": total, "post_scale": post}
        return outcome, data, spec.privacy.encryption

    def _close_plain(self, row: StudyRow, rnd: RoundRow, spec: StudySpec, updates: list[UpdateRow],
                     running: StreamingFedAvg | EncryptedSum | None) -> tuple[dict[str, Any], bytes | bytearray, str]:
        weights = [u.weight for u in updates]
        if isinstance(running, StreamingFedAvg):
            result = running.result(release=True)  # the float64 sums go before the new version is built
        else:
            deltas = [self.decode_plain(row.id, spec, self.blobs.get(u.blob_sha)) for u in updates]
            result = build_rule(spec.aggregation.rule, dict(spec.aggregation.params)).aggregate(deltas, weights)
            del deltas
        outcome = {
            "accepted": [updates[i].silo for i in result.accepted],
            "refused": {updates[i].silo: why for i, why in result.refused.items()},
            "total_weight": float(sum(weights[i] for i in result.accepted)),
        }
        delta = [np.asarray(d, dtype=np.float32) for d in result.update]
        del result
        down = downlink_encoding(spec)
        if down is not None:
            # Version r := version r-1 + decode(encode(delta)): exactly what the silos reconstruct.
            c = spec.compression
            codec = build_codec(c.downlink, zstd=c.zstd)
            data = codec.encode(delta)
            delta = codec.decode(data, max_values=self.n_values(row.id, spec), max_arrays=len(delta))
            outcome["downlink"] = {"encoding": down, "sha256": self.blobs.put(data, serve=True), "size": len(data)}
        base_names, base = decode_tensors(self.blobs.get(self.version_sha(row.id, rnd.number - 1)))
        # base + delta written straight into the new version's encoded buffer (no third copy).
        data, new = allocate_tensors([TensorSpec(n, tuple(b.shape), "float32") for n, b in zip(base_names, base)])
        for b, d, out in zip(base, delta, new):
            np.add(b, d, out=out, dtype=np.float32)
        return outcome, data, PLAIN_ENCODING

    def _close_encrypted(self, row: StudyRow, spec: StudySpec, updates: list[UpdateRow],
                         running: StreamingFedAvg | EncryptedSum | None) -> tuple[dict[str, Any], bytes, str]:
        acc = running
        refused: dict[str, str] = {}
        if not isinstance(acc, EncryptedSum):
            acc = EncryptedSum(self.blobs.get(row.public_context_sha), self.he_values(row.id, spec), he_mode(spec))
            for u in updates:
                try:
                    acc.add(self.blobs.get(u.blob_sha), u.weight)
                except HEError as e:
                    refused[u.silo] = f"ciphertext refused: {e}"
        accepted = [u.silo for u in updates if u.silo not in refused]
        if not accepted:
            raise InvalidInput("no update of the round could be summed")
        outcome = {"accepted": accepted, "refused": refused,
                   "total_weight": float(sum(u.weight for u in updates if u.silo in accepted))}
        return outcome, acc.result(), spec.privacy.encryption
