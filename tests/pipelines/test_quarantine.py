"""Broken inputs are quarantined with a reason that names the file; the run goes on."""

from __future__ import annotations

import json

import pydicom

from .conftest import ingest


def _entries(result, modality):
    return {(e.reason, e.source.split("#")[0]) for e in result.quarantine.entries if e.modality == modality}


def test_broken_files_are_quarantined_and_the_rest_ingested(small_hospital):
    h = small_hospital
    bundles = sorted(h.fhir_dir.glob("*.json"))
    dicoms = sorted(h.dicom_dir.iterdir())
    csvs = sorted(h.wearables_dir.glob("*.csv"))

    bad_json = h.fhir_dir / "broken.json"
    bad_json.write_text('{"resourceType": "Bundle", "entry": [')
    truncated = dicoms[0]
    truncated.write_bytes(truncated.read_bytes()[:-700])
    no_pixels = dicoms[1]
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    not_dicom = h.dicom_dir / "README.txt"
    not_dicom.write_text("exported by PACS")
    orphan = h.dicom_dir / "orphan.dcm"
    ds = pydicom.dcmread(dicoms[2])
    ds.PatientID = "NOBODY-1"
    ds.save_as(orphan)
    orphan_csv = h.wearables_dir / "NOBODY-2.csv"
    orphan_csv.write_text(csvs[1].read_text())
    no_column = csvs[0]
    no_column.write_text("timestamp,heart_rate,acc_x,acc_y\n2023-12-01T08:00:00Z,70,0,0\n")
    bundle = json.loads(bundles[0].read_text())
    glucose = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
                   and e["resource"]["code"]["coding"][0]["code"] == "2345-7"
                   and e["resource"]["effectiveDateTime"] > "2023")
    glucose["valueQuantity"].update(unit="furlong/fortnight", code="furlong/fortnight")
    bundles[0].write_text(json.dumps(bundle))

    result = ingest(h)

    assert ("bad_json", str(bad_json)) in _entries(result, "ehr")
    assert ("unknown_unit", str(bundles[0])) in _entries(result, "ehr")
    assert {("truncated", str(truncated)), ("no_pixel_data", str(no_pixels)), ("not_dicom", str(not_dicom)),
            ("no_ehr_patient", str(orphan))} <= _entries(result, "image")
    assert _entries(result, "signal") == {("missing_column", str(no_column)), ("no_ehr_patient", str(orphan_csv))}
    for e in result.quarantine.entries:
        assert e.source.split("#")[0] in e.message and e.reason
    unit_entry = next(e for e in result.quarantine.entries if e.reason == "unknown_unit")
    assert f"Observation/{glucose['id']}" in unit_entry.source and "furlong" in unit_entry.message

    r = result.report
    assert r.quarantined_total == len(result.quarantine.entries) == 8
    assert r.modalities["image"].quarantined == {"no_ehr_patient": 1, "no_pixel_data": 1, "not_dicom": 1, "truncated": 1}
    assert r.modalities["signal"].quarantined == {"missing_column": 1, "no_ehr_patient": 1}
    assert r.modalities["ehr"].quarantined == {"bad_json": 1, "unknown_unit": 1}
    # every patient is still a sample; the two broken images and one CSV are missing from it
    assert len(result.dataset) == h.n_patients
    assert result.dataset.modality_counts() == {"ehr": 12, "image": 10, "signal": 11}
    assert "NOBODY" not in r.model_dump_json()


def test_invalid_fhir_resource_and_unknown_subject(small_hospital):
    h = small_hospital
    path = sorted(h.fhir_dir.glob("*.json"))[0]
    bundle = json.loads(path.read_text())
    obs = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    del obs[0]["resource"]["code"]  # Observation.code is required (1..1)
    obs[1]["resource"]["subject"]["reference"] = "urn:uuid:00000000-0000-4000-8000-000000000000"
    path.write_text(json.dumps(bundle))
    result = ingest(h)
    reasons = {e.reason: e for e in result.quarantine.entries}
    assert set(reasons) == {"invalid_fhir", "unknown_subject"}
    assert str(path) in reasons["invalid_fhir"].message and "code" in reasons["invalid_fhir"].message
    assert len(result.dataset) == h.n_patients
