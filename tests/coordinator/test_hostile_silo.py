"""An authenticated but hostile silo against a real coordinator (#16 items 4 and 6).

Text that looks like PHI, or is too long, and oversized metric maps are refused before any
state changes, with the limits the coordinator's configuration sets; every refused message (bad hash, replay, NaN, PHI) is in the coordinator's
audit log; partial uploads are kept only for a round's participants and expire.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from compliance import read_log
from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.auth import Authenticator
from coordinator.blobs import BlobStore
from coordinator.inbound import InboundLimits
from coordinator.regional_node.region import Region
from coordinator.regional_node.service import RegionalService
from coordinator.server import Coordinator, CoordinatorConfig

from .test_fuzz import Live, _code_of, _enrol, _push, _update_header

SSN = "123-45-6789"


DEFAULTS = InboundLimits()


@contextlib.contextmanager
def _serving(state: Path, limits: InboundLimits = DEFAULTS) -> Iterator[tuple[Coordinator, grpc.Channel]]:
    coordinator = Coordinator(CoordinatorConfig(insecure=True, listen="127.0.0.1:0", state_dir=state, workers=8,
                                                inbound=limits)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{coordinator.port}")
    try:
        yield coordinator, channel
    finally:
        channel.close()
        coordinator.stop(0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Coordinator, grpc.Channel]]:
    """A fresh coordinator per test: a silo joining later would be offered the other tests' studies."""
    with _serving(tmp_path / "coordinator") as served:
        yield served


def _refusals(live: Live) -> list[dict]:
    return [e.fields for e in read_log(live.coordinator.audit_log.path).entries if e.event == "update_refused"]


def test_phi_in_a_name_or_reason_is_refused_before_any_state_changes(server) -> None:
    live = _enrol(*server, ("a1", "a2"))
    stub = live.stub
    assert _code_of(lambda: stub.Join(pb.JoinRequest(silo=f"ssn {SSN}", modalities=["ehr"]), timeout=10)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    with live.coordinator.store.engine.connect() as conn:
        assert not conn.exec_driver_sql("SELECT name FROM silos WHERE name LIKE '%123-45%'").fetchall()
    # An answer to the study's proposal whose reason holds an SSN.
    before = live.snapshot()
    answer = pb.ProposalAnswer(silo="a1", study_id=live.study, accept=False, reason=f"patient {SSN} opted out")
    assert _code_of(lambda: stub.AnswerProposal(answer, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert live.snapshot() == before
    rnd, nonce = live.round_and_nonce("a1")
    skip = pb.MetricsReport(silo="a1", study_id=live.study, round=rnd, nonce=nonce, skipped=True,
                            skip_reason=f"no data for {SSN}")
    live_before = live.snapshot()
    assert _code_of(lambda: stub.ReportMetrics(skip, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert live.snapshot() == live_before
    log_text = read_log(live.coordinator.audit_log.path).entries
    assert not any(SSN in e.raw_fields for e in log_text), "the identifier reached the audit log"
    reasons = [f["reason"] for f in _refusals(live)]
    assert sum("protected health information" in r for r in reasons) >= 2, reasons


def test_long_reasons_and_metric_maps_are_refused_and_audited(server) -> None:
    live = _enrol(*server, ("c1", "c2"))
    stub = live.stub
    rnd, nonce = live.round_and_nonce("c1")
    before, log_size = live.snapshot(), os.path.getsize(live.coordinator.audit_log.path)
    long_skip = pb.MetricsReport(silo="c1", study_id=live.study, round=rnd, nonce=nonce, skipped=True,
                                 skip_reason="x" * (7 << 20))
    assert _code_of(lambda: stub.ReportMetrics(long_skip, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    many = pb.MetricsReport(silo="c1", study_id=live.study, round=rnd, nonce=nonce, model_version=rnd - 1,
                            metrics={f"m{i}": 0.5 for i in range(DEFAULTS.metrics + 1)})
    assert _code_of(lambda: stub.ReportMetrics(many, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    nan = pb.MetricsReport(silo="c1", study_id=live.study, round=rnd, nonce=nonce, model_version=rnd - 1,
                           metrics={"auroc": float("nan")})
    assert _code_of(lambda: stub.ReportMetrics(nan, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert live.snapshot() == before
    assert os.path.getsize(live.coordinator.audit_log.path) - log_size < 1 << 20  # no 7 MiB reason stored
    reasons = [f["reason"] for f in _refusals(live)]
    assert any(f"the limit is {DEFAULTS.reason_chars:,}" in r for r in reasons)
    assert any(f"the limit is {DEFAULTS.metrics:,}" in r for r in reasons)
    assert any("not a finite number" in r for r in reasons)


def test_lowered_limits_refuse_what_the_defaults_accept(tmp_path: Path) -> None:
    lowered = InboundLimits(name_chars=8, reason_chars=20, metrics=2)
    reason, metrics = "x" * 40, {"auroc": 0.5, "accuracy": 0.5, "loss": 0.7}
    assert len(reason) <= DEFAULTS.reason_chars and len(metrics) <= DEFAULTS.metrics
    with _serving(tmp_path / "lowered", lowered) as served:
        live = _enrol(*served, ("g1", "g2"))
        rnd, nonce = live.round_and_nonce("g1")
        before = live.snapshot()
        report = pb.MetricsReport(silo="g1", study_id=live.study, round=rnd, nonce=nonce, model_version=rnd - 1,
                                  metrics=metrics)
        skip = pb.MetricsReport(silo="g1", study_id=live.study, round=rnd, nonce=nonce, skipped=True,
                                skip_reason=reason)
        for message in (report, skip):
            assert _code_of(lambda: live.stub.ReportMetrics(message, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        assert _code_of(lambda: live.stub.Join(pb.JoinRequest(silo="a-long-name", modalities=["ehr"]), timeout=10)) \
            == grpc.StatusCode.INVALID_ARGUMENT
        assert live.snapshot() == before
        reasons = [f["reason"] for f in _refusals(live)]
        assert any("metrics: 3 values, the limit is 2" in r for r in reasons), reasons
        assert any("skip_reason: 40 characters, the limit is 20" in r for r in reasons), reasons
    with _serving(tmp_path / "defaults") as served:
        live = _enrol(*served, ("g1", "g2"))
        rnd, nonce = live.round_and_nonce("g1")
        live.stub.ReportMetrics(pb.MetricsReport(silo="g1", study_id=live.study, round=rnd, nonce=nonce,
                                                 model_version=rnd - 1, metrics=metrics), timeout=10)
        live.stub.Join(pb.JoinRequest(silo="a-long-name", modalities=["ehr"]), timeout=10)


def test_a_limit_cannot_be_configured_away() -> None:
    for limits in ({"metrics": 0}, {"reason_chars": 10**9}, {"metric_name_chars": -1}, {"max_reasons": 3}):
        with pytest.raises(ValidationError):
            CoordinatorConfig(state_dir=Path("unused"), inbound=limits)


def test_every_refused_update_is_audited(server) -> None:
    live = _enrol(*server, ("d1", "d2"))
    rnd, nonce = live.round_and_nonce("d1")
    bad_hash = [pb.Chunk(header=_update_header(live, silo="d1", sha256="0" * 64)), pb.Chunk(data=live.update)]
    replay = [pb.Chunk(header=_update_header(live, silo="d1", nonce="f" * 32)), pb.Chunk(data=live.update)]
    count = len(_refusals(live))
    assert _code_of(_push(live, bad_hash)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code_of(_push(live, replay)) == grpc.StatusCode.FAILED_PRECONDITION
    refused = _refusals(live)[count:]
    assert [f["method"] for f in refused] == ["PushBlob", "PushBlob"]
    assert "blob stream" in refused[0]["reason"] and "replayed or late" in refused[1]["reason"]


def test_a_non_participant_cannot_leave_partial_uploads(server) -> None:
    live = _enrol(*server, ("e1", "e2"))
    header = _update_header(live, silo="intruder")
    partials = live.coordinator.federation.blobs.root / ".partial"
    held = {p.name for p in partials.iterdir()} if partials.is_dir() else set()

    def dropped() -> Iterator[pb.Chunk]:
        yield pb.Chunk(header=header)
        yield pb.Chunk(data=live.update[:1000])
        time.sleep(0.5)  # before this fix the server was writing a partial by now
        raise ConnectionError("link dropped")

    with pytest.raises(grpc.RpcError):
        live.stub.PushBlob(dropped(), timeout=20)
    deadline = time.monotonic() + 10
    while not any("not a participant" in f["reason"] for f in _refusals(live)):
        assert time.monotonic() < deadline, _refusals(live)
        time.sleep(0.05)
    now = {p.name for p in partials.iterdir()} if partials.is_dir() else set()
    assert now == held


def test_partial_uploads_expire(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    partial = store.partial_path("silo-a", "ab" * 32)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"x" * 100)
    stale_incoming = store.root / ".incoming-abandoned"
    stale_incoming.write_bytes(b"y")
    fresh = store.partial_path("silo-b", "cd" * 32)
    fresh.write_bytes(b"z")
    old = time.time() - 7200
    for path in (partial, stale_incoming):
        os.utime(path, (old, old))
    assert store.expire_partials(3600) == 2
    assert not partial.exists() and not stale_incoming.exists() and fresh.exists()
    assert hashlib.sha256(fresh.read_bytes()).hexdigest()  # untouched


def test_a_regional_aggregator_applies_its_own_limits() -> None:
    """The region checks what its silos send before keeping or relaying it, with its configured limits."""
    events: list[tuple[str, dict]] = []
    region = Region("region-east", fetch_model=lambda study, version: (pb.BlobHeader(), b""),
                    audit=lambda event, **fields: events.append((event, fields)))
    service = RegionalService(region, Authenticator(insecure=True), audit=region.audit,
                              limits=InboundLimits(name_chars=8, reason_chars=20))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_FederationServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FederationStub(channel)
            stub.Join(pb.JoinRequest(silo="h1", modalities=["ehr"]), timeout=10)
            assert _code_of(lambda: stub.Join(pb.JoinRequest(silo="a-long-name", modalities=["ehr"]), timeout=10)) \
                == grpc.StatusCode.INVALID_ARGUMENT
            answer = pb.ProposalAnswer(silo="h1", study_id="s", accept=False, reason="x" * 40)
            assert _code_of(lambda: stub.AnswerProposal(answer, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(0)
    refused = [f["reason"] for e, f in events if e == "update_refused"]
    assert any("reason: 40 characters, the limit is 20" in r for r in refused), events
    assert "a-long-name" not in region.silos
