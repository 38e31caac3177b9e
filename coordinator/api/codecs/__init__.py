"""Update codecs: how a silo's update becomes bytes and back, on both sides of the wire.

    codec = build_codec(spec.compression.codec, spec.compression.fraction, spec.compression.zstd)
    data = codec.encode(arrays, seed=round_seed)              # silo (seed: randk only)
    arrays = codec.decode(data, max_values=model_size)        # coordinator: untrusted bytes

`decode` raises only CodecError, and never allocates more than `max_values` values. Silos that
compress lossily wrap the codec in `ErrorFeedback`. `randk_indices` gives the coordinates a
round's seed selects, for selecting before CKKS encryption.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from coordinator.api.codecs.feedback import ErrorFeedback
from coordinator.api.codecs.schemes import SCHEMES, Scheme, check_seed, keep_count, select
from coordinator.api.codecs.wire import (
    CODEC_NAMES,
    DEFAULT_MAX_ARRAYS,
    CodecError,
    Layout,
    flatten,
    pack,
    unflatten,
    unpack,
)

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "ErrorFeedback",
    "UpdateCodec",
    "build_codec",
    "decode",
    "encode",
    "keep_count",
    "randk_indices",
]

CODECS = tuple(SCHEMES)  # the names CompressionSpec.codec allows


@runtime_checkable
class Codec(Protocol):
    name: str

    def encode(self, arrays: Sequence[np.ndarray], *, seed: int | None = None) -> bytes: ...

    def decode(self, data: bytes, *, max_values: int, max_arrays: int = DEFAULT_MAX_ARRAYS) -> list[np.ndarray]: ...


class UpdateCodec:
    """One study's codec. Decoding also checks that the bytes use this codec and, for top-k /
    random-k, this study's kept fraction.

    rng drives stochastic rounding (q8/q4): leave it None in production so every silo rounds
    with fresh OS entropy; pass a seed in tests.
    """

    def __init__(self, scheme: Scheme, *, zstd: bool = False, rng: np.random.Generator | int | None = None) -> None:
        self.scheme, self.zstd = scheme, bool(zstd)
        self.rng = np.random.default_rng(rng)

    @property
    def name(self) -> str:
        return self.scheme.name

    def encode(self, arrays: Sequence[np.ndarray], *, seed: int | None = None) -> bytes:
        """Encode an update. `seed` is the round's seed shared by all silos (randk needs it)."""
        layout, flat = flatten(arrays)
        return self.encode_flat(flat, layout, seed=seed)

    def encode_flat(self, flat: np.ndarray, layout: Layout, *, seed: int | None = None) -> bytes:
        payload = self.scheme.encode(flat, layout, seed=seed, rng=self.rng)
        return pack(self.scheme.codec_id, layout, payload, zstd=self.zstd)

    def decode(self, data: bytes, *, max_values: int, max_arrays: int = DEFAULT_MAX_ARRAYS) -> list[np.ndarray]:
        codec_id, layout, reader = unpack(data, max_values=max_values, max_arrays=max_arrays)
        if codec_id != self.scheme.codec_id:
            raise CodecError(f"update was encoded with {CODEC_NAMES[codec_id]!r}, this study uses {self.name!r}")
        return _decode_body(self.scheme, layout, reader)

    def __repr__(self) -> str:
        return f"UpdateCodec({self.name!r}, fraction={self.scheme.fraction}, zstd={self.zstd})"


def build_codec(
    name: str,
    fraction: float = 0.1,
    zstd: bool = False,
    *,
    rng: np.random.Generator | int | None = None,
    block_size: int = 256,
) -> UpdateCodec:
    """The codec named in a study's `compression` section; `fraction` matters for topk/randk."""
    if name not in SCHEMES:
        raise CodecError(f"unknown codec {name!r}; known codecs: {', '.join(CODECS)}")
    if not (0 < fraction <= 1):
        raise CodecError(f"fraction (share of values kept by topk/randk) must be in (0, 1], got {fraction!r}")
    if not 1 <= block_size <= 2**20:
        raise CodecError(f"block_size must be in 1..{2**20}, got {block_size!r}")
    return UpdateCodec(SCHEMES[name](fraction=fraction, block_size=block_size), zstd=zstd, rng=rng)


def encode(
    arrays: Sequence[np.ndarray],
    codec: str = "none",
    *,
    fraction: float = 0.1,
    zstd: bool = False,
    seed: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> bytes:
    """One-off encoding; see `build_codec`."""
    return build_codec(codec, fraction, zstd, rng=rng).encode(arrays, seed=seed)


def decode(data: bytes, *, max_values: int, max_arrays: int = DEFAULT_MAX_ARRAYS) -> list[np.ndarray]:
    """Decode bytes of any codec (named in their header); sizes are checked, fractions are not."""
    codec_id, layout, reader = unpack(data, max_values=max_values, max_arrays=max_arrays)
    return _decode_body(SCHEMES[CODEC_NAMES[codec_id]](), layout, reader)


def _decode_body(scheme: Scheme, layout: Layout, reader) -> list[np.ndarray]:
    flat = scheme.decode(reader, layout)
    reader.finish()
    return unflatten(flat, layout)


def randk_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted coordinates (int64) that random-k keeps of n values for a round's seed.

    Every silo given the same (n, fraction, seed) gets the same indices, so their sparse
    updates add up coordinate by coordinate; under CKKS, select these before encrypting.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise CodecError(f"n must be a whole number >= 0, got {n!r}")
    if not (0 < fraction <= 1):
        raise CodecError(f"fraction must be in (0, 1], got {fraction!r}")
    return select(int(n), keep_count(int(n), fraction), check_seed(seed))
