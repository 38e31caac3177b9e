"""A simulation and the real multi-process federation, same seed and data: the same model (in the clear)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compliance.keys import write_secret_file
from fedcare.demo import DemoOptions, demo_spec
from fedcare.simulate import Engine, SimulatedSilo, SimulationOptions, simulate, simulated_pseudonym_key
from pipelines.synthetic import generate_federation
from silo_node.config import DataConfig
from silo_node.pseudonym_key import KEY_FILE

pytestmark = pytest.mark.slow
SEED = 5


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):  # two small hospitals for the conftest's cluster
    return generate_federation(tmp_path_factory.mktemp("data"), n_hospitals=2, patients_per_hospital=30, seed=SEED)


def tiny_spec():
    """The demo's study in the clear: 2 rounds of 1 local epoch, no DP, no encryption."""
    return demo_spec(DemoOptions(out=Path("unused"), rounds=2, silos=2, dp=False, encryption="none", local_epochs=1))


def test_simulation_gives_the_federations_model(tmp_path: Path, cluster, hospitals) -> None:
    client = cluster.start_coordinator()
    for h in hospitals:  # the keys a simulated hospital of this name has, so both split the patients alike
        write_secret_file(cluster.root / "silos" / h.name / "state" / KEY_FILE, simulated_pseudonym_key(SEED, h.name))
        cluster.start_silo(h)
    study_id = client.submit(tiny_spec())
    federation = cluster.wait_for(client, study_id, lambda st, s: st.state == "done", timeout=600)
    silos = [SimulatedSilo(name=h.name, data=DataConfig(dataset=f"{h.name}-ehr", fhir=[h.fhir_dir], dicom=[h.dicom_dir],
                                                        wearables=[h.wearables_dir])) for h in hospitals]
    simulation = simulate(tiny_spec(), silos, SimulationOptions(out=tmp_path / "simulation", engine=Engine.LOCAL,
                                                                seed=SEED))
    assert simulation["final"]["model_sha256"] == federation["final"]["model_sha256"]
    assert [r["metrics"] for r in simulation["rounds"]] == [r["metrics"] for r in federation["rounds"]]
    assert simulation.keys() == federation.keys()
