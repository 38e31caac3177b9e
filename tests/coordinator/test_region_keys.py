"""CKKS key generation when a regional aggregator takes part and the key holder is a direct silo.

The central coordinator lists the region's members as "<region>/<member>" in the KEYGEN task,
checks the key holder's bundle against exactly those recipients, and serves the region the set
of its members' wrapped keys, which only the members can open. A real Federation over SQLite and
PostgreSQL, real TenSEAL keys, real X25519 wrapping.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.api import federation_pb2 as pb
from coordinator.api.study import PrivacySpec, StudySpec, TrainingSpec
from coordinator.blobs import BlobStore
from coordinator.errors import InvalidInput
from coordinator.federation import Federation
from coordinator.store import EnrollmentRow, Store, StudyRow, open_engine
from privacy.errors import KeyWrapError
from privacy.he import SiloKeyPair, StudyKeys, context_has_secret_key, unwrap_secret, wrap_secret

DIRECT, REGION = "a-direct", "region-east"


@pytest.fixture(scope="module")
def study_keys() -> StudyKeys:
    return StudyKeys.generate("exact")


class Setup:
    def __init__(self, database_url: str, root: Path) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.store = Store(open_engine(database_url))
        self.fed = Federation(self.store, BlobStore(root / "blobs"), audit=lambda e, **f: self.events.append((e, f)))
        self.direct = SiloKeyPair.generate()
        self.members = {"m1": SiloKeyPair.generate(), "m2": SiloKeyPair.generate()}
        spec = StudySpec(name="region keys", training=TrainingSpec(rounds=1, min_silos=2, expected_silos=2),
                         privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
        self.study = self.fed.submit_study(spec.to_json())
        sha = self.store.get(StudyRow, self.study).spec_sha256
        self.fed.join(DIRECT, ["ehr"], self.direct.public_bytes())
        self.fed.join(REGION, ["ehr"], SiloKeyPair.generate().public_bytes())  # its unusable key: never wrapped for
        for silo in (DIRECT, REGION):
            assert self.fed.next_task(silo, 0).kind == pb.TASK_PROPOSAL
        self.fed.answer_proposal(DIRECT, pb.ProposalAnswer(study_id=self.study, accept=True, spec_sha256=sha))
        self.fed.answer_proposal(REGION, pb.ProposalAnswer(
            study_id=self.study, accept=True, spec_sha256=sha,
            member_wrap_keys={m: k.public_bytes() for m, k in self.members.items()}))

    def bundle(self, public: bytes, secret: bytes, recipients: dict[str, bytes]) -> bytes:
        wrapped = {s: base64.b64encode(wrap_secret(secret, k, context=self.study.encode())).decode()
                   for s, k in recipients.items()}
        return json.dumps({"public_context": base64.b64encode(public).decode(), "wrapped": wrapped}).encode()

    def push(self, silo: str, data: bytes) -> pb.PushReply:
        sha = hashlib.sha256(data).hexdigest()
        header = pb.BlobHeader(ref=pb.BlobRef(study_id=self.study, kind=pb.BLOB_KEY_BUNDLE), size=len(data), sha256=sha)
        with self.fed.blobs.incoming() as incoming:
            incoming.write(data)
            return self.fed.accept_key_bundle(silo, header, incoming)

    def nothing_stored(self) -> bool:
        row = self.store.get(StudyRow, self.study)
        return (row.state == "keygen" and row.public_context_sha is None
                and all(e.wrapped_key_sha is None for e in self.store.all(EnrollmentRow, study_id=self.study)))


@pytest.fixture
def setup(database_url: str, tmp_path: Path):  # noqa: ANN201
    s = Setup(database_url, tmp_path)
    yield s
    s.store.engine.dispose()


def test_keygen_lists_a_regions_members_and_they_alone_can_open_its_keys(setup: Setup, study_keys: StudyKeys) -> None:
    task = setup.fed.next_task(DIRECT, 0)  # the direct silo sorts first: it is the key holder
    assert task.kind == pb.TASK_KEYGEN
    assert dict(task.participant_keys) == {DIRECT: setup.direct.public_bytes(),
                                           f"{REGION}/m1": setup.members["m1"].public_bytes(),
                                           f"{REGION}/m2": setup.members["m2"].public_bytes()}
    secret = study_keys.secret_context()
    assert setup.push(DIRECT, setup.bundle(study_keys.public_context(), secret, dict(task.participant_keys))).accepted

    [(_, audited)] = [(e, f) for e, f in setup.events if e == "message_received" and f.get("kind") == "key_bundle"]
    assert audited["wrapped_for"] == [DIRECT, f"{REGION}/m1", f"{REGION}/m2"]
    # The region fetches the set of its members' wrapped keys; each opens only with its member's key.
    _, blob = setup.fed.blob_for(REGION, pb.BlobRef(study_id=setup.study, kind=pb.BLOB_WRAPPED_KEY, silo=REGION))
    inner = {m: base64.b64decode(w) for m, w in json.loads(blob).items()}
    assert sorted(inner) == ["m1", "m2"]
    for m, pair in setup.members.items():
        assert unwrap_secret(inner[m], pair, context=setup.study.encode()) == secret
        with pytest.raises(KeyWrapError):
            unwrap_secret(inner[m], setup.direct, context=setup.study.encode())
    _, public = setup.fed.blob_for(REGION, pb.BlobRef(study_id=setup.study, kind=pb.BLOB_PUBLIC_CONTEXT, silo=REGION))
    assert not context_has_secret_key(public)
    _, own = setup.fed.blob_for(DIRECT, pb.BlobRef(study_id=setup.study, kind=pb.BLOB_WRAPPED_KEY, silo=DIRECT))
    assert unwrap_secret(own, setup.direct, context=setup.study.encode()) == secret
    assert setup.store.get(StudyRow, setup.study).state == "running"


def test_a_bundle_missing_a_region_member_is_refused_and_nothing_stored(setup: Setup, study_keys: StudyKeys) -> None:
    task = setup.fed.next_task(DIRECT, 0)
    keys = {s: k for s, k in task.participant_keys.items() if s != f"{REGION}/m2"}
    data = setup.bundle(study_keys.public_context(), study_keys.secret_context(), keys)
    with pytest.raises(InvalidInput, match=f"lacks the wrapped key of region {REGION}'s member.*{REGION}/m2"):
        setup.push(DIRECT, data)
    assert setup.nothing_stored()
    # The region's old-style single entry (wrapped for its own, unusable key) does not stand in for its members.
    data = setup.bundle(study_keys.public_context(), study_keys.secret_context(),
                        {DIRECT: setup.direct.public_bytes(), REGION: SiloKeyPair.generate().public_bytes()})
    with pytest.raises(InvalidInput, match=f"lacks the wrapped key of region {REGION}'s member"):
        setup.push(DIRECT, data)
    assert setup.nothing_stored()


def test_a_member_key_for_an_unknown_region_or_member_is_refused(setup: Setup, study_keys: StudyKeys) -> None:
    task = setup.fed.next_task(DIRECT, 0)
    for stray in ("region-west/m1", f"{DIRECT}/m1", f"{REGION}/stranger"):
        keys = {**task.participant_keys, stray: SiloKeyPair.generate().public_bytes()}
        data = setup.bundle(study_keys.public_context(), study_keys.secret_context(), keys)
        with pytest.raises(InvalidInput, match=f"wraps a key for '{stray}'"):
            setup.push(DIRECT, data)
        assert setup.nothing_stored()


def test_names_with_a_slash_and_bad_member_keys_are_refused(tmp_path: Path) -> None:
    store = Store(open_engine(tmp_path / "coordinator.sqlite"))
    fed = Federation(store, BlobStore(tmp_path / "blobs"))
    with pytest.raises(InvalidInput, match="may not contain '/'"):
        fed.join("evil/m1", ["ehr"], b"")
    spec = StudySpec(name="other", training=TrainingSpec(rounds=1, min_silos=3),
                     privacy=PrivacySpec(dp=False, encryption="ckks-exact"))
    study = fed.submit_study(spec.to_json())
    sha = store.get(StudyRow, study).spec_sha256
    for members, why in (({"x/y": b"k" * 32}, "may not contain '/'"), ({"m1": b"short"}, "expected a 32-byte")):
        with pytest.raises(InvalidInput, match=why):
            fed.answer_proposal(REGION, pb.ProposalAnswer(study_id=study, accept=True, spec_sha256=sha,
                                                          member_wrap_keys=members))
        assert store.get(EnrollmentRow, study, REGION) is None
    store.engine.dispose()
