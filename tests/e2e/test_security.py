"""Mutual TLS with real processes: certificates from `fedcare pki`, roles, revocation, audit.

The coordinator runs as `fedcare coordinator serve --ca-cert --cert --key --crl`; silos run
as `fedcare silo run` with a [tls] table; the researcher side is a secure channel built
here with the researcher's certificate (the `fedcare study` commands have no TLS options yet).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from compliance import read_log
from coordinator.api import federation_pb2 as pb
from coordinator.api import federation_pb2_grpc as pb_grpc
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from fedcare.researcher import ResearcherClient
from silo_node.client import CoordinatorClient, CoordinatorUnreachable, open_channel

pytestmark = pytest.mark.slow


def fedcare(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "fedcare", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def credentials(pki: Path, role: str, name: str, *, trust: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=(trust or pki / "ca.pem").read_bytes(),
                                        private_key=(pki / role / f"{name}.key").read_bytes(),
                                        certificate_chain=(pki / role / f"{name}.pem").read_bytes())


def tls_table(pki: Path, role: str, name: str) -> dict[str, str]:
    return {"ca_cert": str(pki / "ca.pem"), "cert": str(pki / role / f"{name}.pem"), "key": str(pki / role / f"{name}.key")}


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def auth_failures(state: Path) -> list[dict]:
    return [e.fields for e in read_log(state / "audit.sqlite").entries if e.event == "auth_failure"]


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_mutual_tls_roles_and_revocation(cluster, tmp_path: Path) -> None:
    pki, rogue = tmp_path / "pki", tmp_path / "rogue-pki"
    good, revoked, foreign = (h.name for h in cluster.hospitals)
    fedcare("pki", "init", "--dir", str(pki))
    fedcare("pki", "init", "--dir", str(rogue))
    fedcare("pki", "issue", "--dir", str(pki), "--coordinator", "coordinator", "--host", "127.0.0.1", "--host", "localhost")
    for silo in (good, revoked):
        fedcare("pki", "issue", "--dir", str(pki), "--silo", silo)
    fedcare("pki", "issue", "--dir", str(rogue), "--silo", foreign)  # same name, another CA
    fedcare("pki", "issue", "--dir", str(pki), "--researcher", "alice")
    fedcare("pki", "issue", "--dir", str(pki), "--auditor", "audrey")

    state = cluster.root / "coordinator"
    cluster._spawn("coordinator", ["coordinator", "serve", "--state-dir", str(state), "--listen", cluster.target,
                                   "--ca-cert", str(pki / "ca.pem"), "--cert", str(pki / "coordinator" / "coordinator.pem"),
                                   "--key", str(pki / "coordinator" / "coordinator.key"), "--crl", str(pki / "crl.pem")])
    researcher_channel = grpc.secure_channel(cluster.target, credentials(pki, "researcher", "alice"))
    grpc.channel_ready_future(researcher_channel).result(timeout=60)
    researcher = ResearcherClient(researcher_channel, target=cluster.target)
    as_researcher = pb_grpc.FederationStub(researcher_channel)

    # A silo with a valid certificate joins, enrols and trains (a real `fedcare silo run`).
    hospitals = {h.name: h for h in cluster.hospitals}
    cluster.start_silo(hospitals[good], insecure=False, tls=tls_table(pki, "silo", good))
    # A silo whose certificate comes from another CA (started now, so that its start overlaps the good one's).
    cluster.start_silo(hospitals[foreign], insecure=False, max_retries=1, max_retry_s=5, tls={
        "ca_cert": str(pki / "ca.pem"), "cert": str(rogue / "silo" / f"{foreign}.pem"),
        "key": str(rogue / "silo" / f"{foreign}.key")})
    spec = StudySpec(name="mtls", training=TrainingSpec(rounds=1, local_epochs=1, min_silos=1, expected_silos=1,
                                                        round_timeout_s=120),
                     privacy=PrivacySpec(dp=False, encryption="none"))
    study = researcher.submit(spec)
    cluster.wait_for(researcher, study, lambda st, s: good in st.silos and st.current_round >= 1, timeout=240)

    # The silo from another CA: the TLS handshake fails, no call reaches the service.
    assert wait_exit(cluster.procs[foreign], 180) == 2
    assert "unreachable" in cluster.log(foreign) and "UNAVAILABLE" in cluster.log(foreign)
    rogue_client = CoordinatorClient(open_channel(cluster.target, credentials=credentials(
        rogue, "silo", foreign, trust=pki / "ca.pem")), silo=foreign, max_retries=0, max_retry_s=5)
    with pytest.raises(CoordinatorUnreachable):
        rogue_client.join(["ehr"], b"")
    no_cert = grpc.secure_channel(cluster.target, grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes()))
    code, _ = refusal(lambda: pb_grpc.FederationStub(no_cert).Join(pb.JoinRequest(silo=foreign), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE

    # Roles: a researcher cannot act as a silo, a silo cannot submit studies or act as another silo.
    for call in (lambda: as_researcher.Join(pb.JoinRequest(silo="alice", modalities=["ehr"]), timeout=10),
                 lambda: as_researcher.PullTask(pb.PullTaskRequest(silo="alice", wait_s=0), timeout=10)):
        code, details = refusal(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "researcher 'alice' may not act as a silo" in details
    silo_channel = grpc.secure_channel(cluster.target, credentials(pki, "silo", revoked))
    as_silo = pb_grpc.FederationStub(silo_channel)
    code, details = refusal(lambda: as_silo.SubmitStudy(pb.SubmitStudyRequest(spec_json=spec.to_json()), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs the role researcher" in details
    code, details = refusal(lambda: as_silo.Join(pb.JoinRequest(silo=good), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and f"may not act as silo {good!r}" in details
    auditor = pb_grpc.FederationStub(grpc.secure_channel(cluster.target, credentials(pki, "auditor", "audrey")))
    assert auditor.GetStudyStatus(pb.StudyRef(study_id=study), timeout=10).study_id == study
    assert study in [s.study_id for s in auditor.ListStudies(pb.ListStudiesRequest(), timeout=10).studies]
    assert refusal(lambda: as_silo.ListStudies(pb.ListStudiesRequest(), timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert refusal(lambda: auditor.SubmitStudy(pb.SubmitStudyRequest(spec_json=spec.to_json()), timeout=10))[0] \
        == grpc.StatusCode.PERMISSION_DENIED

    # Revocation: the silo's certificate works, then `fedcare pki revoke`; the coordinator re-reads the CRL.
    as_silo.Join(pb.JoinRequest(silo=revoked, modalities=["ehr"]), timeout=10)
    fedcare("pki", "revoke", str(pki / "silo" / f"{revoked}.pem"), "--dir", str(pki))
    code, details = refusal(lambda: as_silo.Join(pb.JoinRequest(silo=revoked, modalities=["ehr"]), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "is revoked" in details
    cluster.start_silo(hospitals[revoked], insecure=False, tls=tls_table(pki, "silo", revoked))
    assert wait_exit(cluster.procs[revoked], 180) == 2
    assert "PERMISSION_DENIED" in cluster.log(revoked) and "revoked" in cluster.log(revoked)

    # Every refusal that reached the service is in the coordinator's signed audit log.
    time.sleep(0.5)
    failures = auth_failures(state)
    reasons = [f["reason"] for f in failures]
    assert sum("is revoked" in r for r in reasons) >= 2, reasons
    assert sum("may not act as a silo" in r for r in reasons) >= 2, reasons
    assert any("needs the role researcher" in r for r in reasons), reasons
    assert {f["method"] for f in failures} >= {"Join", "PullTask", "SubmitStudy"}
    # ... and the valid silo was never refused.
    assert not any(good in r and "revoked" not in r and "act as silo" not in r for r in reasons), reasons


def test_revocation_fails_closed(cluster, tmp_path: Path) -> None:
    """#16 item 5: a missing --crl stops the start in one line; a CRL broken or put back while the
    coordinator runs refuses every call with the reason (PERMISSION_DENIED, audited), never INTERNAL."""
    pki = tmp_path / "pki"
    fedcare("pki", "init", "--dir", str(pki))
    fedcare("pki", "issue", "--dir", str(pki), "--coordinator", "coordinator", "--host", "127.0.0.1")
    fedcare("pki", "issue", "--dir", str(pki), "--silo", "silo-a")
    fedcare("pki", "issue", "--dir", str(pki), "--silo", "silo-gone")
    state = cluster.root / "coordinator"
    serve = ["coordinator", "serve", "--state-dir", str(state), "--listen", cluster.target,
             "--ca-cert", str(pki / "ca.pem"), "--cert", str(pki / "coordinator" / "coordinator.pem"),
             "--key", str(pki / "coordinator" / "coordinator.key")]

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN X509 CRL-----\nnot a CRL\n-----END X509 CRL-----\n")
    for crl, why in ((pki / "crl.pme", "crl.pme"), (garbage, "is not a readable PEM CRL")):
        start = subprocess.run([sys.executable, "-m", "fedcare", *serve, "--crl", str(crl)],
                               capture_output=True, text=True, timeout=120)
        assert start.returncode == 2 and "Traceback" not in start.stderr, start.stderr
        errors = [line for line in start.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and why in errors[0], start.stderr
    assert any("cannot check revocation" in f["reason"] for f in auth_failures(state))  # the garbage one

    old_crl = tmp_path / "old-crl.pem"
    old_crl.write_bytes((pki / "crl.pem").read_bytes())  # CRL number 1: silo-gone not revoked
    fedcare("pki", "revoke", str(pki / "silo" / "silo-gone.pem"), "--dir", str(pki))  # number 2
    cluster._spawn("coordinator", [*serve, "--crl", str(pki / "crl.pem")])
    channel = grpc.secure_channel(cluster.target, credentials(pki, "silo", "silo-a"))
    grpc.channel_ready_future(channel).result(timeout=60)
    as_silo = pb_grpc.FederationStub(channel)
    as_silo.Join(pb.JoinRequest(silo="silo-a", modalities=["ehr"]), timeout=10)

    for bad, why in ((b"garbage", "is not a readable PEM CRL"), (old_crl.read_bytes(), "older than number 2")):
        (pki / "crl.pem").write_bytes(bad)
        for _ in range(2):
            code, details = refusal(lambda: as_silo.Join(pb.JoinRequest(silo="silo-a", modalities=["ehr"]), timeout=10))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "revocation cannot be checked" in details, details
            assert why in details
    fedcare("pki", "revoke", str(pki / "silo" / "silo-gone.pem"), "--dir", str(pki))  # number 3, valid again
    as_silo.Join(pb.JoinRequest(silo="silo-a", modalities=["ehr"]), timeout=10)
    time.sleep(0.5)
    reasons = [f["reason"] for f in auth_failures(state)]
    assert sum("is not a readable PEM CRL" in r for r in reasons) >= 2
    assert sum("older than number 2" in r for r in reasons) >= 2
