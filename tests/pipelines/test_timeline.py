"""Index dates per patient and labels where hospitals keep them (#22 items 1, 2), on FHIR bundles whose data end
years before the default index date, as real exports (Synthea, Bulk Data) do."""

from __future__ import annotations

from pathlib import Path

from coordinator.api.study import CohortSpec, FeatureSpec
from pipelines.ingest import ingest_silo

from .fixtures import LOINC, SNOMED, patient, quantity, write_bundle

KEY = b"t" * 32
FEATURES = (FeatureSpec(name="age", system="fedcare", code="age", unit="a"),
            FeatureSpec(name="glucose", code="2345-7", unit="mg/dL", aggregate="mean"))


def _condition(cid: str, subject: str, code: str, onset: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": subject},
            "code": {"coding": [{"system": SNOMED, "code": code}]}, "onsetDateTime": onset}


def _bundles(root: Path) -> list[Path]:
    """Three patients whose records stop in 2014-2016; one has no observation at all."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, year in enumerate((2014, 2015, 2016)):
        ref = f"Patient/p{i}"
        resources = [patient(f"p{i}", f"MRN-{i}", birth="1950-01-01")]
        if i < 2:
            resources += [quantity("2345-7", 90 + i, "mg/dL", f"{year}-03-01", ref, f"g{i}a"),
                          quantity("2345-7", 110 + i, "mg/dL", f"{year}-06-01", ref, f"g{i}b"),
                          quantity("4548-4", 6.5 + i, "%", f"{year}-07-01", ref, f"h{i}")]
        resources.append(_condition(f"c{i}", ref, "38341003", f"{year - 1}-01-01"))  # hypertension, years before
        out.append(write_bundle(root / f"b{i}.json", resources))
    return out


def _ingest(root: Path, **cohort):
    return ingest_silo(fhir=_bundles(root), dicom=[], wearables=[], pseudonym_key=KEY,
                       cohort=CohortSpec(features=FEATURES, **cohort))


def test_a_fixed_index_date_years_after_the_data_gives_no_ehr_features(tmp_path: Path):
    r = _ingest(tmp_path).report
    assert r.samples == 3 and r.modalities["ehr"].samples == 0  # what real FHIR gave before: nothing observed


def test_last_observation_puts_each_patients_window_over_their_own_data(tmp_path: Path):
    result = _ingest(tmp_path, index_from="last_observation")
    r, raw = result.report, result.dataset.ehr_raw.numpy()
    assert r.samples == 3 and r.modalities["ehr"].samples == 2  # both patients with glucose now have it
    assert sorted(raw[:, 1][raw[:, 1] == raw[:, 1]].tolist()) == [100.0, 101.0]  # means of each patient's two values


def test_first_event_index_and_the_patients_without_one_are_counted(tmp_path: Path):
    result = _ingest(tmp_path, index_from="first_event", index_system=LOINC, index_code="4548-4")
    assert result.report.samples == 2 and result.report.excluded == {"no_index_date_first_event": 1}


def test_label_from_an_observation_value_after_the_index_date(tmp_path: Path):
    # HbA1c above 7 % within a year after the first glucose: patient 1 (7.5 %) positive, patient 0 (6.5 %) negative
    result = _ingest(tmp_path, index_from="first_event", index_system=LOINC, index_code="2345-7",
                     label_source="observation", label_system=LOINC, label_code="4548-4", label_above=7.0)
    r = result.report
    assert r.samples == 2 and r.positives == 1 and r.excluded == {"no_index_date_first_event": 1}


def test_prevalent_cases_are_an_explicit_choice(tmp_path: Path):
    label = dict(label_system=SNOMED, label_code="38341003", index_from="last_observation")
    excluded = _ingest(tmp_path / "a", **label).report
    kept = _ingest(tmp_path / "b", exclude_prevalent=False, **label).report
    assert excluded.samples == 0 and excluded.excluded == {"prevalent_label_condition": 3}
    assert kept.samples == 3 and kept.positives == 3


def test_the_first_inpatient_encounter_or_imaging_study_as_index_date(tmp_path: Path):
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    resources = [patient("p1", "MRN-1", birth="1950-01-01"), patient("p2", "MRN-2", birth="1950-01-01"),
                 {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"system": act, "code": "IMP"},
                  "subject": {"reference": "Patient/p1"}, "period": {"start": "2016-02-01T08:00:00Z"}},
                 {"resourceType": "Encounter", "id": "e2", "status": "finished", "class": {"system": act, "code": "AMB"},
                  "subject": {"reference": "Patient/p2"}, "period": {"start": "2016-02-01T08:00:00Z"}},
                 {"resourceType": "ImagingStudy", "id": "s2", "status": "available", "subject": {"reference": "Patient/p2"},
                  "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}], "started": "2017-03-01",
                  "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]},
                 quantity("2345-7", 95, "mg/dL", "2016-01-20", "Patient/p1", "g1"),
                 quantity("2345-7", 105, "mg/dL", "2017-02-20", "Patient/p2", "g2")]
    bundle = write_bundle(tmp_path / "b.json", resources)
    inpatient = ingest_silo(fhir=[bundle], dicom=[], wearables=[], pseudonym_key=KEY,
                            cohort=CohortSpec(features=FEATURES, index_from="first_event", index_system=act, index_code="IMP"))
    assert inpatient.report.samples == 1 and inpatient.report.excluded == {"no_index_date_first_event": 1}
    assert inpatient.dataset.ehr_raw[0, 1] == 95.0  # the glucose before that admission
    ct = ingest_silo(fhir=[bundle], dicom=[], wearables=[], pseudonym_key=KEY,
                     cohort=CohortSpec(features=FEATURES, index_from="first_event",
                                       index_system="http://dicom.nema.org/resources/ontology/DCM", index_code="CT"))
    assert ct.report.samples == 1 and ct.dataset.ehr_raw[0, 1] == 105.0  # p2's glucose before its CT
