"""A sign-flipping hospital is neutralised under CKKS: multi-Krum decides on decrypted
pairwise distances only, and the coordinator sums the accepted ciphertexts."""

import pytest

from coordinator.api.study import AggregationSpec, PrivacySpec, StudySpec, TrainingSpec
from pipelines.synthetic import generate_federation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def five_hospitals(tmp_path_factory):
    return generate_federation(tmp_path_factory.mktemp("five"), n_hospitals=5, patients_per_hospital=80, seed=3)


def test_sign_flipping_silo_is_refused_by_encrypted_multi_krum(cluster, five_hospitals) -> None:
    cluster.hospitals = five_hospitals
    client = cluster.start_coordinator()
    attacker = five_hospitals[-1]
    for h in five_hospitals:
        cluster.start_silo(h, **({"attack": {"kind": "sign_flip", "params": {"scale": 5.0}}} if h is attacker else {}))
    spec = StudySpec(name="robust", training=TrainingSpec(rounds=2, local_epochs=1, learning_rate=0.05, min_silos=4,
                                                          expected_silos=5, round_timeout_s=300, enrollment_timeout_s=120),
                     privacy=PrivacySpec(dp=False, encryption="ckks-screen"),
                     aggregation=AggregationSpec(rule="krum", params={"f": 1, "m": 3}))
    study_id = client.submit(spec)
    summary = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=600)
    for r in summary["rounds"][1:]:
        assert attacker.name in r["aggregation"]["refused"], r["aggregation"]
        assert len(r["aggregation"]["accepted"]) == 3
    assert summary["final"]["auroc"] is not None
