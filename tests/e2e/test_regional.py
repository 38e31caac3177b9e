"""Hierarchical aggregation with real processes: central coordinator + a regional aggregator
(`fedcare coordinator regional`) with silos behind it, against the flat federation of the same
silos, same spec and seeds. Rounds are seeded from the study seed, so each silo computes the
same update in both topologies and the released models may differ only by float rounding (in
the clear) or by the CKKS error of the encrypted sums.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compliance import verify_log
from compliance.audit import read_log
from coordinator.api.study import ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from fedcare.demo import free_port
from privacy.he import SiloKeyPair, context_has_secret_key, unwrap_secret
from privacy.errors import HEError
from silo_node.node import WRAP_KEY_FILE

pytestmark = pytest.mark.slow

REGION = "region-east"


def _spec(rounds: int, encryption: str) -> StudySpec:
    # min_silos = 1: the same spec starts with 3 silos (flat) or with the region and one direct
    # silo (_expecting sets expected_silos to match); the studies are submitted once everyone has joined.
    return StudySpec(name="regional", modalities=("ehr", "signal"), model=ModelSpec(ehr_hidden=32),
                     training=TrainingSpec(rounds=rounds, local_epochs=1, learning_rate=0.05, min_silos=1,
                                           round_timeout_s=300, seed=7),
                     privacy=PrivacySpec(dp=False, encryption=encryption))  # type: ignore[arg-type]


def _expecting(spec: StudySpec, *, behind_region: list, direct: list) -> StudySpec:
    """The study waits for every participant of this topology (the region counts as one), so a silo
    slow to answer its proposal on a loaded machine is not left out of round 1."""
    return spec.model_copy(update={"training": spec.training.model_copy(
        update={"expected_silos": len(direct) + (1 if behind_region else 0)})})


def _new_cluster(like, root: Path):  # noqa: ANN001, ANN202 - conftest's Cluster, a second one beside the fixture's
    root.mkdir(parents=True)
    return type(like)(root=root, target=f"127.0.0.1:{free_port()}", hospitals=like.hospitals)


def _state_dir(root: Path, hospital) -> Path:  # noqa: ANN001 - HospitalFiles
    return root / "silo-state" / hospital.name


def _start(cluster, *, behind_region: list, direct: list, silo_state: Path):  # noqa: ANN001, ANN202 - ResearcherClient
    """Start the coordinator, the region (if any silo is behind one) and the silos; wait until all joined.

    Both topologies use the same silo state folders: a silo's pseudonym key (hence its
    train/test split) lives there, and the ingestion cache makes the second run faster.
    """
    client = cluster.start_coordinator()
    region = cluster.start_regional(REGION, expected_silos=len(behind_region)) if behind_region else None
    for h in behind_region:
        cluster.start_silo(h, via=region, state_dir=str(_state_dir(silo_state, h)))
    for h in direct:
        cluster.start_silo(h, state_dir=str(_state_dir(silo_state, h)))
    for h in behind_region:
        cluster.wait_for_log(REGION, f"silo {h.name} joined region {REGION}")
        cluster.wait_for_log(h.name, "joined the coordinator")
    for h in direct:
        cluster.wait_for_log(h.name, "joined the coordinator")
    if region is not None:
        cluster.wait_for_log(REGION, "joined the central coordinator")
    return client


def _study(cluster, client, spec: StudySpec, out: Path) -> tuple[dict, dict]:  # noqa: ANN001 - Cluster, ResearcherClient
    """Run one study to its end: its summary and its released model."""
    study_id = client.submit(spec)
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=900)
    return summary, torch.load(client.results(study_id, out)["model"])


def _run(cluster, spec: StudySpec, *, behind_region: list, direct: list, out: Path, silo_state: Path) -> tuple[dict, dict]:
    """One federation, one study."""
    client = _start(cluster, behind_region=behind_region, direct=direct, silo_state=silo_state)
    return _study(cluster, client, _expecting(spec, behind_region=behind_region, direct=direct), out)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_regional_equals_flat_in_the_clear_and_under_ckks_with_a_direct_key_holder(cluster, tmp_path, hospitals) -> None:
    """Two studies over the same two federations (flat, and a region beside a direct silo), in the
    order they were submitted to each: FedAvg in the clear, then CKKS.

    Under CKKS the key holder is the direct silo (northgate sorts before region-east): it wraps the
    secret for each of the region's members ("region-east/<member>"), never for the region, and the
    region hands each member its own wrapped key. One federation of each kind for both studies: a
    federation's processes take most of a test's time to start."""
    clear, ckks = _spec(2, "none"), _spec(1, "ckks-exact")
    direct = [h for h in hospitals if h.name < REGION]
    members = [h for h in hospitals if h.name > REGION]
    assert len(direct) == 1 and len(members) == 2, [h.name for h in hospitals]
    flat = _new_cluster(cluster, tmp_path / "flat")
    try:
        client = _start(flat, behind_region=[], direct=hospitals, silo_state=tmp_path)
        flat_summary, flat_model = _study(flat, client, _expecting(clear, behind_region=[], direct=hospitals),
                                          tmp_path / "flat-out")
        _, flat_ckks_model = _study(flat, client, _expecting(ckks, behind_region=[], direct=hospitals),
                                    tmp_path / "flat-ckks-out")
    finally:
        flat.stop()
    tree = _new_cluster(cluster, tmp_path / "tree")
    try:
        client = _start(tree, behind_region=members, direct=direct, silo_state=tmp_path)
        summary, model = _study(tree, client, _expecting(clear, behind_region=members, direct=direct), tmp_path / "tree-out")
        ckks_summary, ckks_model = _study(tree, client, _expecting(ckks, behind_region=members, direct=direct),
                                          tmp_path / "tree-ckks-out")
        region_log = tree.log(REGION)
    finally:
        tree.stop()

    # In the clear. Upstream the region is ONE participant next to the direct silo, in every round.
    assert summary["silos"] == sorted([REGION, direct[0].name])
    for r in summary["rounds"][1:]:
        assert sorted(r["aggregation"]["accepted"]) == sorted([REGION, direct[0].name])
    assert "forwarded one update of weight" in region_log
    # The region's audit log is intact and records each member's update in and one update out per round.
    region_audit = tmp_path / "tree" / REGION / "audit.sqlite"
    assert verify_log(region_audit).ok
    entries = [e.fields for e in read_log(region_audit).entries if e.fields.get("study") == summary["study"]]
    received = [(f["silo"], f["round"]) for f in entries if f.get("kind") == "update" and "silo" in f]
    sent = [f["round"] for f in entries if f.get("kind") == "update" and "silo" not in f]
    assert sorted(received) == sorted((h.name, r) for h in members for r in (1, 2))
    assert sent == [1, 2]
    # The model learned something, and the two-level FedAvg equals the flat one.
    assert summary["rounds"][-1]["metrics"]["auroc"] != summary["rounds"][0]["metrics"]["auroc"]
    worst = _max_difference(model, flat_model)
    assert worst <= 1e-5, f"regional and flat FedAvg differ by {worst}"
    # Both evaluated the same models: round metrics agree (the region reports its silos' sample-weighted mean).
    for ours, theirs in zip(summary["rounds"], flat_summary["rounds"]):
        assert ours["metrics"]["auroc"] == pytest.approx(theirs["metrics"]["auroc"], abs=1e-4)

    # Under CKKS, with the direct silo as the key holder.
    assert ckks_summary["silos"] == sorted([REGION, direct[0].name])
    for r in ckks_summary["rounds"][1:]:
        assert sorted(r["aggregation"]["accepted"]) == sorted([REGION, direct[0].name])
    assert "forwarded the key bundle" not in region_log  # the region was not the key holder
    assert f"and the wrapped keys of {', '.join(sorted(h.name for h in members))}" in region_log  # fetched upstream
    worst = _max_difference(ckks_model, flat_ckks_model)
    assert 0 < worst <= 1e-5, f"regional and flat CKKS aggregates differ by {worst}"

    # The central coordinator's audit says whom the secret was wrapped for: the region's members, not the region.
    central = [e.fields for e in read_log(tmp_path / "tree" / "coordinator" / "audit.sqlite").entries]
    [bundle_event] = [f for f in central if f.get("kind") == "key_bundle"]
    assert bundle_event["silo"] == direct[0].name
    assert bundle_event["wrapped_for"] == sorted([direct[0].name] + [f"{REGION}/{h.name}" for h in members])
    _assert_region_holds_no_secret(tmp_path, members, ckks_summary["study"])


def test_regional_ckks_sums_ciphertexts_equal_flat_and_never_hold_the_secret_key(cluster, tmp_path, hospitals) -> None:
    spec = _spec(1, "ckks-exact")
    members = hospitals[:2]
    flat = _new_cluster(cluster, tmp_path / "flat")
    try:
        _, flat_model = _run(flat, spec, behind_region=[], direct=members, out=tmp_path / "flat-out", silo_state=tmp_path)
    finally:
        flat.stop()
    tree = _new_cluster(cluster, tmp_path / "tree")
    try:
        summary, model = _run(tree, spec, behind_region=members, direct=[], out=tmp_path / "tree-out", silo_state=tmp_path)
    finally:
        tree.stop()
    assert summary["silos"] == [REGION]
    worst = _max_difference(model, flat_model)
    assert 0 < worst <= 1e-5, f"regional and flat CKKS aggregates differ by {worst}"
    central = [e.fields for e in read_log(tmp_path / "tree" / "coordinator" / "audit.sqlite").entries]
    [bundle_event] = [f for f in central if f.get("kind") == "key_bundle"]
    assert bundle_event["wrapped_for"] == sorted(f"{REGION}/{h.name}" for h in members)
    _assert_region_holds_no_secret(tmp_path, members, summary["study"])


def _assert_region_holds_no_secret(tmp_path: Path, members: list, study: str) -> None:
    """What the region holds of the keys (kept on disk for inspection): the public context and its
    members' secrets wrapped for their keys; nothing it stored loads as a secret context."""
    bundles = list((tmp_path / "tree" / REGION / "keys").glob("*.bundle.json"))
    assert len(bundles) == 1
    bundle = json.loads(bundles[0].read_bytes())
    public = base64.b64decode(bundle["public_context"])
    assert not context_has_secret_key(public), "the region was given a context with the secret key"
    assert sorted(bundle["wrapped"]) == sorted(h.name for h in members)
    for h in members:
        wrapped = base64.b64decode(bundle["wrapped"][h.name])
        # Opaque to the region: not a context it could load ...
        with pytest.raises(HEError):
            context_has_secret_key(wrapped)
        # ... but the real secret for the silo holding the matching private key.
        silo_keys = SiloKeyPair.from_private_bytes((_state_dir(tmp_path, h) / WRAP_KEY_FILE).read_bytes())
        assert context_has_secret_key(unwrap_secret(wrapped, silo_keys, context=study.encode()))
    # The region keeps no key pair of its own on disk, and nothing it stored loads as a secret context.
    region_files = [p for p in (tmp_path / "tree" / REGION).rglob("*") if p.is_file()]
    assert not any("wrap-key" in p.name for p in region_files)
    for p in region_files:
        try:
            assert not context_has_secret_key(p.read_bytes()), f"{p} holds a secret CKKS context"
        except HEError:
            pass  # not a TenSEAL context at all


def test_regional_over_mutual_tls_both_ways(cluster, tmp_path) -> None:
    """The region presents a silo certificate upstream and a server certificate to its silos, and
    refuses callers that are not silos of the study CA (audited in the region's log)."""
    import grpc

    from coordinator.api import federation_pb2 as pb
    from coordinator.api import federation_pb2_grpc as pb_grpc
    from fedcare.researcher import ResearcherClient

    pki = tmp_path / "pki"

    def fedcare(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "fedcare", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    def creds(role: str, name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes(),
                                            private_key=(pki / role / f"{name}.key").read_bytes(),
                                            certificate_chain=(pki / role / f"{name}.pem").read_bytes())

    silo = cluster.hospitals[0]
    fedcare("pki", "init", "--dir", str(pki))
    fedcare("pki", "issue", "--dir", str(pki), "--coordinator", "central", "--host", "127.0.0.1")
    fedcare("pki", "issue", "--dir", str(pki), "--coordinator", REGION, "--host", "127.0.0.1")
    for name in (REGION, silo.name):
        fedcare("pki", "issue", "--dir", str(pki), "--silo", name)
    fedcare("pki", "issue", "--dir", str(pki), "--researcher", "alice")
    cluster._spawn("coordinator", ["coordinator", "serve", "--state-dir", str(tmp_path / "central"), "--listen",
                                   cluster.target, "--ca-cert", str(pki / "ca.pem"),
                                   "--cert", str(pki / "coordinator" / "central.pem"),
                                   "--key", str(pki / "coordinator" / "central.key")])
    listen = f"127.0.0.1:{free_port()}"
    cluster._spawn(REGION, ["coordinator", "regional", "--name", REGION, "--upstream", cluster.target, "--listen", listen,
                            "--state-dir", str(tmp_path / REGION), "--expected-silos", "1", "--ca-cert", str(pki / "ca.pem"),
                            "--cert", str(pki / "coordinator" / f"{REGION}.pem"),
                            "--key", str(pki / "coordinator" / f"{REGION}.key"),
                            "--upstream-cert", str(pki / "silo" / f"{REGION}.pem"),
                            "--upstream-key", str(pki / "silo" / f"{REGION}.key")])
    cluster.start_silo(silo, via=listen, insecure=False, tls={
        "ca_cert": str(pki / "ca.pem"), "cert": str(pki / "silo" / f"{silo.name}.pem"),
        "key": str(pki / "silo" / f"{silo.name}.key")})
    researcher_channel = grpc.secure_channel(cluster.target, creds("researcher", "alice"))
    grpc.channel_ready_future(researcher_channel).result(timeout=60)
    researcher = ResearcherClient(researcher_channel, target=cluster.target)
    cluster.wait_for_log(REGION, f"silo {silo.name} joined region {REGION}")
    cluster.wait_for_log(REGION, "joined the central coordinator")

    study = researcher.submit(_spec(1, "none"))
    summary = cluster.wait_for(researcher, study, lambda st, s: st.state == "done", timeout=600)
    assert summary["silos"] == [REGION]

    # A researcher certificate is no silo: the region refuses it and audits the refusal.
    to_region = pb_grpc.FederationStub(grpc.secure_channel(listen, creds("researcher", "alice")))
    with pytest.raises(grpc.RpcError) as info:
        to_region.PullTask(pb.PullTaskRequest(silo="alice", wait_s=0), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    failures = [e.fields for e in read_log(tmp_path / REGION / "audit.sqlite").entries if e.event == "auth_failure"]
    assert any("may not act as a silo" in f["reason"] for f in failures)
