"""fedcare simulate --fhir: one FHIR folder cut into silos by patient, in the layouts hospitals export: a transaction
Bundle per patient (the synthetic hospitals, Synthea's layout), package-generated US Core bundles whose Patients have
no id (carebundle), and a Bulk Data NDJSON export with reference data and a broken line. Each silo is ingested by the
real pipeline: every patient in exactly one silo, with all its facts."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from carebundle import generate_cohort, to_json

from coordinator.api.study import CohortSpec
from fedcare.simulate import SimulationError
from fedcare.simulate_fhir import partition_fhir
from pipelines.ingest import ingest_silo
from pipelines.synthetic import generate_federation

KEY = b"fedcare-test-pseudonym-key-32byt"


def _ingest(folder: Path, **kwargs: object):
    return ingest_silo(fhir=[folder], dicom=[], wearables=[], cohort=CohortSpec(), pseudonym_key=KEY, **kwargs)


def test_bundles_per_patient_split_iid_keep_every_patient_and_fact_once(tmp_path: Path) -> None:
    hospitals = generate_federation(tmp_path / "fed", n_hospitals=2, patients_per_hospital=12, seed=3)
    folder = tmp_path / "fhir"
    for h in hospitals:  # one research export of both hospitals' bundles, in subfolders
        shutil.copytree(h.fhir_dir, folder / h.name)
    whole = _ingest(folder)
    silos = partition_fhir(folder, tmp_path / "split", silos=3, seed=0)
    parts = [_ingest(s.data.fhir[0]) for s in silos]
    assert [s.name for s in silos] == ["silo-0000", "silo-0001", "silo-0002"]
    assert sum(p.report.patients for p in parts) == whole.report.patients == 24
    assert all(p.report.patients > 0 for p in parts)
    pseudonyms = [pid for p in parts for pid in p.dataset.pseudonyms]
    assert sorted(pseudonyms) == sorted(whole.dataset.pseudonyms)  # each patient in exactly one silo
    assert sum(p.report.modalities["ehr"].records for p in parts) == whole.report.modalities["ehr"].records
    assert sum(p.report.quarantined_total for p in parts) == whole.report.quarantined_total
    again = partition_fhir(folder, tmp_path / "split", silos=2, seed=0)  # replaces the earlier split of that folder
    assert sum(_ingest(s.data.fhir[0]).report.patients for s in again) == 24


def test_generated_us_core_bundles_whose_patients_have_no_id_split_by_fullurl(tmp_path: Path) -> None:
    folder = tmp_path / "fhir"
    folder.mkdir()
    for i, bundle in enumerate(generate_cohort(count=8, seed=7, reference_date=date(2023, 6, 1))):
        (folder / f"{i}.json").write_text(to_json(bundle))
    system = _mrn_system(folder)  # typed by no MR code: the node config names it
    whole = _ingest(folder, fhir_mrn_system=system)
    assert whole.report.patients == 8
    silos = partition_fhir(folder, tmp_path / "split", silos=2, seed=1)
    parts = [_ingest(s.data.fhir[0], fhir_mrn_system=system) for s in silos]
    assert sorted(pid for p in parts for pid in p.dataset.pseudonyms) == sorted(whole.dataset.pseudonyms)
    assert sum(p.report.modalities["ehr"].records for p in parts) == whole.report.modalities["ehr"].records
    assert all(p.report.quarantined_total == 0 for p in parts)  # urn:uuid references still resolve in each part


def _mrn_system(folder: Path) -> str:
    doc = json.loads(next(folder.glob("*.json")).read_text())
    return next(ident["system"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient"
                for ident in e["resource"]["identifier"])


def _bulk_export(folder: Path) -> None:
    """A Bulk Data export: Patients managed by three organisations, their Observations, the Organizations (reference
    data) and one line that is not JSON."""
    folder.mkdir()
    mr = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
    patients, observations = [], []
    for i in range(30):
        patients.append({"resourceType": "Patient", "id": f"p{i}", "gender": ("female", "male")[i % 2],
                         "birthDate": "1960-02-01", "managingOrganization": {"reference": f"Organization/o{i % 3}"},
                         "identifier": [{"type": mr, "value": f"MRN-{i}"}]})
        for k in range(2):
            observations.append({"resourceType": "Observation", "id": f"obs{i}-{k}", "status": "final",
                                 "subject": {"reference": f"Patient/p{i}"}, "effectiveDateTime": "2023-10-01",
                                 "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                                 "valueQuantity": {"value": 90 + k, "unit": "mg/dL",
                                                   "system": "http://unitsofmeasure.org", "code": "mg/dL"}})
    (folder / "Patient.ndjson").write_text("".join(json.dumps(p) + "\n" for p in patients))
    (folder / "Observation.ndjson").write_text("".join(json.dumps(o) + "\n" for o in observations) + "{ not json\n")
    (folder / "Organization.ndjson").write_text("".join(
        json.dumps({"resourceType": "Organization", "id": f"o{k}", "name": f"Hospital {k}"}) + "\n" for k in range(3)))


def test_a_bulk_export_split_by_managing_organization_or_a_dirichlet_draw(tmp_path: Path) -> None:
    _bulk_export(tmp_path / "bulk")
    whole = _ingest(tmp_path / "bulk")
    assert whole.report.patients == 30 and whole.report.quarantined_total == 1
    by_org = partition_fhir(tmp_path / "bulk", tmp_path / "by-org", silos=3, seed=0,
                            by="managingOrganization.reference")
    for k, silo in enumerate(by_org):
        folder = silo.data.fhir[0]
        patients = [json.loads(line) for line in (folder / "Patient.ndjson").read_text().splitlines()]
        assert {p["managingOrganization"]["reference"] for p in patients} == {f"Organization/o{k}"}
        ids = {f"Patient/{p['id']}" for p in patients}
        lines = (folder / "Observation.ndjson").read_text().splitlines()
        assert {json.loads(x)["subject"]["reference"] for x in lines if x.startswith("{\"")} == ids
        assert len((folder / "Organization.ndjson").read_text().splitlines()) == 3  # reference data: every silo
    parts = [_ingest(s.data.fhir[0]).report for s in by_org]
    assert [p.patients for p in parts] == [10, 10, 10]
    assert [p.quarantined_total for p in parts] == [1, 0, 0]  # the broken line: once, in the first silo
    skewed = partition_fhir(tmp_path / "bulk", tmp_path / "dirichlet", silos=4, seed=0, classes_element="gender",
                            alpha=0.1)
    assert sum(_ingest(s.data.fhir[0]).report.patients for s in skewed) == 30
    with pytest.raises(SimulationError, match="30 Patients have no 'address.state'"):
        partition_fhir(tmp_path / "bulk", tmp_path / "bad", silos=3, seed=0, by="address.state")
    with pytest.raises(SimulationError, match="names 3 hospitals; --silos is 2"):
        partition_fhir(tmp_path / "bulk", tmp_path / "bad", silos=2, seed=0, by="managingOrganization.reference")
    with pytest.raises(SimulationError, match="holds no FHIR files"):
        partition_fhir(tmp_path / "by-org" / "nothing-here", tmp_path / "bad", silos=2, seed=0)


@pytest.mark.slow  # a whole simulated study: coordinator, two silo nodes, two rounds
def test_cli_simulates_a_study_on_a_fhir_folder_split_into_silos(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcare.cli import app

    hospitals = generate_federation(tmp_path / "fed", n_hospitals=2, patients_per_hospital=30, seed=5)
    for h in hospitals:
        shutil.copytree(h.fhir_dir, tmp_path / "fhir" / h.name)
    spec = (Path(__file__).resolve().parents[2] / "examples" / "multimodal.toml").read_text()
    spec = (spec.replace('modalities = ["ehr", "image", "signal"]', 'modalities = ["ehr"]')
            .replace("rounds = 20", "rounds = 2").replace("local_epochs = 2", "local_epochs = 1")
            .replace("dp = true", "dp = false").replace('encryption = "ckks-exact"', 'encryption = "none"'))
    (tmp_path / "study.toml").write_text(spec)
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "study.toml"), "--fhir", str(tmp_path / "fhir"),
                                      "--silos", "3", "--engine", "local", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "done" and summary["silos"] == ["silo-0000", "silo-0001", "silo-0002"]
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
