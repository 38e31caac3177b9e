"""FHIR depth on hand-written R4 examples: bundle types, NDJSON, components, codeable values, medications, units."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import wfdb

from coordinator.api.study import CohortSpec, FeatureSpec
from pipelines.ingest import ingest_silo
from pipelines.wearables.recordings import window
from pipelines.wearables.wfdb_records import read_wfdb

from .fixtures import LOINC, RXNORM, SNOMED, patient, quantity, write_bundle

KEY = b"fedcare-test-pseudonym-key-32byt"
FEATURES = (
    FeatureSpec(name="age", system="fedcare", code="age", unit="a"),
    FeatureSpec(name="glucose", code="2345-7", unit="mg/dL", aggregate="mean"),
    FeatureSpec(name="systolic_max", code="8480-6", unit="mm[Hg]", aggregate="max"),
    FeatureSpec(name="diastolic_min", code="8462-4", unit="mm[Hg]", aggregate="min", window_days=30),
    FeatureSpec(name="smoker", system=SNOMED, code="77176002", unit=None, aggregate="last"),
    FeatureSpec(name="metformin_orders", system=RXNORM, code="860975", unit=None, aggregate="count"),
    FeatureSpec(name="hypertension", system=SNOMED, code="38341003", unit=None, aggregate="count", window_days=3650),
)


def _bp(oid: str, subject: str, when: str, sys_: float, dia: float) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "effectiveDateTime": when,
            "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                           "valueQuantity": {"value": sys_, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                          {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                           "valueQuantity": {"value": dia, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}


def test_bundles_ndjson_and_feature_spec(tmp_path: Path):
    fhir = tmp_path / "fhir"
    (fhir / "server").mkdir(parents=True)
    base = "https://ehr.example.org/fhir/"
    # a searchset from a FHIR server: absolute fullUrls, relative references
    write_bundle(fhir / "server" / "search.json", [
        patient("a1", "MRN-A", birth="1948-02-01"),
        _bp("bp1", "Patient/a1", "2023-12-20T08:00:00+01:00", 150, 95), _bp("bp2", "Patient/a1", "2023-06-01", 170, 70),
        _bp("bp-old", "Patient/a1", "2021-01-01", 210, 50),  # outside the 365-day window
        quantity("15074-8", 7.0, "mmol/L", "2023-11-02", "Patient/a1", "g1"),  # molar code and unit: converted
        quantity("2345-7", 110.0, "mg/dL", "2023-10-02", "Patient/a1", "g2"),
        quantity("2345-7", 1.0, "furlong/fortnight", "2023-10-03", "Patient/a1", "g-bad"),
        {"resourceType": "Observation", "id": "smk", "status": "final", "subject": {"reference": "Patient/a1"},
         "code": {"coding": [{"system": LOINC, "code": "72166-2"}]}, "effectiveDateTime": "2023-09-01",
         "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "77176002", "display": "Smoker"}]}},
        {"resourceType": "Observation", "id": "absent", "status": "final", "subject": {"reference": "Patient/a1"},
         "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}, "effectiveDateTime": "2023-09-01",
         "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed"}]}},
        {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order", "subject": {"reference": "Patient/a1"},
         "authoredOn": "2023-08-01", "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "860975"}]}},
        {"resourceType": "MedicationStatement", "id": "ms1", "status": "active", "subject": {"reference": "Patient/a1"},
         "effectiveDateTime": "2023-09-01", "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "860975"}]}},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/a1"}, "onsetDateTime": "2019-05-01",
         "code": {"coding": [{"system": SNOMED, "code": "38341003"}]}},
        {"resourceType": "Condition", "id": "hf", "subject": {"reference": "Patient/a1"}, "onsetDateTime": "2024-03-01",
         "code": {"coding": [{"system": SNOMED, "code": "84114007"}]}},
    ], kind="searchset", base=base)
    # a Bulk Data export for a second patient, with nothing but a birth date: every coded feature missing
    (fhir / "bulk").mkdir()
    (fhir / "bulk" / "Patient.ndjson").write_text(json.dumps(patient("b2", "MRN-B", family="Holmes", birth="1970-01-01")) + "\n")
    (fhir / "bulk" / "Observation.ndjson").write_text(
        json.dumps(quantity("2345-7", 90.0, "mg/dL", "2022-01-01", "Patient/b2", "old")) + "\n")

    result = ingest_silo(fhir=[fhir], dicom=[], wearables=[], cohort=CohortSpec(features=FEATURES), pseudonym_key=KEY)
    d = result.dataset
    assert len(d) == 2 and d.labels.sum() == 1
    by_label = {int(d.label[i]): d.ehr[i].numpy() for i in range(2)}
    a, b = by_label[1], by_label[0]
    f = len(FEATURES)
    assert list(a[f:]) == [0] * f  # every feature observed for patient A
    # B: only age observed; missing values carry indicator 1 and value 0; a count of nothing is a real 0
    assert list(b[f + 1:f + 5]) == [1] * 4 and list(b[f + 5:]) == [0, 0]
    assert np.all(b[1:f] == 0)
    assert set(result.quarantine.counts("ehr")) == {"unknown_unit"}
    entry = result.quarantine.entries[0]
    assert "Observation/g-bad" in entry.source and "furlong" in entry.message
    assert result.report.modalities["ehr"].unused["data_absent"] == 1
    # the raw values behind the normalisation: rebuild them through the public pieces
    from pipelines.deid import Deidentifier
    from pipelines.ehr.features import ehr_values
    from pipelines.ehr.factstore import FactStore
    from pipelines.ehr.fhir import read_fhir
    from pipelines.quarantine import Quarantine
    with FactStore() as store:
        read_fhir([fhir], Quarantine(), deid=Deidentifier(KEY), index_date=date(2024, 1, 1), store=store)
        store.resolve(Quarantine())
        raw = ehr_values(store.patient(Deidentifier(KEY).pseudonym("MRN-A")), FEATURES, Quarantine(), set())
    assert raw[1] == pytest.approx(np.mean([7.0 * 180.156 / 10, 110.0]))  # mmol/L -> mg/dL with glucose's molar mass
    assert raw[2] == 170 and raw[3] == 95 and raw[4] == 1 and raw[5] == 2 and raw[6] == 1


def test_wfdb_record(tmp_path: Path):
    n = 300
    t = np.arange(n)
    signals = np.stack([70 + 5 * np.sin(t / 10), np.zeros(n), np.zeros(n), np.ones(n)], axis=1)
    signals[100:120, 0] = np.nan  # a gap
    from datetime import datetime
    wfdb.wrsamp("rec01", fs=2, units=["bpm", "g", "g", "g"], sig_name=["heart_rate", "acc_x", "acc_y", "acc_z"],
                p_signal=signals, fmt=["16"] * 4, adc_gain=[100.0] * 4, baseline=[0] * 4, write_dir=str(tmp_path),
                base_date=datetime(2023, 12, 30).date(), base_time=datetime(2023, 12, 30, 10).time(), comments=["MRN: WF-7"])
    rec = read_wfdb(tmp_path / "rec01.hea", ("heart_rate", "acc_x", "acc_y", "acc_z"))
    assert rec.patient_id == "WF-7" and rec.values.shape == (4, n) and np.isnan(rec.values[0, 100:120]).all()
    w = window(rec, ("heart_rate", "acc_x", "acc_y", "acc_z"), rate_hz=1.0, length=128, index_date=date(2024, 1, 1))
    assert w.values.shape == (4, 128) and 0.5 < w.coverage <= 1.0
