"""The byte layout shared by every update codec, and careful reading of untrusted bytes.

    offset 0   magic b"FCUP" (fedcare update)
           4   u8 format version (1)
           5   u8 codec id (CODEC_IDS)
           6   u8 flags: bit 0 = body is one zstd frame
           7   u8 reserved, 0
           8   body: u32 array count; per array u8 dtype code, u8 ndim, ndim x u64 dims;
               then the codec's payload for the flat vector of all values in order.

Integers are little-endian. Decoding never allocates more than `max_values` values (and a
proportional number of bytes for zstd), and every count, length and index is checked before use.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import zstandard

MAGIC = b"FCUP"
VERSION = 1
FLAG_ZSTD = 0x01
CODEC_IDS = {"none": 0, "fp16": 1, "q8": 2, "q4": 3, "topk": 4, "randk": 5}
CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}
DTYPE_CODES = {np.dtype("<f2"): 1, np.dtype("<f4"): 2, np.dtype("<f8"): 3}
DTYPES = {v: k for k, v in DTYPE_CODES.items()}
MAX_NDIM = 32
MAX_TOTAL = 2**32 - 1  # sparse indices travel as u32
DEFAULT_MAX_ARRAYS = 4096
_HEADER = struct.Struct("<4sBBBB")


class CodecError(ValueError):
    """Bytes that are not a valid encoded update, or arrays that cannot be encoded."""


@dataclass(frozen=True)
class Layout:
    """Dtypes and shapes of an update's arrays; the codec payload covers their flat concatenation."""

    dtypes: tuple[np.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def total(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def pack(self) -> bytes:
        parts = [struct.pack("<I", len(self.shapes))]
        for dtype, shape in zip(self.dtypes, self.shapes):
            parts.append(struct.pack(f"<BB{len(shape)}Q", DTYPE_CODES[dtype], len(shape), *shape))
        return b"".join(parts)


def flatten(arrays: Sequence[np.ndarray]) -> tuple[Layout, np.ndarray]:
    """Check an update before encoding; return its layout and its values as one float64 vector."""
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, Sequence):
        raise CodecError(f"an update is a list of numpy arrays, got {type(arrays).__name__}")
    dtypes, shapes = [], []
    for j, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise CodecError(f"array {j} is a {type(a).__name__}, expected a numpy array")
        dtype = a.dtype.newbyteorder("<")
        if dtype not in DTYPE_CODES:
            raise CodecError(f"array {j} has dtype {a.dtype}; codecs carry float16, float32 or float64 arrays")
        if a.ndim > MAX_NDIM:
            raise CodecError(f"array {j} has {a.ndim} dimensions, at most {MAX_NDIM} are supported")
        if not np.isfinite(a).all():
            raise CodecError(f"array {j} holds NaN or Inf; refusing to send a diverged update")
        dtypes.append(dtype)
        shapes.append(tuple(int(d) for d in a.shape))
    layout = Layout(tuple(dtypes), tuple(shapes))
    if layout.total > MAX_TOTAL:
        raise CodecError(f"update has {layout.total} values; at most {MAX_TOTAL} can be encoded")
    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    return layout, flat


def unflatten(flat: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """Split decoded float64 values into the declared arrays; values must fit their dtype."""
    out, start = [], 0
    for j, (dtype, shape) in enumerate(zip(layout.dtypes, layout.shapes)):
        size = math.prod(shape)
        with np.errstate(over="ignore"):
            a = flat[start : start + size].astype(dtype.newbyteorder("=")).reshape(shape)
        if not np.isfinite(a).all():
            raise CodecError(f"array {j}: decoded values are NaN/Inf or overflow its dtype {dtype}")
        out.append(a)
        start += size
    return out


def pack(codec_id: int, layout: Layout, payload: bytes, *, zstd: bool) -> bytes:
    body = layout.pack() + payload
    if zstd:
        body = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(body)
    return _HEADER.pack(MAGIC, VERSION, codec_id, FLAG_ZSTD if zstd else 0, 0) + body


class Reader:
    """Bounds-checked reading of a byte string; every shortfall is a CodecError naming the field."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self._view) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise CodecError(f"truncated update: {what} needs {n} bytes at offset {self.pos}, {self.remaining} left")
        chunk = self._view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(count * dt.itemsize, what), dtype=dt)

    def finish(self) -> None:
        if self.remaining:
            raise CodecError(f"{self.remaining} unexpected bytes after the payload at offset {self.pos}")


def unpack(data: object, *, max_values: int, max_arrays: int) -> tuple[int, Layout, Reader]:
    """Read header and layout; return the codec id, the layout and a reader at the payload."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"an encoded update is bytes, got {type(data).__name__}")
    if max_values < 0 or max_arrays < 0:
        raise CodecError("max_values and max_arrays must be >= 0")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise CodecError(f"encoded update is {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, codec_id, flags, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"not a fedcare update: starts with {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CodecError(f"update format version {version}; this node reads version {VERSION}: upgrade fedcare")
    if codec_id not in CODEC_NAMES:
        raise CodecError(f"unknown codec id {codec_id}; known: {CODEC_IDS}")
    if flags & ~FLAG_ZSTD or reserved:
        raise CodecError(f"unknown header flags {flags:#x}/{reserved:#x}; this node reads version {VERSION}")
    body = data[_HEADER.size :]
    if flags & FLAG_ZSTD:
        body = _unzstd(body, limit=64 + max_arrays * (2 + 8 * MAX_NDIM) + 8 * max_values)
    reader = Reader(body)
    count = reader.uint("I", "array count")
    if count > max_arrays:
        raise CodecError(f"update declares {count} arrays, more than the {max_arrays} allowed")
    dtypes, shapes, total = [], [], 0
    for j in range(count):
        code, ndim = reader.uint("B", f"array {j} dtype"), reader.uint("B", f"array {j} ndim")
        if code not in DTYPES:
            raise CodecError(f"array {j}: unknown dtype code {code}")
        if ndim > MAX_NDIM:
            raise CodecError(f"array {j}: {ndim} dimensions, at most {MAX_NDIM}")
        shape = struct.unpack(f"<{ndim}Q", reader.take(8 * ndim, f"array {j} shape"))
        total += math.prod(shape)
        if total > max_values:
            raise CodecError(f"update declares more than max_values={max_values} values (array {j} has shape {shape})")
        dtypes.append(DTYPES[code])
        shapes.append(tuple(shape))
    return codec_id, Layout(tuple(dtypes), tuple(shapes)), reader


def _unzstd(body: bytes, *, limit: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError as e:
        raise CodecError(f"zstd-flagged body is not a zstd frame: {e}") from None
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size > limit:
        raise CodecError(f"zstd frame declares {size if size != zstandard.CONTENTSIZE_UNKNOWN else 'no'} content size; "
                         f"at most {limit} bytes are allowed here")
    try:
        # The one-shot call allocates exactly the declared size and fails if the frame holds more;
        # the second pass (now bounded) finds bytes left after the frame.
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=limit)
        reader = zstandard.ZstdDecompressor().decompressobj()
        reader.decompress(body)
    except zstandard.ZstdError as e:
        raise CodecError(f"corrupt zstd body: {e}") from None
    if len(out) != size or not reader.eof or reader.unused_data:
        raise CodecError("zstd body does not hold exactly one complete frame of the declared size")
    return out
