"""The wire contract: stubs reproducible, tensor lists and chunked blobs checked as untrusted input."""

from pathlib import Path

import numpy as np
import pytest

from coordinator.api import codegen
from coordinator.api import federation_pb2 as pb
from coordinator.api.chunks import BlobError, chunk_blob, read_chunk, receive_blob, serialized_data_chunks
from coordinator.api.tensors import TensorFormatError, TensorSpec, decode_tensors, encode_tensors


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    for fresh in codegen.generate(tmp_path):
        committed = codegen.API_DIR / fresh.name
        assert fresh.read_text() == committed.read_text(), f"{fresh.name} is stale: run python -m coordinator.api.codegen"


def test_tensors_round_trip_without_copy() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], dtype=np.float32)]
    data = encode_tensors(["a", "b"], arrays)
    names, out = decode_tensors(data, expected=[TensorSpec("a", (2, 3)), TensorSpec("b", (1,))])
    assert names == ["a", "b"]
    for x, y in zip(arrays, out):
        np.testing.assert_array_equal(x, y)
    assert not out[0].flags.writeable  # a view into the received bytes


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"XXXX" + d[4:], "prefix"),
        (lambda d: d[:-3], "truncated"),
        (lambda d: d + b"\0", "unexpected bytes"),
        (lambda d: d[:4] + (10**9).to_bytes(4, "little") + d[8:], "header length"),
    ],
)
def test_malformed_tensor_lists_are_refused(mutate, message) -> None:
    data = encode_tensors(["w"], [np.ones(4, dtype=np.float32)])
    with pytest.raises(TensorFormatError, match=message):
        decode_tensors(mutate(data))


def test_nan_and_layout_mismatch_are_refused() -> None:
    with pytest.raises(TensorFormatError, match="NaN"):
        decode_tensors(encode_tensors(["w"], [np.array([np.nan], dtype=np.float32)]))
    data = encode_tensors(["w"], [np.ones(4, dtype=np.float32)])
    with pytest.raises(TensorFormatError, match="expected"):
        decode_tensors(data, expected=[TensorSpec("w", (5,))])


def _blob(size: int) -> tuple[pb.BlobHeader, bytes]:
    return pb.BlobHeader(ref=pb.BlobRef(study_id="s", kind=pb.BLOB_UPDATE)), np.random.default_rng(0).bytes(size)


def test_chunked_blob_round_trip_above_grpc_message_limit() -> None:
    header, data = _blob(9 << 20)
    chunks = list(chunk_blob(header, data))
    assert all(c.ByteSize() < 4 << 20 for c in chunks)
    got_header, got = receive_blob(chunks, max_bytes=10 << 20)
    assert got == data and got_header.size == len(data)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 1000, 16_385, 300_000])
def test_hand_framed_chunks_are_what_protobuf_writes(size: int) -> None:
    data = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    framed = serialized_data_chunks(data, chunk_bytes=16_384)
    pieces = [data[i : i + 16_384] for i in range(0, size, 16_384)]
    assert framed == [pb.Chunk(data=p).SerializeToString() for p in pieces]
    assert b"".join(pb.Chunk.FromString(f).data for f in framed) == data


def test_serialised_chunks_read_like_parsed_ones() -> None:
    data = bytes(range(256)) * 1000
    header = pb.BlobHeader()  # chunk_blob fills in size and SHA-256
    parsed, raw = list(chunk_blob(header, data, chunk_bytes=4096)), [c.SerializeToString() for c in chunk_blob(header, data, chunk_bytes=4096)]
    for p, r in zip(parsed, raw):
        kind_p, body_p = read_chunk(p)
        kind_r, body_r = read_chunk(r)
        assert kind_p == kind_r and (body_p == body_r if kind_p == "header" else bytes(body_p) == bytes(body_r))
    assert receive_blob(raw, max_bytes=1 << 20)[1] == data  # serialised chunks, hashed and checked alike
    # Not the hand framing (an extra field, a length that does not fill the message): protobuf decides.
    unusual = pb.Chunk(data=b"xyz").SerializeToString() + b"\x12\x01q"  # repeated field: the last one wins
    assert bytes(read_chunk(unusual)[1]) == b"q"
    with pytest.raises(BlobError, match="not a valid Chunk"):
        read_chunk(b"\x12\x05ab")  # declares 5 bytes, holds 2
    with pytest.raises(BlobError, match="neither a header nor data"):
        read_chunk(b"")


def test_chunked_blob_violations_are_refused() -> None:
    header, data = _blob(3000)
    chunks = list(chunk_blob(header, data, chunk_bytes=1000))
    with pytest.raises(BlobError, match="truncated"):
        receive_blob(chunks[:-1], max_bytes=10_000)
    with pytest.raises(BlobError, match="exceeds the limit"):
        receive_blob(chunks, max_bytes=100)
    with pytest.raises(BlobError, match="longer than"):
        receive_blob(chunks + [pb.Chunk(data=b"x")], max_bytes=10_000)
    tampered = chunks[:1] + [pb.Chunk(data=b"y" * 1000)] + chunks[2:]
    with pytest.raises(BlobError, match="SHA-256"):
        receive_blob(tampered, max_bytes=10_000)
    with pytest.raises(BlobError, match="header"):
        receive_blob(chunks[1:], max_bytes=10_000)
