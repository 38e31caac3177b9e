"""CKKS aggregation with real TenSEAL: keys, wrapping, encrypted weighted averages per mode."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from privacy.errors import InvalidUpdateError, KeyWrapError, MissingSecretKeyError
from privacy.he import (
    EncryptedSum,
    SiloKeyPair,
    StudyKeys,
    context_has_secret_key,
    decrypt_average,
    encrypt_update,
    unwrap_secret,
    wrap_secret,
)
from privacy.he.codec import measure_integer_range
from privacy.he.params import DIGIT_BITS, DIGITS_PER_PART, PACKED_SCALE, QUANT_BITS, USABLE_INTEGER_BITS

N_VALUES = 5000  # spans several ciphertexts in every mode, last one partial
WEIGHTS = [120.0, 75.0, 300.0, 31.0]
# stated precision of the weighted average for |x| <= clip = 1
TOLERANCE = {"exact": 1e-6, "baseline": 1e-5, "packed": 1.0 / (2**QUANT_BITS - 1) + 2.0**-6}


@pytest.fixture(scope="module", params=["exact", "packed", "baseline"])
def keys(request) -> StudyKeys:
    return StudyKeys.generate(request.param)


@pytest.fixture(scope="module")
def updates() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-1, 1, N_VALUES).astype(np.float32) for _ in WEIGHTS]


def test_public_context_has_no_secret_key_and_cannot_decrypt(keys, updates):
    pub, sec = keys.public_context(), keys.secret_context()
    assert context_has_secret_key(sec) and not context_has_secret_key(pub)
    assert not ts.context_from(pub).has_relin_keys() and not ts.context_from(pub).has_galois_keys()
    with pytest.raises(ValueError):  # tenseal itself refuses
        ts.context_from(pub).secret_key()
    blob = encrypt_update(sec, updates[0], mode=keys.mode, clip=1.0)
    s = EncryptedSum(pub, N_VALUES, keys.mode)
    s.add(blob, 1.0)
    with pytest.raises(MissingSecretKeyError):
        decrypt_average(pub, s.result(), n_values=N_VALUES, total_weight=1.0)
    with pytest.raises(MissingSecretKeyError):
        encrypt_update(pub, updates[0], mode=keys.mode, clip=1.0)
    assert StudyKeys.from_secret(sec).mode == keys.mode


def test_encrypted_weighted_average_matches_plaintext(keys, updates):
    sec = keys.secret_context()
    s = EncryptedSum(keys.public_context(), N_VALUES, keys.mode)
    for x, w in zip(updates, WEIGHTS):
        s.add(encrypt_update(sec, x, mode=keys.mode, clip=1.0), w)
    got = decrypt_average(sec, s.result(), n_values=N_VALUES, total_weight=sum(WEIGHTS))
    want = sum(w * x.astype(np.float64) for w, x in zip(WEIGHTS, updates)) / sum(WEIGHTS)
    assert got.shape == (N_VALUES,) and got.dtype == np.float32
    assert np.abs(got - want).max() <= TOLERANCE[keys.mode]


def test_invalid_inputs_are_refused_and_sum_is_unchanged(keys, updates):
    sec, pub = keys.secret_context(), keys.public_context()
    bad = updates[0].copy()
    bad[17] = np.nan
    with pytest.raises(InvalidUpdateError, match="NaN/Inf"):
        encrypt_update(sec, bad, mode=keys.mode, clip=1.0)
    s = EncryptedSum(pub, N_VALUES, keys.mode)
    good = encrypt_update(sec, updates[0], mode=keys.mode, clip=1.0)
    s.add(good, 2.0)
    with pytest.raises(InvalidUpdateError, match="values"):
        s.add(encrypt_update(sec, updates[1][:100], mode=keys.mode, clip=1.0), 1.0)
    with pytest.raises(InvalidUpdateError, match="weight"):
        s.add(good, float("inf"))
    with pytest.raises(InvalidUpdateError):
        s.add(good[:-10], 1.0)  # truncated
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    with pytest.raises(InvalidUpdateError):
        s.add(bytes(corrupt), 1.0)
    with pytest.raises(InvalidUpdateError, match="total_weight"):
        decrypt_average(sec, s.result(), n_values=N_VALUES, total_weight=3.0)
    got = decrypt_average(sec, s.result(), n_values=N_VALUES, total_weight=2.0)
    assert np.abs(got - updates[0]).max() <= TOLERANCE[keys.mode]


def test_wrong_mode_context_is_refused(updates):
    k = StudyKeys.generate("baseline")
    with pytest.raises(Exception, match="mode 'exact' needs"):
        encrypt_update(k.secret_context(), updates[0], mode="exact", clip=1.0)


def test_wrap_unwrap_round_trip_and_tamper_detection():
    silo = SiloKeyPair.generate()
    secret = StudyKeys.generate("exact").secret_context()
    blob = wrap_secret(secret, silo.public_bytes(), context=b"study-42")
    assert secret not in blob
    assert unwrap_secret(blob, silo, context=b"study-42") == secret
    tampered = bytearray(blob)
    tampered[-5] ^= 1
    with pytest.raises(KeyWrapError, match="tampered"):
        unwrap_secret(bytes(tampered), silo, context=b"study-42")
    with pytest.raises(KeyWrapError):
        unwrap_secret(blob, silo, context=b"study-43")  # wrong study
    with pytest.raises(KeyWrapError):
        unwrap_secret(blob, SiloKeyPair.generate(), context=b"study-42")  # wrong silo


def test_measured_integer_range_covers_packed_layout():
    ctx = StudyKeys.generate("packed").context
    bits = measure_integer_range(ctx, scale=PACKED_SCALE)
    assert bits >= USABLE_INTEGER_BITS >= DIGITS_PER_PART * DIGIT_BITS
