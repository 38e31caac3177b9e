from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
from fhir.resources.R4B.bundle import Bundle
from monai.transforms import LoadImage

from pipelines.synthetic import generate_federation


def _bundles(h):
    return [json.loads(p.read_text()) for p in sorted(h.fhir_dir.glob("*.json"))]


def test_layout_and_names(federation):
    assert [h.name for h in federation] == ["st-mary", "northgate", "riverside"]
    for h in federation:
        assert h.n_patients == 200 and len(list(h.fhir_dir.glob("*.json"))) == 200
        assert 0 < len(list(h.dicom_dir.iterdir())) < 200 and 0 < len(list(h.wearables_dir.glob("*.csv"))) < 200


def test_fhir_bundles_parse_with_fhir_resources(federation):
    for h in federation:
        for path in sorted(h.fhir_dir.glob("*.json"))[:5]:
            bundle = Bundle.model_validate_json(path.read_text())
            assert bundle.type == "transaction"
            types = {e.resource.get_resource_type() for e in bundle.entry}
            assert {"Patient", "Encounter"} <= types
            assert all(e.fullUrl.startswith("urn:uuid:") and e.request.method == "POST" for e in bundle.entry)
            patient = bundle.entry[0].resource
            mrn = [i for i in patient.identifier if i.type and i.type.coding[0].code == "MR"][0]
            assert mrn.system.startswith("urn:oid:") and patient.name and patient.address and patient.telecom


def test_units_differ_between_hospitals(federation):
    def glucose_codes(h):
        return {(c["code"], r["valueQuantity"]["unit"]) for b in _bundles(h) for e in b["entry"]
                for r in [e["resource"]] if r["resourceType"] == "Observation"
                for c in r["code"]["coding"] if "Glucose" in c["display"]}
    assert glucose_codes(federation[0]) == {("2345-7", "mg/dL")}
    assert glucose_codes(federation[1]) == {("15074-8", "mmol/L")}


def test_dicom_readable_by_pydicom_and_monai(federation):
    mrns = {json.loads(p.read_text())["entry"][0]["resource"]["identifier"][1]["value"]
            for p in federation[1].fhir_dir.glob("*.json")}
    loader = LoadImage(image_only=True)
    for path in sorted(federation[1].dicom_dir.iterdir())[:3]:
        ds = pydicom.dcmread(path)
        assert ds.PatientID in mrns and ds.Modality == "CT" and ds.pixel_array.shape == (32, 32)
        assert ds.file_meta.TransferSyntaxUID and ds.SOPInstanceUID.is_valid and ds.RescaleSlope == 0.5
        image = loader(str(path))
        assert tuple(image.shape) == (32, 32) and float(image.min()) < -500  # rescaled to HU: air


def test_wearable_csv(federation):
    path = sorted(federation[2].wearables_dir.glob("*.csv"))[0]
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["timestamp", "heart_rate", "acc_x", "acc_y", "acc_z"]
    assert 128 <= len(rows) <= 160 and rows[0]["timestamp"].endswith("Z")


def test_each_patient_lacks_at_most_one_modality(federation):
    for h in federation:
        dicom_ids = {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in h.dicom_dir.iterdir()}
        csv_ids = {p.stem for p in h.wearables_dir.glob("*.csv")}
        missing = []
        for b in _bundles(h):
            mrn = b["entry"][0]["resource"]["identifier"][1]["value"]
            has_obs = any(e["resource"]["resourceType"] == "Observation" for e in b["entry"])
            missing.append(3 - has_obs - (mrn in dicom_ids) - (mrn in csv_ids))
        assert max(missing) == 1 and 0.05 < np.mean(missing) < 0.3


def test_deterministic(tmp_path: Path):
    a = generate_federation(tmp_path / "a", n_hospitals=1, patients_per_hospital=4, seed=7)[0]
    b = generate_federation(tmp_path / "b", n_hospitals=1, patients_per_hospital=4, seed=7)[0]
    for sub in ("fhir", "dicom", "wearables"):
        files_a = sorted(p.relative_to(a.root) for p in (a.root / sub).iterdir())
        assert files_a == sorted(p.relative_to(b.root) for p in (b.root / sub).iterdir())
        assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files_a)


def test_generation_reports_each_patient_for_progress(tmp_path):
    seen: list[str] = []
    hospitals = generate_federation(tmp_path, n_hospitals=2, patients_per_hospital=3, seed=0, on_patient=seen.append)
    assert seen == [h.name for h in hospitals for _ in range(3)]
