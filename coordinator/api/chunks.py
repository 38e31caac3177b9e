"""Chunked blob streams: a header that declares size and SHA-256, then data pieces.

Both sides use these two functions, so the framing rules live in one place: the sender
never builds a message above gRPC's limit, and the receiver refuses a stream that is
longer than declared, longer than its own limit, shorter than declared, or whose bytes do
not hash to the declared SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

from google.protobuf.message import DecodeError

from coordinator.api import federation_pb2 as pb

CHUNK_BYTES = 1 << 18  # 256 KiB: bounds what gRPC buffers per stream (memory per silo); still few calls


class BlobError(ValueError):
    """A blob stream that breaks the framing rules."""


class BlobTruncated(BlobError):
    """The stream ended before the declared size: what arrived is a prefix an upload may resume from."""


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_blob(header: pb.BlobHeader, data: bytes | memoryview, *, chunk_bytes: int = CHUNK_BYTES,
               total: int | None = None) -> Iterator[pb.Chunk]:
    """Yield the header (with size and sha256 filled in) followed by the data pieces.

    To resume an upload, `data` is the rest from `header.offset` and `total` the whole size
    (the header's sha256 must then already be set).
    """
    view = memoryview(data)
    header.size = len(view) if total is None else total
    if not header.sha256:
        header.sha256 = sha256_hex(view)
    yield pb.Chunk(header=header)
    for start in range(0, len(view), chunk_bytes):
        yield pb.Chunk(data=bytes(view[start : start + chunk_bytes]))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_DATA_TAG = bytes([(pb.Chunk.DESCRIPTOR.fields_by_name["data"].number << 3) | 2])  # field 2, length-delimited


def _framed(piece: memoryview) -> bytes:
    """A data chunk serialised by hand: tag, length, bytes, one copy."""
    return b"".join((_DATA_TAG, _varint(len(piece)), piece))


def serialized_data_chunks(data: bytes | memoryview, *, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """The data pieces of a blob as serialised `Chunk` messages, to send again and again without copies.

    Framed by hand (tag, length, bytes: exactly what `Chunk(data=...).SerializeToString()`
    writes, which a test checks) so that each piece is copied once, not three times.
    """
    view = memoryview(data).cast("B")
    return [_framed(piece) for piece in (view[i : i + chunk_bytes] for i in range(0, len(view), chunk_bytes))]


def serialized_blob_stream(header: pb.BlobHeader, data: bytes | memoryview, *, chunk_bytes: int = CHUNK_BYTES,
                           total: int | None = None) -> Iterator[bytes]:
    """`chunk_blob`, already serialised, piece by piece: for a stream whose serializer passes
    bytes through, so an upload copies each piece once instead of three times."""
    view = memoryview(data).cast("B")
    header.size = len(view) if total is None else total
    if not header.sha256:
        header.sha256 = sha256_hex(view)
    yield pb.Chunk(header=header).SerializeToString()
    for start in range(0, len(view), chunk_bytes):
        piece = view[start : start + chunk_bytes]
        yield _framed(piece)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(view) and shift < 64:
        byte = view[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def read_chunk(item: pb.Chunk | bytes) -> tuple[str, pb.BlobHeader | memoryview]:
    """("header", header) or ("data", bytes) of a chunk, parsed or still serialised.

    A serialised data chunk framed as `serialized_data_chunks` frames it (one field, its
    length filling the message) is read as a view, without a copy; anything else goes
    through protobuf's parser, and what it cannot parse is a BlobError.
    """
    if not isinstance(item, pb.Chunk):
        view = memoryview(item)
        if view[:1] == _DATA_TAG:
            length, pos = _read_varint(view, 1)
            if length == len(view) - pos:
                return "data", view[pos:]
        try:
            item = pb.Chunk.FromString(bytes(view))
        except DecodeError:
            raise BlobError("a chunk is not a valid Chunk message") from None
    body = item.WhichOneof("body")
    if body == "header":
        return "header", item.header
    if body == "data":
        return "data", memoryview(item.data)  # each read of a bytes field copies it: read once
    raise BlobError("a chunk carries neither a header nor data")


def receive_blob_to(chunks: Iterable[pb.Chunk | bytes], *, max_bytes: int, write: Callable[[memoryview], object],
                    resumed: bytes | memoryview = b"") -> pb.BlobHeader:
    """Read one blob from a chunk stream into `write`; verify its declared size and hash.

    The caller's sink decides where the bytes go (memory, a file), so a large blob is never
    held twice. On any violation BlobError is raised and the caller discards what it wrote.
    `resumed` is what an interrupted upload already delivered; the stream must continue it
    (header.offset == len(resumed)) and the hash covers both. Chunks may arrive parsed or as
    their serialised bytes (see `read_chunk`).
    """
    it = iter(chunks)
    first = next(it, None)
    kind, header = read_chunk(first) if first is not None else ("", None)
    if kind != "header":
        raise BlobError("blob stream must start with a header chunk")
    assert isinstance(header, pb.BlobHeader)
    if header.size > max_bytes:
        raise BlobError(f"declared size {header.size} bytes exceeds the limit of {max_bytes} bytes")
    if header.offset != len(resumed):
        raise BlobError(f"stream resumes at offset {header.offset}, but {len(resumed)} bytes are held")
    received = len(resumed)
    digest = hashlib.sha256(resumed)
    for item in it:
        kind, data = read_chunk(item)
        if kind != "data":
            raise BlobError("a second header arrived inside a blob stream")
        assert isinstance(data, memoryview)
        received += len(data)
        if received > header.size:
            raise BlobError(f"stream is longer than its declared {header.size} bytes")
        digest.update(data)
        write(data)
    if received != header.size:
        raise BlobTruncated(f"stream ended after {received} of {header.size} declared bytes (truncated)")
    if digest.hexdigest() != header.sha256:
        raise BlobError(f"SHA-256 mismatch: declared {header.sha256[:16]}…, received {digest.hexdigest()[:16]}…")
    return header


def receive_blob(chunks: Iterable[pb.Chunk | bytes], *, max_bytes: int) -> tuple[pb.BlobHeader, bytearray]:
    """Read one blob into memory (see receive_blob_to)."""
    buf = bytearray()
    header = receive_blob_to(chunks, max_bytes=max_bytes, write=buf.extend)
    return header, buf
