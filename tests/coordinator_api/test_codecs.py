"""Update codecs: round trips, error bounds, unbiasedness, error feedback, random-k across
silos, and refusal of malformed bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.api.codecs import (
    CODECS,
    Codec,
    CodecError,
    ErrorFeedback,
    build_codec,
    decode,
    encode,
    keep_count,
    randk_indices,
)


def update(seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (scale * rng.normal(size=(13, 21))).astype(np.float32),
        (scale * rng.normal(size=5)).astype(np.float32),
        np.array(scale * 0.5, dtype=np.float32),  # 0-d
    ]


SIZE = 13 * 21 + 5 + 1


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("zstd", [False, True])
def test_none_is_exact_for_every_float_dtype(zstd):
    arrays = [
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.linspace(-1, 1, 7, dtype=np.float32),
        np.array([np.pi, -1e300], dtype=np.float64),
        np.zeros((0, 4), dtype=np.float32),
    ]
    codec = build_codec("none", zstd=zstd)
    assert isinstance(codec, Codec)
    out = codec.decode(codec.encode(arrays), max_values=15)
    for a, b in zip(arrays, out):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert decode(encode([]), max_values=0) == []


@pytest.mark.parametrize("zstd", [False, True])
def test_fp16_error_bound(zstd):
    arrays = update(1)
    out = decode(encode(arrays, "fp16", zstd=zstd), max_values=SIZE)
    for a, b in zip(arrays, out):
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.all(np.abs(a - b) <= np.abs(a) * 2.0**-11 + 2.0**-24)


@pytest.mark.parametrize(("name", "levels"), [("q8", 127), ("q4", 7)])
@pytest.mark.parametrize("block", [1, 7, 256])
def test_quantisation_error_within_one_level_of_its_block(name, levels, block):
    x = flat(update(2, scale=3.0))
    codec = build_codec(name, rng=0, block_size=block)
    y = flat(codec.decode(codec.encode(update(2, scale=3.0)), max_values=SIZE))
    padded = np.zeros(-(-x.size // block) * block)
    padded[: x.size] = np.abs(x)
    step = np.repeat(padded.reshape(-1, block).max(axis=1), block)[: x.size] / levels
    assert np.all(np.abs(x - y) <= step * (1 + 1e-6) + 1e-7)


@pytest.mark.parametrize(("name", "levels"), [("q8", 127), ("q4", 7)])
def test_stochastic_quantisation_is_unbiased(name, levels):
    x = np.random.default_rng(3).normal(size=64).astype(np.float32)
    codec = build_codec(name, rng=4, block_size=64)
    trials = 3000
    mean = sum(flat(codec.decode(codec.encode([x]), max_values=64)) for _ in range(trials)) / trials
    step = np.abs(x).max() / levels
    # each decoded value is off by less than one step, with standard deviation at most step / 2
    assert np.all(np.abs(mean - x) <= 5 * (step / 2) / np.sqrt(trials) + 1e-6)
    # the rounding really is random: a value between two levels is not always decoded the same
    assert not np.array_equal(codec.decode(codec.encode([x]), max_values=64)[0], codec.decode(codec.encode([x]), max_values=64)[0])


def test_topk_keeps_the_largest_magnitudes():
    x = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 0.0, 4.0, 0.05, -0.01, 1.0], dtype=np.float32)
    out = decode(encode([x], "topk", fraction=0.3), max_values=10)[0]
    assert out.tolist() == [0, -5.0, 0, 3.0, 0, 0, 4.0, 0, 0, 0]


def test_keep_count_rounds_and_keeps_at_least_one():
    assert [keep_count(n, f) for n, f in [(10, 0.3), (10, 0.25), (3, 0.01), (0, 0.5), (7, 1.0)]] == [3, 3, 1, 0, 7]


# -- error feedback -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["topk", "randk", "q4", "fp16"])
def test_error_feedback_keeps_every_coordinates_mass(name):
    feedback = ErrorFeedback(build_codec(name, fraction=0.05, rng=5))
    receiver = build_codec(name, fraction=0.05)
    total_in, total_sent = np.zeros(SIZE), np.zeros(SIZE)
    for round_ in range(6):
        arrays = update(10 + round_)
        data = feedback.encode(arrays, seed=1000 + round_)
        total_in += flat(arrays)
        total_sent += flat(receiver.decode(data, max_values=SIZE))
    np.testing.assert_allclose(total_sent + feedback.residual, total_in, rtol=0, atol=1e-9)
    assert [r.shape for r in feedback.residual_arrays()] == [(13, 21), (5,), ()]
    if name in ("topk", "randk"):
        assert np.abs(feedback.residual).max() > 0.1  # most mass is still waiting to be sent
    with pytest.raises(CodecError, match="reset"):
        feedback.encode([np.zeros(3, np.float32)], seed=1)
    feedback.reset()
    feedback.encode([np.zeros(3, np.float32)], seed=1)


def test_topk_error_feedback_eventually_sends_a_small_coordinate():
    feedback = ErrorFeedback(build_codec("topk", fraction=0.5))
    x = [np.array([1.0, 0.4], dtype=np.float32)]
    sent = [flat(decode(feedback.encode(x), max_values=2)) for _ in range(3)]
    assert sent[0].tolist() == [1.0, 0.0]
    assert any(s[1] != 0 for s in sent[1:])  # the residual of 0.4 grows until it wins


# -- random-k across silos ----------------------------------------------------------------------


def test_randk_indices_are_shared_and_sparse_updates_add_up():
    idx = randk_indices(SIZE, 0.1, seed=42)
    assert np.array_equal(idx, randk_indices(SIZE, 0.1, seed=42))
    assert not np.array_equal(idx, randk_indices(SIZE, 0.1, seed=43))
    assert idx.dtype == np.int64 and idx.size == keep_count(SIZE, 0.1)
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < SIZE
    silos = [update(20 + s) for s in range(3)]
    codec = build_codec("randk", fraction=0.1)
    decoded = [flat(codec.decode(codec.encode(u, seed=42), max_values=SIZE)) for u in silos]
    kept = np.zeros(SIZE, bool)
    kept[idx] = True
    for d in decoded:
        assert np.all(d[~kept] == 0)
    expected = np.where(kept, sum(flat(u) for u in silos), 0.0)
    np.testing.assert_allclose(sum(decoded), expected, rtol=1e-6, atol=1e-6)
    assert randk_indices(5, 1.0, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_randk_indices_match_a_plain_python_splitmix64():
    # Plain integer arithmetic, so silos on different numpy versions agree; pinned here.
    mask = 2**64 - 1

    def splitmix(i: int, seed: int) -> int:
        z = (i * 0x9E3779B97F4A7C15 + seed) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for n, fraction, seed in [(20, 0.25, 7), (100, 0.1, 2**64 - 1), (37, 0.5, 0)]:
        k = keep_count(n, fraction)
        expected = sorted(sorted(range(n), key=lambda i: splitmix(i, seed))[:k])
        assert randk_indices(n, fraction, seed).tolist() == expected
    assert randk_indices(20, 0.25, seed=7).tolist() == [0, 2, 6, 9, 11]


# -- refusing what cannot be encoded ------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "codec", "message"),
    [
        ([np.array([1.0, np.nan], np.float32)], "none", "NaN or Inf"),
        ([np.array([1, 2])], "none", "dtype int64"),
        (np.zeros(3, np.float32), "none", "list of numpy arrays"),
        ([[1.0, 2.0]], "none", "expected a numpy array"),
        ([np.array([1e5], np.float32)], "fp16", "65504"),
        ([np.array([1.0], np.float32)], "randk", "shared seed"),
    ],
)
def test_encode_refuses(arrays, codec, message):
    with pytest.raises(CodecError, match=message):
        encode(arrays, codec)


def test_build_codec_errors():
    with pytest.raises(CodecError, match="unknown codec 'q2'"):
        build_codec("q2")
    with pytest.raises(CodecError, match="fraction"):
        build_codec("topk", fraction=0.0)
    with pytest.raises(CodecError, match="seed"):
        randk_indices(10, 0.5, seed=-1)
    assert set(CODECS) == {"none", "fp16", "q8", "q4", "topk", "randk"}


# -- refusing malformed bytes -------------------------------------------------------------------

HEADER = b"FCUP\x01"


def body(codec_id: int, shapes, payload: bytes, flags: int = 0) -> bytes:
    layout = struct.pack("<I", len(shapes)) + b"".join(
        struct.pack(f"<BB{len(s)}Q", 2, len(s), *s) for s in shapes
    )
    return HEADER + bytes([codec_id, flags, 0]) + layout + payload


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 8-byte header"),
        (b"PK\x03\x04\x01\x00\x00\x00", "not a fedcare update"),
        (b"FCUP\x02\x00\x00\x00", "version 2"),
        (b"FCUP\x01\x09\x00\x00", "unknown codec id 9"),
        (b"FCUP\x01\x00\x80\x00", "unknown header flags"),
        (body(0, [(4,)], b"\x00" * 15), "truncated"),
        (body(0, [(4,)], b"\x00" * 17), "unexpected bytes"),
        (body(0, [(2**40,)], b""), "max_values=100"),
        (body(0, [(30,)] * 4, b""), "max_values=100"),
        (struct.pack("<4sBBBBI", b"FCUP", 1, 0, 0, 0, 10**6), "more than the 10000 allowed"),
        (body(0, [(2,)], np.array([1, np.nan], "<f4").tobytes()), "NaN or Inf"),
        (body(4, [(4,)], struct.pack("<I3I3f", 3, 0, 2, 1, 1, 1, 1)), "strictly increasing"),
        (body(4, [(4,)], struct.pack("<I2I2f", 2, 1, 4, 1, 1)), "below 4"),
        (body(4, [(4,)], struct.pack("<I", 5) + b"\x00" * 40), "5 kept values declared for an update of 4"),
        (body(2, [(2,)], struct.pack("<If", 0, 1.0) + b"\x01\x01"), "block size 0"),
        (body(2, [(2,)], struct.pack("<If", 2, -1.0) + b"\x01\x01"), "scales must be finite"),
        (body(2, [(2,)], struct.pack("<If", 2, 1.0) + b"\x80\x01"), "outside -127..127"),
        (body(3, [(3,)], struct.pack("<If", 4, 1.0) + b"\x88\x18"), "padding nibble"),
        (body(3, [(2,)], struct.pack("<If", 4, 1.0) + b"\x08"), "nibble is 0"),
        (body(5, [(4,)], struct.pack("<QI", 1, 9)), "9 kept values"),
        (body(1, [(1,)], np.array([np.inf], "<f2").tobytes()), "NaN or Inf"),
        (HEADER + b"\x00\x01\x00" + b"not zstd", "not a zstd frame"),
        (HEADER + b"\x00\x01\x00" + zstandard.ZstdCompressor().compress(b"\x00" * 10**7), "at most"),
        (
            HEADER + b"\x00\x01\x00" + zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * 8),
            "no content size",
        ),
        (HEADER + b"\x00\x01\x00" + zstandard.ZstdCompressor().compress(b"\x00" * 4) + b"junk", "exactly one"),
        ("text", "is bytes"),
    ],
)
def test_decode_refuses_malformed_bytes(data, message):
    with pytest.raises(CodecError, match=message):
        decode(data, max_values=100, max_arrays=10000)


def test_codec_decode_checks_codec_and_fraction():
    arrays = update(5)
    with pytest.raises(CodecError, match="encoded with 'q8', this study uses 'q4'"):
        build_codec("q4").decode(encode(arrays, "q8"), max_values=SIZE)
    with pytest.raises(CodecError, match="the study keeps"):
        build_codec("topk", fraction=0.1).decode(encode(arrays, "topk", fraction=0.5), max_values=SIZE)
    with pytest.raises(CodecError, match="exactly"):
        build_codec("randk", fraction=0.1).decode(encode(arrays, "randk", fraction=0.05, seed=1), max_values=SIZE)
    with pytest.raises(CodecError, match="max_values"):
        decode(encode(arrays), max_values=SIZE - 1)


# -- fuzz: decode raises nothing but CodecError -------------------------------------------------

VALID = [
    encode(update(6), name, fraction=0.2, zstd=z, seed=3, rng=0) for name in CODECS for z in (False, True)
]


def decode_or_codec_error(data: bytes) -> None:
    try:
        out = decode(data, max_values=SIZE)
    except CodecError:
        return
    assert sum(a.size for a in out) <= SIZE
    assert all(np.isfinite(a).all() for a in out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    decode_or_codec_error(data)
    decode_or_codec_error(HEADER + data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10**6),
)
def test_fuzz_mutated_updates(valid, flips, cut):
    data = bytearray(valid)
    for position, value in flips:
        data[position % len(data)] = value
    decode_or_codec_error(bytes(data))
    decode_or_codec_error(bytes(data[: cut % len(data)]))
