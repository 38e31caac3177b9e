"""The regional aggregator's state, without processes: key bundles it may hold, rules it forwards.

The multi-process behaviour (equality with the flat federation, in the clear and under CKKS)
is tests/e2e/test_regional.py.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from compliance.audit import Event
from coordinator.api import federation_pb2 as pb
from coordinator.api.chunks import sha256_hex
from coordinator.api.study import AggregationSpec, PrivacySpec, StudySpec
from coordinator.api.tensors import decode_tensors, encode_tensors
from coordinator.errors import InvalidInput, NotFound, Refused
from coordinator.regional_node.region import Region, refusal_reason
from coordinator.regional_node.work import RoundWork
from privacy.errors import KeyWrapError
from privacy.he import SiloKeyPair, StudyKeys, context_has_secret_key, unwrap_secret, wrap_secret

STUDY = "study-1"


def _no_fetch(study_id: str, version: int) -> tuple[pb.BlobHeader, bytes]:
    raise AssertionError("no model fetch expected in this test")


def _enrolled_region(spec: StudySpec, silos: dict[str, SiloKeyPair]) -> tuple[Region, list[str]]:
    events: list[str] = []
    region = Region("region-east", fetch_model=_no_fetch, audit=lambda e, **f: events.append(Event(e)),  # known events only
                    expected_silos=len(silos))
    for name, keys in silos.items():
        region.join(name, ["ehr"], keys.public_bytes())
    region.open_proposal(STUDY, spec.to_json())
    for name in silos:
        assert region.next_task(name, 0, frozenset()).kind == pb.TASK_PROPOSAL
        region.answer_proposal(name, pb.ProposalAnswer(silo=name, study_id=STUDY, accept=True,
                                                       spec_sha256=spec.sha256(), train_samples=50))
    [answer] = region.ready_answers()
    assert answer.accept and answer.train_samples == 50 * len(silos)
    region.mark_answered(STUDY)
    return region, events


def test_region_keeps_only_wrapped_keys_and_refuses_a_secret_public_context() -> None:
    spec = StudySpec(name="keys", privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
    silos = {"a": SiloKeyPair.generate(), "b": SiloKeyPair.generate()}
    direct = SiloKeyPair.generate()
    region, _ = _enrolled_region(spec, silos)
    # The central coordinator lists the region's members as "<region>/<member>" (from its answer).
    upstream = pb.Task(kind=pb.TASK_KEYGEN, study_id=STUDY, spec_json=spec.to_json(),
                       participant_keys={"region-east/a": silos["a"].public_bytes(),
                                         "region-east/b": silos["b"].public_bytes(), "direct": direct.public_bytes()})
    work = region.start_keygen(upstream, time.time() + 60)
    relayed = region.next_task("a", 0, frozenset())
    assert relayed.kind == pb.TASK_KEYGEN and dict(relayed.participant_keys) == dict(upstream.participant_keys)
    assert region.next_task("b", 0, frozenset()).kind == pb.TASK_WAIT  # one key holder per region

    keys = StudyKeys.generate("exact")
    secret = keys.secret_context()
    wrapped = {s: base64.b64encode(wrap_secret(secret, k, context=STUDY.encode())).decode()
               for s, k in relayed.participant_keys.items()}

    def bundle(public: bytes, extra: dict[str, str] | None = None) -> bytes:
        return json.dumps({"public_context": base64.b64encode(public).decode(),
                           "wrapped": {**wrapped, **(extra or {})}}).encode()

    # Checked as the central coordinator checks it (coordinator.keystore.open_bundle), before anything is kept.
    with pytest.raises(InvalidInput, match="wraps a key for 'region-east/stranger'"):
        region.accept_key_bundle("a", STUDY, bundle(keys.public_context(), {"region-east/stranger": wrapped["direct"]}),
                                 "sha")
    with pytest.raises(InvalidInput, match="carries a secret key"):
        region.accept_key_bundle("a", STUDY, bundle(secret), "sha")
    assert region.studies[STUDY].keys is None and work.bundle is None
    with pytest.raises(Refused):
        region.accept_key_bundle("b", STUDY, bundle(keys.public_context()), "sha")  # not the key holder

    region.accept_key_bundle("a", STUDY, bundle(keys.public_context()), "sha")
    held = region.studies[STUDY].keys
    assert held is not None and not context_has_secret_key(held.public_context)
    assert set(held.wrapped) == {"a", "b"}
    up = json.loads(work.bundle)  # forwarded whole: the central coordinator checks every recipient
    assert set(up["wrapped"]) == {"direct", "region-east/a", "region-east/b"}
    for name, pair in silos.items():
        assert unwrap_secret(region.wrapped_key(name, STUDY), pair, context=STUDY.encode()) == secret
        with pytest.raises(KeyWrapError):  # each member's key opens only with that member's private key
            unwrap_secret(region.wrapped_key(name, STUDY), silos["b" if name == "a" else "a"], context=STUDY.encode())


def test_region_answers_a_ckks_study_with_its_members_wrap_keys() -> None:
    silos = {"a": SiloKeyPair.generate(), "b": SiloKeyPair.generate()}
    fresh = Region("region-east", fetch_model=_no_fetch, audit=lambda e, **f: Event(e), expected_silos=2)
    spec = StudySpec(name="k", privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
    for name, keys in silos.items():
        fresh.join(name, ["ehr"], keys.public_bytes())
    fresh.open_proposal(STUDY, spec.to_json())
    fresh.answer_proposal("a", pb.ProposalAnswer(silo="a", study_id=STUDY, accept=True, spec_sha256=spec.sha256()))
    fresh.answer_proposal("b", pb.ProposalAnswer(silo="b", study_id=STUDY, accept=False, reason="no"))
    [answer] = fresh.ready_answers()
    assert answer.accept and dict(answer.member_wrap_keys) == {"a": silos["a"].public_bytes()}  # accepting members only
    with pytest.raises(InvalidInput, match="may not contain '/'"):
        fresh.join("x/y", ["ehr"], SiloKeyPair.generate().public_bytes())


def test_region_records_a_members_answer_as_the_coordinator_does() -> None:
    """The receipt of a member's answer is audited as the member's message_sent describes it (so the
    two logs reconcile, compliance.reconcile), and a retried answer is neither recorded nor
    audited again (coordinator.enrollment's rules)."""
    entries: list[tuple[Event, dict]] = []
    spec = StudySpec(name="answers", privacy=PrivacySpec(dp=False, encryption="none"))
    region = Region("region-east", fetch_model=_no_fetch, audit=lambda e, **f: entries.append((Event(e), f)),
                    expected_silos=2)
    region.join("a", ["ehr"], b"")
    region.open_proposal(STUDY, spec.to_json())
    answer = pb.ProposalAnswer(silo="a", study_id=STUDY, accept=True, spec_sha256=spec.sha256(), train_samples=5)
    region.answer_proposal("a", answer)
    region.answer_proposal("a", answer)  # the reply was lost; the silo's client sent it again
    wire = answer.SerializeToString(deterministic=True)
    receipts = [f for e, f in entries if e == Event.MESSAGE_RECEIVED and f["kind"] == "proposal_answer"]
    assert receipts[0] == {"study": STUDY, "silo": "a", "kind": "proposal_answer", "round": 0, "size": len(wire),
                           "sha256": sha256_hex(wire)}
    assert [e for e, _ in entries].count(Event.STUDY_APPROVED) == 1


def test_region_takes_its_members_keys_from_upstream_when_the_key_holder_is_elsewhere() -> None:
    """The central coordinator serves the region's blob: {member: wrapped}; the region keeps its
    members' keys, serves each member only its own, and refuses a secret 'public' context."""
    spec = StudySpec(name="keys", privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
    silos = {"a": SiloKeyPair.generate(), "b": SiloKeyPair.generate()}
    region, _ = _enrolled_region(spec, silos)
    keys = StudyKeys.generate("exact")
    secret = keys.secret_context()
    blob = json.dumps({s: base64.b64encode(wrap_secret(secret, k.public_bytes(), context=STUDY.encode())).decode()
                       for s, k in silos.items()}).encode()
    with pytest.raises(InvalidInput, match="carries a secret key"):
        region.install_keys(STUDY, secret, blob)
    only_a = json.dumps({"a": json.loads(blob)["a"]}).encode()
    with pytest.raises(InvalidInput, match="wrapped no key for member.*b"):
        region.install_keys(STUDY, keys.public_context(), only_a)
    assert region.studies[STUDY].keys is None
    region.install_keys(STUDY, keys.public_context(), blob)
    for name, pair in silos.items():
        assert unwrap_secret(region.wrapped_key(name, STUDY), pair, context=STUDY.encode()) == secret
    with pytest.raises(NotFound):
        region.wrapped_key("stranger", STUDY)


def test_round_work_forwards_the_rule_result_with_the_summed_weight() -> None:
    spec = StudySpec(name="median", privacy=PrivacySpec(dp=False, encryption="none"),
                     aggregation=AggregationSpec(rule="median"))
    upstream = pb.Task(kind=pb.TASK_TRAIN, study_id=STUDY, round=3, nonce="up-nonce", model_version=2,
                       spec_json=spec.to_json(), max_update_bytes=1 << 20)
    work = RoundWork(upstream, spec, ["a", "b", "c"], "down-nonce", time.time() + 60)
    rng = np.random.default_rng(1)
    updates = {s: rng.normal(size=(4, 3)).astype(np.float32) for s in ("a", "b", "c")}
    for i, (s, u) in enumerate(updates.items()):
        header = pb.BlobHeader(round=3, nonce="down-nonce", weight=10.0 * (i + 1), encoding="tensors",
                               metadata_json=json.dumps({"privacy": {"enabled": True, "epsilon": 1.0 + i}}))
        work.check(s, header.round, header.nonce)
        work.add_update(s, header, encode_tensors(["w"], [u]))
    with pytest.raises(Refused):
        work.check("a", 3, "up-nonce")  # silos must answer with the region's own nonce
    forward = work.forward()
    header, data = forward.update
    assert (header.round, header.nonce, header.weight, header.encoding) == (3, "up-nonce", 60.0, "tensors")
    np.testing.assert_allclose(decode_tensors(data)[1][0], np.median(np.stack(list(updates.values())), axis=0))
    assert json.loads(header.metadata_json)["privacy"]["epsilon"] == 3.0  # the region's worst ε


def test_region_declines_screened_encryption() -> None:
    screened = StudySpec(name="s", privacy=PrivacySpec(dp=False, encryption="ckks-screen"),
                         aggregation=AggregationSpec(rule="krum", params={"f": 1}))
    assert "ckks-screen" in (refusal_reason(screened) or "")
    assert refusal_reason(StudySpec(name="ok", privacy=PrivacySpec(dp=False, encryption="ckks-exact"))) is None


def test_region_declines_an_analysis_study_with_the_reason() -> None:
    assert "analysis" in (refusal_reason(StudySpec(name="overview", kind="analysis")) or "")
