"""Serialise a list of named float arrays (a model or an update) without copies or pickle.

Layout: ``b"FCT1"`` | u32 header length | JSON header | raw little-endian array bytes.
The header lists name, dtype and shape of each array; decoding is untrusted input and is
checked against the header and, when given, the expected layout of the study's model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"FCT1"
_ALLOWED_DTYPES = {"float32", "float16", "float64"}
MAX_HEADER_BYTES = 4 * 1024 * 1024


class TensorFormatError(ValueError):
    """Bytes that are not a valid fedcare tensor list."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


def encode_tensors(names: Sequence[str], arrays: Sequence[np.ndarray]) -> bytes:
    if len(names) != len(arrays):
        raise TensorFormatError(f"{len(names)} names for {len(arrays)} arrays")
    header = []
    parts: list[bytes | memoryview] = []
    for name, arr in zip(names, arrays):
        arr = np.ascontiguousarray(arr)
        if str(arr.dtype) not in _ALLOWED_DTYPES:
            raise TensorFormatError(f"array {name!r} has dtype {arr.dtype}; expected one of {sorted(_ALLOWED_DTYPES)}")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        header.append({"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)})
        parts.append(memoryview(arr).cast("B"))
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *parts])


def allocate_tensors(specs: Sequence[TensorSpec]) -> tuple[bytearray, list[np.ndarray]]:
    """An encoded tensor list with its arrays still to fill: the buffer, and writable views
    into it, one per spec. Writing a result straight into them spares `encode_tensors`' copy."""
    header, sizes = [], []
    for spec in specs:
        if spec.dtype not in _ALLOWED_DTYPES:
            raise TensorFormatError(f"array {spec.name!r} has dtype {spec.dtype}; expected one of {sorted(_ALLOWED_DTYPES)}")
        header.append({"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)})
        sizes.append(int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize)
    head = json.dumps(header, separators=(",", ":")).encode()
    offset = 8 + len(head)
    buf = bytearray(offset + sum(sizes))
    buf[:offset] = MAGIC + struct.pack("<I", len(head)) + head
    views = []
    for spec, size in zip(specs, sizes):
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        views.append(np.frombuffer(buf, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(spec.shape))
        offset += size
    return buf, views


def decode_tensors(
    data: bytes | memoryview,
    *,
    expected: Sequence[TensorSpec] | None = None,
    allow_non_finite: bool = False,
) -> tuple[list[str], list[np.ndarray]]:
    """Decode; arrays are read-only views into `data` (no copy)."""
    view = memoryview(data)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise TensorFormatError("not a fedcare tensor list: the 'FCT1' prefix is missing")
    (head_len,) = struct.unpack("<I", view[4:8])
    if head_len > MAX_HEADER_BYTES or 8 + head_len > len(view):
        raise TensorFormatError(f"header length {head_len} does not fit in {len(view)} bytes")
    try:
        header = json.loads(bytes(view[8 : 8 + head_len]))
        specs = [TensorSpec(str(h["name"]), tuple(int(d) for d in h["shape"]), str(h["dtype"])) for h in header]
    except (ValueError, KeyError, TypeError) as e:
        raise TensorFormatError(f"tensor header is malformed: {e}") from None
    if expected is not None:
        _check_layout(specs, expected)
    names, arrays, offset = [], [], 8 + head_len
    for spec in specs:
        if spec.dtype not in _ALLOWED_DTYPES or any(d < 0 for d in spec.shape):
            raise TensorFormatError(f"array {spec.name!r}: dtype {spec.dtype} / shape {spec.shape} not allowed")
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        count = int(np.prod(spec.shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(view):
            raise TensorFormatError(f"array {spec.name!r} needs {nbytes} bytes but only {len(view) - offset} remain (truncated?)")
        arr = np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(spec.shape)
        if not allow_non_finite and not np.isfinite(arr).all():
            raise TensorFormatError(f"array {spec.name!r} contains NaN or Inf")
        names.append(spec.name)
        arrays.append(arr)
        offset += nbytes
    if offset != len(view):
        raise TensorFormatError(f"{len(view) - offset} unexpected bytes after the last array")
    return names, arrays


def _check_layout(got: Sequence[TensorSpec], expected: Sequence[TensorSpec]) -> None:
    if len(got) != len(expected):
        raise TensorFormatError(f"expected {len(expected)} arrays, got {len(got)}")
    for g, e in zip(got, expected):
        if g.name != e.name or g.shape != e.shape or g.dtype != e.dtype:
            # dtype too: a float64 array holding 1e300 is finite, but not once cast to the model's float32
            raise TensorFormatError(f"array {g.name!r} {g.shape} {g.dtype}: expected {e.name!r} {e.shape} {e.dtype}")
