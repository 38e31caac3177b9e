"""How each codec writes the flat vector of an update's values (see wire.py for the frame).

    none   each array's values in its own dtype (lossless)
    fp16   IEEE half precision
    q8/q4  stochastic quantisation with one float32 scale per block (QSGD-style, Alistarh et
           al. 2017): levels -L..L (L = 127 / 7), rounded up or down at random with the
           probabilities that make the decoded value unbiased; q4 packs two levels per byte
    topk   the k largest magnitudes: u32 k, k strictly increasing u32 indices, k float32 values
    randk  k coordinates chosen from a seed shared by all silos of a round: u64 seed, u32 k,
           k float32 values (indices are recomputed from the seed, not sent)

k = round(fraction * n), at least 1. top-k and random-k are not rescaled: pair them with
`ErrorFeedback`, which carries what was not sent into the next round.
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod

import numpy as np

from coordinator.api.codecs.wire import CODEC_IDS, CodecError, Layout, Reader

_F32_MAX = float(np.finfo(np.float32).max)


class Scheme(ABC):
    """One value encoding. `fraction` is the kept share for sparse schemes, None when decoding
    bytes of unknown origin (then only the sizes in the bytes are checked)."""

    name: str

    def __init__(self, *, fraction: float | None = None, block_size: int = 256) -> None:
        self.fraction, self.block_size = fraction, block_size

    @property
    def codec_id(self) -> int:
        return CODEC_IDS[self.name]

    @abstractmethod
    def encode(self, x: np.ndarray, layout: Layout, *, seed: int | None, rng: np.random.Generator) -> bytes:
        """Payload for the flat float64 vector `x`."""

    @abstractmethod
    def decode(self, r: Reader, layout: Layout) -> np.ndarray:
        """Flat float64 vector of `layout.total` values read from `r`."""


def to_float32(x: np.ndarray, what: str) -> np.ndarray:
    if x.size and np.abs(x).max() > _F32_MAX:
        raise CodecError(f"{what}: a value exceeds the float32 range; clip the update before encoding")
    return x.astype("<f4")


def finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise CodecError(f"{what} holds NaN or Inf")
    return x


class Raw(Scheme):
    name = "none"

    def encode(self, x, layout, *, seed, rng):
        parts, start = [], 0
        for dtype, shape in zip(layout.dtypes, layout.shapes):
            size = math.prod(shape)
            part = x[start : start + size]
            if size and np.abs(part).max() > float(np.finfo(dtype).max):
                raise CodecError(f"a value exceeds the range of its array's dtype {dtype}")
            parts.append(part.astype(dtype).tobytes())
            start += size
        return b"".join(parts)

    def decode(self, r, layout):
        out, start = np.empty(layout.total), 0
        for j, (dtype, shape) in enumerate(zip(layout.dtypes, layout.shapes)):
            size = math.prod(shape)
            out[start : start + size] = finite(r.array(dtype.str, size, f"array {j} values"), f"array {j}")
            start += size
        return out


class Fp16(Scheme):
    name = "fp16"

    def encode(self, x, layout, *, seed, rng):
        if x.size and np.abs(x).max() > float(np.finfo(np.float16).max):
            raise CodecError("fp16: a value exceeds 65504, the float16 range; clip the update or use q8")
        return x.astype("<f2").tobytes()

    def decode(self, r, layout):
        return finite(r.array("<f2", layout.total, "fp16 values"), "fp16 values").astype(np.float64)


class Quantised(Scheme):
    """Stochastic block quantisation; `levels` = L, values are integers in [-L, L]."""

    levels: int

    def encode(self, x, layout, *, seed, rng):
        n, block = x.size, self.block_size
        blocks = -(-n // block)
        padded = np.zeros(blocks * block)
        padded[:n] = x
        padded = padded.reshape(blocks, block)
        absmax = np.abs(padded).max(axis=1) if blocks else np.zeros(0)
        scale = to_float32(absmax, self.name)
        scale = np.where(scale < absmax, np.nextafter(scale, np.float32(np.inf)), scale)  # never round the scale down
        if not np.isfinite(scale).all():
            raise CodecError(f"{self.name}: a value exceeds the float32 range; clip the update before encoding")
        y = padded / np.where(scale > 0, scale, 1.0)[:, None] * self.levels
        low = np.floor(y)
        q = low + (rng.random(y.shape) < (y - low))
        q = np.clip(q, -self.levels, self.levels).astype(np.int8).ravel()[:n]
        return struct.pack("<I", block) + scale.astype("<f4").tobytes() + self._pack_levels(q)

    def decode(self, r, layout):
        n = layout.total
        block = r.uint("I", f"{self.name} block size")
        if not 1 <= block <= 2**20:
            raise CodecError(f"{self.name}: block size {block} outside 1..{2**20}")
        blocks = -(-n // block)
        scale = r.array("<f4", blocks, f"{self.name} scales")
        if not (np.isfinite(scale).all() and (scale >= 0).all()):
            raise CodecError(f"{self.name}: block scales must be finite and >= 0")
        q = self._unpack_levels(r, n)
        if n and np.abs(q).max() > self.levels:
            raise CodecError(f"{self.name}: a quantised level lies outside -{self.levels}..{self.levels}")
        return q * (scale.astype(np.float64)[np.arange(n) // block] / self.levels)

    @abstractmethod
    def _pack_levels(self, q: np.ndarray) -> bytes: ...

    @abstractmethod
    def _unpack_levels(self, r: Reader, n: int) -> np.ndarray: ...


class Q8(Quantised):
    name, levels = "q8", 127

    def _pack_levels(self, q):
        return q.astype("i1").tobytes()

    def _unpack_levels(self, r, n):
        return r.array("i1", n, "q8 levels").astype(np.int16)


class Q4(Quantised):
    """Two levels per byte, low nibble first, each stored as level + 8 (1..15); an odd count
    leaves the last high nibble 0."""

    name, levels = "q4", 7

    def _pack_levels(self, q):
        nibbles = (q.astype(np.int16) + 8).astype(np.uint8)
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()

    def _unpack_levels(self, r, n):
        packed = r.array("u1", -(-n // 2), "q4 levels")
        nibbles = np.empty(packed.size * 2, dtype=np.int16)
        nibbles[0::2], nibbles[1::2] = packed & 0x0F, packed >> 4
        if n % 2 and nibbles[-1] != 0:
            raise CodecError("q4: the padding nibble after an odd number of levels must be 0")
        nibbles = nibbles[:n]
        if n and nibbles.min() < 1:
            raise CodecError("q4: a level nibble is 0, outside the valid 1..15")
        return nibbles - 8


def keep_count(n: int, fraction: float) -> int:
    """How many of n coordinates top-k / random-k keep: round(fraction * n), at least 1."""
    return 0 if n == 0 else max(1, min(n, math.floor(fraction * n + 0.5)))


class Sparse(Scheme):
    def _check_k(self, k: int, n: int) -> None:
        if k > n:
            raise CodecError(f"{self.name}: {k} kept values declared for an update of {n} values")
        if self.fraction is not None and k > keep_count(n, self.fraction):
            raise CodecError(
                f"{self.name}: {k} kept values, but the study keeps {keep_count(n, self.fraction)} "
                f"(fraction {self.fraction}) of {n}"
            )


class TopK(Sparse):
    name = "topk"

    def encode(self, x, layout, *, seed, rng):
        k = keep_count(x.size, self.fraction or 1.0)
        idx = np.arange(x.size) if k == x.size else np.sort(np.argpartition(-np.abs(x), k - 1)[:k])
        return struct.pack("<I", k) + idx.astype("<u4").tobytes() + to_float32(x[idx], "topk").tobytes()

    def decode(self, r, layout):
        n = layout.total
        k = r.uint("I", "topk count")
        self._check_k(k, n)
        idx = r.array("<u4", k, "topk indices").astype(np.int64)
        if k and (idx[-1] >= n or (np.diff(idx) <= 0).any()):
            raise CodecError(f"topk: indices must be strictly increasing and below {n}")
        out = np.zeros(n)
        out[idx] = finite(r.array("<f4", k, "topk values"), "topk values")
        return out


class RandK(Sparse):
    name = "randk"

    def encode(self, x, layout, *, seed, rng):
        if seed is None:
            raise CodecError("randk needs the round's shared seed: encode(arrays, seed=...)")
        check_seed(seed)
        idx = select(x.size, keep_count(x.size, self.fraction or 1.0), seed)
        return struct.pack("<QI", seed, idx.size) + to_float32(x[idx], "randk").tobytes()

    def decode(self, r, layout):
        n = layout.total
        seed, k = r.uint("Q", "randk seed"), r.uint("I", "randk count")
        self._check_k(k, n)
        if self.fraction is not None and k != keep_count(n, self.fraction):
            raise CodecError(f"randk: {k} values, the study keeps exactly {keep_count(n, self.fraction)} of {n}")
        values = finite(r.array("<f4", k, "randk values"), "randk values")
        out = np.zeros(n)
        out[select(n, k, seed)] = values
        return out


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise CodecError(f"randk seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def select(n: int, k: int, seed: int) -> np.ndarray:
    """The k coordinates of n that `seed` picks, sorted.

    Each coordinate gets a splitmix64 hash of (index, seed) (Steele et al. 2014) and the k
    smallest hashes win. The hash is a bijection of 64-bit integers, so there are no ties, and
    it is plain integer arithmetic, so every silo gets the same coordinates whatever its numpy.
    """
    if k >= n:
        return np.arange(n, dtype=np.int64)
    z = np.arange(n, dtype=np.uint64)
    z *= np.uint64(0x9E3779B97F4A7C15)
    z += np.uint64(seed)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.sort(np.argpartition(z, k - 1)[:k]).astype(np.int64)


SCHEMES: dict[str, type[Scheme]] = {s.name: s for s in (Raw, Fp16, Q8, Q4, TopK, RandK)}
