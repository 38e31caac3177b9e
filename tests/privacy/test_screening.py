"""Encrypted screening with real TenSEAL: squared norms and distances computed by the coordinator
from ciphertexts and the public context, decrypted by a silo, equal the plaintext values."""

from __future__ import annotations

import numpy as np
import pytest

from privacy.errors import InvalidUpdateError, MissingSecretKeyError
from privacy.he import EncryptedSum, StudyKeys, context_has_secret_key, decrypt_average, encrypt_update
from privacy.he.screening import (
    Screener,
    decrypt_scalar,
    encrypted_sq_distance,
    encrypted_sq_norm,
)

N_VALUES = 9000  # three ciphertexts of 4096 slots, the last one partial
CLIP = 1.0
# stated precision of a decrypted scalar: relative 1e-6 plus absolute 1e-6 (measured ~1e-10 relative)
REL, ABS = 1e-6, 1e-6


@pytest.fixture(scope="module")
def keys() -> StudyKeys:
    return StudyKeys.generate("screen")


@pytest.fixture(scope="module")
def updates() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    xs = [rng.uniform(-0.3, 0.3, N_VALUES) for _ in range(3)]
    xs.append(xs[0].copy())  # a duplicate: distance exactly 0
    xs.append(rng.uniform(-1, 1, N_VALUES) * 5)  # beyond the clip: the silo clips before encrypting
    return [x.astype(np.float32) for x in xs]


@pytest.fixture(scope="module")
def blobs(keys, updates) -> list[bytes]:
    return [encrypt_update(keys.secret_context(), x, mode="screen", clip=CLIP) for x in updates]


def _clipped(x: np.ndarray) -> np.ndarray:
    return np.clip(x.astype(np.float64), -CLIP, CLIP)


def test_public_context_has_evaluation_keys_but_no_secret_key(keys, blobs):
    pub = keys.public_context()
    assert not context_has_secret_key(pub)
    with pytest.raises(MissingSecretKeyError):
        decrypt_scalar(pub, encrypted_sq_norm(pub, blobs[0]))
    Screener(pub)  # relinearisation and Galois keys are there
    # the secret context the silos share carries no evaluation keys (they do not need them)
    assert context_has_secret_key(keys.secret_context())


def test_decrypted_norms_and_distances_match_plaintext(keys, updates, blobs):
    pub, sec = keys.public_context(), keys.secret_context()
    screener = Screener(pub)
    for b in blobs:
        screener.add(b)
    for i, x in enumerate(updates):
        want = float(np.sum(_clipped(x) ** 2))
        assert decrypt_scalar(sec, screener.sq_norm(i)) == pytest.approx(want, rel=REL, abs=ABS)
    for i in range(len(updates)):
        for j in range(i + 1, len(updates)):
            want = float(np.sum((_clipped(updates[i]) - _clipped(updates[j])) ** 2))
            got = decrypt_scalar(sec, screener.sq_distance(i, j))
            assert got == pytest.approx(want, rel=REL, abs=ABS), (i, j)
    assert decrypt_scalar(sec, screener.sq_distance(0, 3)) <= ABS  # identical updates


def test_one_shot_functions_agree_with_the_screener(keys, updates, blobs):
    pub, sec = keys.public_context(), keys.secret_context()
    want = float(np.sum((_clipped(updates[1]) - _clipped(updates[2])) ** 2))
    assert decrypt_scalar(sec, encrypted_sq_distance(pub, blobs[1], blobs[2])) == pytest.approx(want, rel=REL)
    assert decrypt_scalar(sec, encrypted_sq_norm(pub, blobs[1])) == pytest.approx(float(np.sum(_clipped(updates[1]) ** 2)), rel=REL)


def test_screen_mode_still_sums_like_exact(keys, updates, blobs):
    weights = [3.0, 1.0, 2.5, 7.0, 1.0]
    agg = EncryptedSum(keys.public_context(), N_VALUES, "screen")
    for b, w in zip(blobs, weights):
        agg.add(b, w)
    avg = decrypt_average(keys.secret_context(), agg.result(), n_values=N_VALUES, total_weight=sum(weights))
    want = sum(w * _clipped(x) for w, x in zip(weights, updates)) / sum(weights)
    assert np.abs(avg - want).max() < 1e-6


def test_refuses_other_modes_and_mismatched_updates(keys, updates):
    exact = StudyKeys.generate("exact")
    other = encrypt_update(exact.secret_context(), updates[0], mode="exact", clip=CLIP)
    screener = Screener(keys.public_context())
    with pytest.raises(InvalidUpdateError, match="screen"):
        screener.add(other)
    screener.add(encrypt_update(keys.secret_context(), updates[0], mode="screen", clip=CLIP))
    with pytest.raises(InvalidUpdateError, match="values"):
        screener.add(encrypt_update(keys.secret_context(), updates[0][:100], mode="screen", clip=CLIP))
    with pytest.raises(Exception, match="mode 'screen' needs"):
        Screener(exact.public_context())
