"""Hostile input against a real coordinator: a gRPC server in this process, a real client channel.

Hypothesis throws undecodable protobufs, malformed chunk streams, unknown ids, wrong nonces
and replays at the server. Whatever comes in: the server keeps answering, every refusal is
a proper status code (never the servicer's INTERNAL), and the study's rows change only
when a call was accepted.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.chunks import chunk_blob, receive_blob
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.server import Coordinator, CoordinatorConfig
from coordinator.store import Base

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# Tables whose rows a refused call must leave alone (traffic counts bytes of refused calls too;
# silos.last_seen moves with every poll).
GUARDED = ("studies", "enrollments", "rounds", "updates", "skips", "model_versions", "metrics")
METHODS = {  # name -> (kind, request type)
    "Join": ("uu", pb.JoinRequest), "PullTask": ("uu", pb.PullTaskRequest),
    "AnswerProposal": ("uu", pb.ProposalAnswer), "FetchBlob": ("us", pb.BlobRef),
    "PushBlob": ("su", pb.Chunk), "ReportMetrics": ("uu", pb.MetricsReport),
    "SubmitStudy": ("uu", pb.SubmitStudyRequest), "GetStudyStatus": ("uu", pb.StudyRef),
}
OVERSIZED_METADATA = json.dumps({"update_norm": 1.0, "pad": "x" * 70_000})  # over the protocol's 64 KiB
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@dataclass
class Live:
    coordinator: Coordinator = field(repr=False)
    channel: grpc.Channel = field(repr=False)
    stub: pb_grpc.FederationStub = field(repr=False)
    study: str
    update: bytes = field(repr=False)  # a valid (all-zero) update for the study's layout
    silos: tuple[str, str] = ("h1", "h2")

    def round_and_nonce(self, silo: str | None = None) -> tuple[int, str]:
        task = self.stub.PullTask(pb.PullTaskRequest(silo=silo or self.silos[0], wait_s=0), timeout=10)
        assert task.kind == pb.TASK_TRAIN and task.study_id == self.study, task
        return task.round, task.nonce

    def snapshot(self) -> dict[str, list[tuple]]:
        out = {}
        with self.coordinator.store.engine.connect() as conn:
            for name in GUARDED:
                table = Base.metadata.tables[name]
                key = table.c.id if name == "studies" else table.c.study_id
                out[name] = sorted(tuple(r) for r in conn.execute(sa.select(table).where(key == self.study)))
        return out

    def assert_alive(self) -> None:
        status = self.stub.GetStudyStatus(pb.StudyRef(study_id=self.study), timeout=10)
        assert status.study_id == self.study


def _enrol(coordinator: Coordinator, channel: grpc.Channel, silos: tuple[str, str]) -> Live:
    """A plaintext study that `silos` join and approve; round 1 is open when this returns."""
    stub = pb_grpc.FederationStub(channel)
    # late_join = False: a later test's new silos are proposed their own study, not this running one
    spec = StudySpec(name="fuzz", training=TrainingSpec(rounds=3, min_silos=2, expected_silos=2, round_timeout_s=3600,
                                                        late_join=False),
                     privacy=PrivacySpec(dp=False, encryption="none"))
    study = stub.SubmitStudy(pb.SubmitStudyRequest(spec_json=spec.to_json()), timeout=300).study_id
    for silo in silos:
        stub.Join(pb.JoinRequest(silo=silo, modalities=["ehr"]), timeout=10)
        for _ in range(10):  # another test's study still enrolling is declined, as a hospital would
            task = stub.PullTask(pb.PullTaskRequest(silo=silo, wait_s=0), timeout=10)
            assert task.kind == pb.TASK_PROPOSAL, task
            sha = StudySpec.from_json(task.spec_json).sha256()
            mine = task.study_id == study
            stub.AnswerProposal(pb.ProposalAnswer(silo=silo, study_id=task.study_id, accept=mine, spec_sha256=sha),
                                timeout=10)
            if mine:
                break
        else:
            pytest.fail(f"{silo} was never proposed study {study}")
    ref = pb.BlobRef(study_id=study, kind=pb.BLOB_MODEL, version=0, silo=silos[0])
    names, arrays = decode_tensors(receive_blob(list(stub.FetchBlob(ref, timeout=30)), max_bytes=1 << 30)[1])
    update = encode_tensors(names, [np.zeros_like(a) for a in arrays])
    return Live(coordinator, channel, stub, study, update, silos)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory) -> Iterator[tuple[Coordinator, grpc.Channel]]:
    """The coordinator over each store backend (PostgreSQL refuses text that SQLite takes)."""
    state: Path = tmp_path_factory.mktemp("coordinator")
    database = None if request.param == "sqlite" else request.getfixturevalue("postgres_server").create_database()
    coordinator = Coordinator(CoordinatorConfig(insecure=True, listen="127.0.0.1:0", state_dir=state, workers=8,
                                                database=database)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{coordinator.port}")
    yield coordinator, channel
    channel.close()
    coordinator.stop(0)


@pytest.fixture(scope="module")
def live(server) -> Live:
    return _enrol(*server, ("h1", "h2"))


def _code_of(call) -> grpc.StatusCode | None:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
        return None
    except grpc.RpcError as e:
        # The servicer's crash answer (INTERNAL, "internal error in <method>..."); a refusal may echo
        # the input, which can hold those words, so the code decides, not the text alone.
        crashed = e.code() == grpc.StatusCode.INTERNAL and (e.details() or "").startswith("internal error in")
        assert not crashed, f"servicer crashed: {e.details()}"
        return e.code()


def _assert_refused_or_ok(code: grpc.StatusCode | None, *, undecodable_ok: bool = False) -> None:
    allowed = set(REFUSALS) | {None}
    if undecodable_ok:  # grpc's own answer to bytes that are not the request message
        allowed |= {grpc.StatusCode.INTERNAL}
    assert code in allowed, code


def _update_header(live: Live, **overrides) -> pb.BlobHeader:
    task = live.stub.PullTask(pb.PullTaskRequest(silo=live.silos[0], wait_s=0), timeout=10)
    rnd, nonce = task.round, task.nonce  # (round 0 / no nonce once the silo has answered the round)
    fields = dict(round=rnd, nonce=nonce, weight=1.0, encoding="tensors", size=len(live.update),
                  sha256=hashlib.sha256(live.update).hexdigest())
    fields.update(overrides)
    ref = pb.BlobRef(study_id=fields.pop("study_id", live.study), kind=fields.pop("kind", pb.BLOB_UPDATE),
                     silo=fields.pop("silo", live.silos[0]))
    return pb.BlobHeader(ref=ref, **fields)


def _push(live: Live, chunks: list[pb.Chunk]):
    return lambda: live.stub.PushBlob(iter(chunks), timeout=20)


@pytest.mark.parametrize("what", ["float64", "oversized_metadata"])
def test_dtype_mismatched_and_oversized_metadata_updates_are_refused(live: Live, what: str) -> None:
    """#16: a float64 update holding 1e300 and 70 KB of metadata are INVALID_ARGUMENT and change nothing."""
    if what == "float64":
        data, metadata = _payload(live, "float64", b""), "{}"
    else:
        data, metadata = live.update, OVERSIZED_METADATA
    header = _update_header(live, size=len(data), sha256=hashlib.sha256(data).hexdigest(), metadata_json=metadata)
    if not header.nonce:
        pytest.skip("the live study's round is no longer open for h1")
    before = live.snapshot()
    chunks = [pb.Chunk(header=header), *[pb.Chunk(data=data[i:i + 65536]) for i in range(0, len(data), 65536)]]
    assert _code_of(_push(live, chunks)) == grpc.StatusCode.INVALID_ARGUMENT
    assert live.snapshot() == before
    live.assert_alive()


# --- undecodable and random protobufs ---------------------------------------------------------------
@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), payloads=st.lists(st.binary(max_size=300), min_size=0, max_size=4))
def test_random_bytes_never_crash_the_server(live: Live, method: str, payloads: list[bytes]) -> None:
    before = live.snapshot()
    kind, _ = METHODS[method]
    path = f"/fedcare.v1.Federation/{method}"
    if kind == "su":
        call = lambda: live.channel.stream_unary(path, request_serializer=None, response_deserializer=None)(
            iter(payloads), timeout=10)
    else:
        multi = live.channel.unary_unary if kind == "uu" else live.channel.unary_stream
        payload = payloads[0] if payloads else b""
        call = lambda: multi(path, request_serializer=None, response_deserializer=None)(payload, timeout=10)
    code = _code_of(call)
    # A random PullTask may name a silo that exists and long-poll past the deadline; that is fine.
    _assert_refused_or_ok(code, undecodable_ok=True) if code != grpc.StatusCode.DEADLINE_EXCEEDED else None
    if method not in ("Join", "PullTask"):  # those two may legitimately change state with random input
        assert live.snapshot() == before
    live.assert_alive()


messages = st.one_of(
    st.builds(pb.ProposalAnswer, silo=st.sampled_from(["h1", "h2", "", "ghost"]),
              study_id=st.one_of(st.just("<study>"), st.text(max_size=70)),
              accept=st.booleans(), reason=st.text(max_size=50), spec_sha256=st.text(max_size=70),
              train_samples=st.integers(0, 2**64 - 1)),
    st.builds(pb.MetricsReport, silo=st.sampled_from(["h1", "h2", "", "ghost"]),
              study_id=st.one_of(st.just("<study>"), st.text(max_size=70)),
              round=st.integers(0, 2**32 - 1), model_version=st.integers(0, 2**32 - 1), nonce=st.text(max_size=40),
              metrics=st.dictionaries(st.text(max_size=80), st.floats(), max_size=4), skipped=st.booleans(),
              skip_reason=st.text(max_size=50), samples=st.integers(0, 2**64 - 1), model_sha256=st.text(max_size=80)),
    st.builds(pb.BlobRef, study_id=st.one_of(st.just("<study>"), st.text(max_size=70)),
              kind=st.sampled_from(sorted(pb.BlobKind.values())), version=st.integers(0, 2**32 - 1),
              silo=st.sampled_from(["h1", "h2", "", "ghost"])),
    st.builds(pb.SubmitStudyRequest, spec_json=st.one_of(st.text(max_size=200), st.just('{"name": 5}'))),
    st.builds(pb.StudyRef, study_id=st.one_of(st.just("<study>"), st.text(max_size=70))),
)


@FUZZ
@given(message=messages)
def test_wellformed_nonsense_is_refused_and_changes_nothing(live: Live, message) -> None:
    stub = live.stub
    if getattr(message, "study_id", None) == "<study>":
        message.study_id = live.study
    before = live.snapshot()
    call = {pb.ProposalAnswer: stub.AnswerProposal, pb.MetricsReport: stub.ReportMetrics, pb.BlobRef: stub.FetchBlob,
            pb.SubmitStudyRequest: stub.SubmitStudy, pb.StudyRef: stub.GetStudyStatus}[type(message)]
    code = _code_of(lambda: call(message, timeout=10))
    _assert_refused_or_ok(code)
    if isinstance(message, (pb.ProposalAnswer, pb.MetricsReport)) and message.study_id == live.study:
        # random text cannot hold this study's round nonce, and the study no longer enrols; an enrolled
        # silo's acceptance again is a retried answer, taken as already recorded (nothing changes)
        retried = isinstance(message, pb.ProposalAnswer) and message.accept and message.silo in live.silos
        assert code is not None or retried
    assert live.snapshot() == before
    live.assert_alive()


# --- malformed chunk streams ----------------------------------------------------------------------
@st.composite
def chunk_streams(draw) -> tuple[str, dict, list]:
    layout = draw(st.sampled_from(["empty", "data_first", "two_headers", "header_only", "normal", "extra_data"]))
    header = dict(
        study_id=draw(st.sampled_from(["<study>", "unknown-study", ""])),
        kind=draw(st.sampled_from([pb.BLOB_UPDATE, pb.BLOB_UPDATE, pb.BLOB_KEY_BUNDLE, pb.BLOB_FINAL_MODEL,
                                   pb.BLOB_MODEL, pb.BLOB_UNSPECIFIED])),
        silo=draw(st.sampled_from(["h1", "h2", "", "ghost"])),
        round=draw(st.sampled_from([None, 0, 2, 2**32 - 1])),
        nonce=draw(st.sampled_from([None, "", "0" * 32])),
        size=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 1 << 40]))),
        sha256=draw(st.one_of(st.none(), st.text(max_size=70))),
        weight=draw(st.one_of(st.just(1.0), st.floats())),
        encoding=draw(st.sampled_from(["tensors", "ckks-exact", "", "q8+zstd"])),
        metadata_json=draw(st.sampled_from(["{}", "", "not json", '{"a": [1, 2]}', OVERSIZED_METADATA])),
    )
    payload = draw(st.sampled_from(["valid", "truncated", "flipped", "random", "nan", "float64"]))
    pieces = draw(st.integers(1, 4))
    return layout, header, [payload, pieces, draw(st.binary(max_size=500))]


def _payload(live: Live, kind: str, random: bytes) -> bytes:
    data = bytearray(live.update)
    if kind == "truncated":
        return bytes(data[: len(data) // 2])
    if kind == "flipped":
        data[-1] ^= 0xFF
        return bytes(data)
    if kind == "random":
        return random
    if kind == "nan":
        data[-4:] = np.float32("nan").tobytes()
        return bytes(data)
    if kind == "float64":  # finite as float64, inf once cast to the model's float32 (#16 item 1)
        names, arrays = decode_tensors(live.update)
        return encode_tensors(names, [np.full(a.shape, 1e300, np.float64) for a in arrays])
    return bytes(data)


@FUZZ
@given(stream=chunk_streams())
def test_malformed_chunk_streams_are_refused(live: Live, stream) -> None:
    layout, h, (payload_kind, pieces, random) = stream
    data = _payload(live, payload_kind, random)
    overrides = {k: v for k, v in h.items() if v is not None}
    overrides["study_id"] = live.study if h["study_id"] == "<study>" else h["study_id"]
    overrides.setdefault("size", len(data))
    overrides.setdefault("sha256", hashlib.sha256(data).hexdigest())
    header = _update_header(live, **overrides)
    step = max(1, len(data) // pieces)
    body = [pb.Chunk(data=data[i : i + step]) for i in range(0, len(data), step)]
    chunks = {
        "empty": [],
        "data_first": [*body, pb.Chunk(header=header)],
        "two_headers": [pb.Chunk(header=header), *body[:1], pb.Chunk(header=header), *body[1:]],
        "header_only": [pb.Chunk(header=header)],
        "normal": [pb.Chunk(header=header), *body],
        "extra_data": [pb.Chunk(header=header), *body, pb.Chunk(data=b"\x00")],
    }[layout]
    before = live.snapshot()
    code = _code_of(_push(live, chunks))
    _assert_refused_or_ok(code)
    if code is not None:
        assert live.snapshot() == before, f"a refused push ({code}) changed the study's rows"
    live.assert_alive()


# --- protocol refusals, one by one ----------------------------------------------------------------
def test_unknown_ids_wrong_nonce_and_replays(server) -> None:
    live = _enrol(*server, ("p1", "p2"))
    stub = live.stub
    rnd, nonce = live.round_and_nonce()
    def good(silo: str = "p1", **kw) -> list[pb.Chunk]:
        kw = {"round": rnd, "nonce": nonce, **kw}
        return [pb.Chunk(header=_update_header(live, silo=silo, **kw)), pb.Chunk(data=live.update)]

    before = live.snapshot()
    assert _code_of(lambda: stub.PullTask(pb.PullTaskRequest(silo="never-joined", wait_s=0), timeout=10)) \
        == grpc.StatusCode.FAILED_PRECONDITION
    assert _code_of(lambda: list(stub.FetchBlob(pb.BlobRef(study_id="nope", kind=pb.BLOB_MODEL, silo="p1"), timeout=10))) \
        == grpc.StatusCode.NOT_FOUND
    assert _code_of(lambda: list(stub.FetchBlob(pb.BlobRef(study_id=live.study, kind=pb.BLOB_MODEL, version=99,
                                                           silo="p1"), timeout=10))) == grpc.StatusCode.NOT_FOUND
    assert _code_of(_push(live, good(study_id="nope"))) == grpc.StatusCode.NOT_FOUND
    assert _code_of(_push(live, good(round=rnd + 1))) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code_of(_push(live, good(nonce="f" * 32))) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code_of(_push(live, good(silo="ghost"))) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code_of(lambda: stub.ReportMetrics(pb.MetricsReport(silo="p1", study_id=live.study, round=rnd,
                                                                nonce="f" * 32, skipped=True), timeout=10)) \
        == grpc.StatusCode.FAILED_PRECONDITION
    assert live.snapshot() == before

    # h1's update is taken once; the same bytes again are an idempotent duplicate, other bytes refused.
    first = stub.PushBlob(iter(good()), timeout=20)
    assert first.accepted and first.reason == ""
    again = stub.PushBlob(iter(good()), timeout=20)
    assert again.accepted and again.reason == "duplicate" and again.sha256 == first.sha256
    other = encode_tensors(*decode_tensors(live.update)[:1], [np.full_like(a, 0.5) for a in decode_tensors(live.update)[1]])
    other_chunks = [pb.Chunk(header=_update_header(live, round=rnd, nonce=nonce, size=len(other),
                                                   sha256=hashlib.sha256(other).hexdigest())),
                    pb.Chunk(data=other)]
    after_first = live.snapshot()
    assert _code_of(_push(live, other_chunks)) == grpc.StatusCode.FAILED_PRECONDITION
    assert live.snapshot() == after_first

    # h2 completes the round; replaying round 1 with its old nonce is refused and stores nothing.
    assert stub.PushBlob(iter(good("p2")), timeout=20).accepted
    closed = live.snapshot()
    assert any(r[1] == rnd + 1 for r in closed["rounds"]), "the round did not close with both updates"
    stale = [pb.Chunk(header=_update_header(live, silo="p2", round=rnd, nonce=nonce)), pb.Chunk(data=live.update)]
    assert _code_of(_push(live, stale)) == grpc.StatusCode.FAILED_PRECONDITION
    assert live.snapshot() == closed
    live.assert_alive()


def test_an_unknown_blob_kind_is_invalid_argument(live: Live) -> None:
    chunks = [pb.Chunk(header=_update_header(live, kind=42)), pb.Chunk(data=live.update)]
    assert _code_of(_push(live, chunks)) == grpc.StatusCode.INVALID_ARGUMENT
    fetch = pb.BlobRef(study_id=live.study, kind=42, silo="h1")
    assert _code_of(lambda: list(live.stub.FetchBlob(fetch, timeout=10))) == grpc.StatusCode.NOT_FOUND


# --- a broken connection ----------------------------------------------------------------------------
def test_an_interrupted_upload_resumes_where_it_stopped(server) -> None:
    from silo_node.client import CoordinatorClient

    live = _enrol(*server, ("r1", "r2"))
    header = _update_header(live)
    data = live.update
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]

    incoming = live.coordinator.federation.blobs.root

    def dropped_half_way():
        yield pb.Chunk(header=header)
        for piece in pieces[: len(pieces) // 2]:
            yield pb.Chunk(data=piece)
        # The link drops only once the server is writing what was sent (under load its handler
        # may start late, and a call cancelled before it reads anything leaves nothing to resume).
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size for p in incoming.glob(".incoming-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise ConnectionError("the hospital's link dropped")

    with pytest.raises(grpc.RpcError):
        live.stub.PushBlob(dropped_half_way(), timeout=20)
    held = 0
    for _ in range(100):  # the server keeps the partial once its handler sees the broken stream
        held = live.stub.QueryUpload(header, timeout=10).size
        if held:
            break
        time.sleep(0.05)
    assert 0 < held <= 1000 * (len(pieces) // 2)
    client = CoordinatorClient(live.channel, silo="r1", max_retries=0)
    again = pb.BlobHeader()
    again.CopyFrom(header)
    reply = client.push(again, data)
    assert reply.accepted and reply.sha256 == header.sha256
    assert client.bytes_up < len(data) - held + 1000  # only the rest crossed the wire again
    assert live.stub.QueryUpload(header, timeout=10).size == 0  # nothing partial is left behind
    live.assert_alive()


# --- the streamed aggregation path ---------------------------------------------------------------
def test_streamed_aggregate_equals_the_plain_weighted_average(server) -> None:
    """Updates are summed as they arrive (never held together); the result must be the weighted mean."""
    live = _enrol(*server, ("w1", "w2"))
    names, base = decode_tensors(receive_blob(list(live.stub.FetchBlob(
        pb.BlobRef(study_id=live.study, kind=pb.BLOB_MODEL, version=0, silo="w1"), timeout=30)), max_bytes=1 << 30)[1])
    rng = np.random.default_rng(7)
    deltas = {s: [rng.normal(0, 0.1, a.shape).astype(np.float32) for a in base] for s in live.silos}
    weights = {"w1": 30.0, "w2": 90.0}
    for silo in live.silos:
        data = encode_tensors(names, deltas[silo])
        rnd, nonce = live.round_and_nonce(silo)
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=live.study, kind=pb.BLOB_UPDATE, silo=silo), round=rnd,
                               nonce=nonce, weight=weights[silo], encoding="tensors")
        assert live.stub.PushBlob(chunk_blob(header, data), timeout=30).accepted
    ref = pb.BlobRef(study_id=live.study, kind=pb.BLOB_MODEL, version=1, silo="w1")
    for _ in range(50):  # the round closes on the coordinator's next tick
        try:
            _, new = decode_tensors(receive_blob(list(live.stub.FetchBlob(ref, timeout=30)), max_bytes=1 << 30)[1])
            break
        except grpc.RpcError:
            time.sleep(0.1)
    total = sum(weights.values())
    for b, n, d1, d2 in zip(base, new, deltas["w1"], deltas["w2"]):
        expected = b + (weights["w1"] * d1.astype(np.float64) + weights["w2"] * d2) / total
        np.testing.assert_allclose(n, expected, rtol=0, atol=1e-6)

