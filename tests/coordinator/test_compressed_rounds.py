"""Compressed updates across the silo/coordinator boundary: the silo's real encoder
(silo_node.update) and the coordinator's real round aggregator (store, blob store, decode, close)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.api import federation_pb2 as pb
from coordinator.api.codecs import randk_indices
from coordinator.api.study import CompressionSpec, PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput
from coordinator.api.protocol import VersionMetadata
from coordinator.rounds import RoundAggregator
from coordinator.versions import ModelVersions
from coordinator.store import ModelVersionRow, RoundRow, Store, StudyRow, open_engine
from privacy.he import StudyKeys
from silo_node.update import build_feedback, encode_update, resolve_version

SHAPES = [(40, 25), (25,), (7, 3)]
NAMES = ["w1", "b1", "w2"]
N = sum(int(np.prod(s)) for s in SHAPES)


def _spec(codec: str = "topk", *, encryption: str = "none", fraction: float = 0.1, downlink: str = "none") -> StudySpec:
    return StudySpec(name="compression", training=TrainingSpec(rounds=5, min_silos=1),
                     privacy=PrivacySpec(dp=False, encryption=encryption),  # type: ignore[arg-type]
                     compression=CompressionSpec(codec=codec, fraction=fraction, downlink=downlink))  # type: ignore[arg-type]


class Coordinator:
    """One study in a real store: version 0, then rounds closed by the real RoundAggregator."""

    def __init__(self, root: Path, spec: StudySpec, v0: list[np.ndarray], public_context: bytes | None = None) -> None:
        self.store = Store(open_engine(root / "coordinator.sqlite"))
        self.blobs = BlobStore(root / "blobs")
        self.versions = ModelVersions(self.store, self.blobs)
        self.closer = RoundAggregator(self.versions, audit=lambda *a, **k: None)
        self.spec = spec
        ctx_sha = self.blobs.put(public_context) if public_context else None
        self.row = StudyRow(id="s1", name="s", spec_json=spec.to_json(), spec_sha256=spec.sha256(), state="running",
                            created_at=0.0, current_round=1, public_context_sha=ctx_sha)
        sha = self.blobs.put(encode_tensors(NAMES, v0))
        self.store.add(self.row, ModelVersionRow(study_id="s1", version=0, blob_sha=sha, encoding="tensors"))

    def round(self, number: int, seed: int, uploads: list[tuple[str, bytes, str, float]]):
        from coordinator.store import UpdateRow

        rnd = RoundRow(study_id="s1", number=number, state="open", nonce="n", seed=seed, participants_json="[]",
                       opened_at=0.0, deadline=1.0, outcome_json="{}")
        self.store.add(rnd)
        rows = []
        for silo, data, encoding, weight in uploads:
            header = pb.BlobHeader(weight=weight, encoding=encoding, metadata_json="{}")
            self.closer.add_update(self.row, rnd, self.spec, header, data)
            rows.append(UpdateRow(study_id="s1", round=number, silo=silo, blob_sha=self.blobs.put(data), size=len(data),
                                  weight=weight, encoding=encoding, metadata_json="{}", received_at=0.0))
        outcome = self.closer.close(self.row, rnd, self.spec, rows)
        rnd.state, rnd.outcome_json = "closed", outcome.to_json()
        self.store.add(rnd)
        return outcome

    def version(self, v: int) -> list[np.ndarray]:
        return decode_tensors(self.blobs.get(self.versions.sha("s1", v)))[1]

    def silo_view(self, v: int, base, secret=None):
        row = self.store.get(ModelVersionRow, "s1", v)
        header, data = self.versions.blob("s1", self.spec, row)
        return resolve_version(data, header.encoding, header.metadata_json, base=base, secret_context=secret)


def _v0() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, s).astype(np.float32) for s in SHAPES]


def _delta(rng) -> list[np.ndarray]:
    return [rng.normal(0, 0.01, s).astype(np.float32) for s in SHAPES]


@pytest.mark.parametrize("codec", ["topk", "randk"])
def test_error_feedback_keeps_every_coordinates_mass_across_real_rounds(tmp_path, codec) -> None:
    """One silo, 6 rounds: what the coordinator aggregated plus the silo's residual equals the
    sum of the silo's true deltas, coordinate by coordinate (nothing lost, only delayed)."""
    spec = _spec(codec, fraction=0.05)
    coord = Coordinator(tmp_path, spec, _v0())
    feedback = build_feedback(spec)
    rng = np.random.default_rng(1)
    true_sum = np.zeros(N)
    for r in range(1, 7):
        delta = _delta(rng)
        true_sum += np.concatenate([d.ravel() for d in delta]).astype(np.float64)
        enc = encode_update(spec, NAMES, delta, secret_context=None, round_seed=1000 + r, feedback=feedback)
        assert enc.encoding == codec and len(enc.data) < 0.15 * 4 * N
        coord.round(r, 1000 + r, [("a", enc.data, enc.encoding, 10.0)])
    moved = np.concatenate([(b - a).ravel() for a, b in zip(coord.version(0), coord.version(6))]).astype(np.float64)
    np.testing.assert_allclose(moved + feedback.residual, true_sum, atol=1e-5)
    assert np.count_nonzero(moved) > 0.2 * N  # the residual got sent eventually, across rounds

    # the residual survives a restart through its on-disk form
    again = build_feedback(spec)
    again.restore(feedback.state_bytes(), max_values=N)
    np.testing.assert_array_equal(again.residual, feedback.residual)


def test_coordinator_refuses_wrong_codec_fraction_and_shape(tmp_path) -> None:
    spec = _spec("topk", fraction=0.05)
    coord = Coordinator(tmp_path, spec, _v0())
    rnd = RoundRow(study_id="s1", number=1, state="open", nonce="n", seed=1, participants_json="[]",
                   opened_at=0.0, deadline=1.0, outcome_json="{}")
    good = _delta(np.random.default_rng(2))
    for bad_spec, arrays, why in [(_spec("q8"), good, "topk"), (_spec("topk", fraction=0.5), good, "keeps"),
                                  (spec, good[:2], "arrays")]:
        enc = encode_update(bad_spec, NAMES, arrays, secret_context=None, round_seed=1)
        with pytest.raises(InvalidInput, match=why):
            coord.closer.add_update(coord.row, rnd, spec, pb.BlobHeader(weight=1.0, encoding="topk"), enc.data)
    with pytest.raises(InvalidInput, match="encoding"):
        coord.closer.add_update(coord.row, rnd, spec, pb.BlobHeader(weight=1.0, encoding="tensors"),
                                encode_tensors(NAMES, good))


def test_compressed_downlink_gives_silos_the_coordinators_weights_bit_for_bit(tmp_path) -> None:
    spec = _spec("topk", fraction=0.05, downlink="q8")
    coord = Coordinator(tmp_path, spec, _v0())
    rng = np.random.default_rng(3)
    silo = (NAMES, coord.version(0))
    fbs = {s: build_feedback(spec) for s in "abc"}
    for r in (1, 2):
        ups = [(s, encode_update(spec, NAMES, _delta(rng), secret_context=None, feedback=fbs[s]).data, "topk", w)
               for s, w in zip("abc", (10.0, 20.0, 30.0))]
        coord.round(r, r, ups)
        row = coord.store.get(ModelVersionRow, "s1", r)
        header, data = coord.versions.blob("s1", spec, row)
        assert header.encoding == "delta+q8" and len(data) < 0.3 * 4 * N
        silo = coord.silo_view(r, silo)
        for a, b in zip(silo[1], coord.version(r)):
            np.testing.assert_array_equal(a, b)


def test_randk_under_ckks_equals_the_plaintext_sparse_average(tmp_path) -> None:
    """Three silos encrypt only the round's random-k coordinates; the coordinator sums the short
    ciphertexts; a silo decrypts and scatters: equal to the plaintext weighted average of the
    same sparse updates (CKKS exact-mode precision)."""
    keys = StudyKeys.generate("exact")
    secret = keys.secret_context()
    spec = _spec("randk", encryption="ckks-exact", fraction=0.1)
    v0 = _v0()
    coord = Coordinator(tmp_path, spec, v0, public_context=keys.public_context())
    rng = np.random.default_rng(4)
    seed, weights = 987654, (120.0, 75.0, 300.0)
    deltas = [_delta(rng) for _ in weights]
    uploads = []
    for s, d, w in zip("abc", deltas, weights):
        enc = encode_update(spec, NAMES, d, secret_context=secret, round_seed=seed, feedback=build_feedback(spec))
        assert enc.encoding == "ckks-exact+randk"
        uploads.append((s, enc.data, enc.encoding, w))
    outcome = coord.round(1, seed, uploads)
    assert outcome.accepted == ["a", "b", "c"]
    names, got = coord.silo_view(1, (NAMES, v0), secret)
    idx = randk_indices(N, 0.1, seed)
    flat = [np.concatenate([a.ravel() for a in d]).astype(np.float64) for d in deltas]
    sparse = np.zeros(N)
    sparse[idx] = sum(w * f[idx] for w, f in zip(weights, flat)) / sum(weights)
    moved = np.concatenate([(b - a).ravel() for a, b in zip(v0, got)])
    np.testing.assert_allclose(moved, sparse, atol=1e-6)
    assert np.count_nonzero(moved) == idx.size


def test_spec_refuses_codecs_that_cannot_add_up_under_encryption() -> None:
    from coordinator.api.study import SpecError

    with pytest.raises(ValueError, match="randk"):
        _spec("topk", encryption="ckks-exact")
    assert _spec("randk", encryption="ckks-exact").update_encoding() == "ckks-exact+randk"
    assert SpecError


def test_version_zero_travels_as_its_hash_when_the_downlink_is_compressed(tmp_path) -> None:
    coord = Coordinator(tmp_path, _spec("topk", downlink="q8"), _v0())
    header, data = coord.versions.blob("s1", coord.spec, coord.store.get(ModelVersionRow, "s1", 0))
    assert header.encoding == "seeded-init" and data == b""
    assert VersionMetadata.from_json(header.metadata_json).model_sha256 == coord.versions.sha("s1", 0)
