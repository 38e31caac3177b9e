"""#20 item 3: FHIR validated in the elements ingestion reads gives the same facts and refusals as fhir.resources'
full validation, on the synthetic hospitals, on bundles a package generates (carebundle) and on records broken in an
element that is read."""

from __future__ import annotations

import json
import tomllib
from datetime import date
from pathlib import Path

import pytest
from carebundle import generate_cohort, to_json
from pydantic import ValidationError

from coordinator.api.study import CohortSpec
from pipelines.deid import Deidentifier
from pipelines.ehr.fhir import FileFacts, parse_file
from pipelines.ehr.fhir_fields import FhirValidation
from pipelines.errors import InputError
from pipelines.synthetic import generate_federation

from .fixtures import LOINC, RXNORM, SNOMED, UCUM, patient, quantity, write_bundle

DEID = Deidentifier(b"fedcare-test-pseudonym-key-32byt")
CHANNELS = ("heart_rate", "spo2", "acc_x", "acc_y", "acc_z")


def _parse(files: list[Path], validation: FhirValidation, mrn_system: str | None = None) -> tuple[list[dict], list]:
    facts, refused = [], []
    for path in files:
        errors: list[InputError] = []
        got: FileFacts = parse_file(path, DEID, date(2024, 1, 1), errors, CHANNELS, mrn_system=mrn_system,
                                    validation=validation)
        facts.append(got.to_json())
        refused += [(e.reason, str(e.source), str(e)) for e in errors]
    return facts, refused


def _same_on_both_paths(files: list[Path], mrn_system: str | None = None) -> list[dict]:
    fast, full = _parse(files, FhirValidation.USED_FIELDS, mrn_system), _parse(files, FhirValidation.FULL, mrn_system)
    assert fast == full
    return fast[0]


def test_synthetic_hospital_gives_the_same_facts_on_both_paths(tmp_path: Path):
    h = generate_federation(tmp_path, n_hospitals=1, patients_per_hospital=15, seed=7)[0]
    facts = _same_on_both_paths(sorted(h.fhir_dir.rglob("*.json")))
    assert sum(f["records"] for f in facts) > 15 * 10 and all(f["patients"] for f in facts)


def test_package_bundles_give_the_same_facts_on_both_paths(tmp_path: Path):
    files, systems = [], set()
    for year in (2019, 2024):
        for i, bundle in enumerate(generate_cohort(count=4, seed=year, reference_date=date(year, 6, 1))):
            path = tmp_path / f"{year}-{i}.json"
            path.write_text(to_json(bundle))
            files.append(path)
            systems |= {ident["system"] for e in json.loads(path.read_text())["entry"]
                        if e["resource"]["resourceType"] == "Patient" for ident in e["resource"].get("identifier", [])}
    facts = _same_on_both_paths(files, mrn_system=systems.pop())
    assert sum(len(f["events"]) for f in facts) > 8 * 5 and sum(len(f["patients"]) for f in facts) == 8


def test_every_element_read_gives_the_same_facts_on_both_paths(tmp_path: Path):
    hr = {"coding": [{"system": LOINC, "code": "8867-4"}]}
    sd = {"origin": {"value": 0, "unit": "/min", "system": UCUM, "code": "/min"}, "period": 1000, "dimensions": 1}
    ref = {"reference": "Patient/p1"}
    when = {"effectiveDateTime": "2023-12-31T10:00:00Z"}
    resources = [
        patient("p1", "MRN-1"),
        {**quantity("8480-6", 150, "mm[Hg]", "2023-12-20T08:00:00+01:00", "Patient/p1", "bp"), "valueQuantity": None,
         "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                        "valueQuantity": {"value": 150, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
                       {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                        "dataAbsentReason": {"text": "not measured"}}]},
        {"resourceType": "Observation", "id": "smk", "status": "amended", "subject": ref, "issued": "2023-09-01T00:00:00Z",
         "code": {"text": "smoking"}, "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "77176002"}]}},
        {**quantity("2345-7", 5.5, "mmol/L", "2023-01-01", "Patient/p1", "period"), "effectiveDateTime": None,
         "effectivePeriod": {"start": "2023-02-01"}},
        {**quantity("2345-7", 99, "mg/dL", "2023-01-01", "Patient/p1", "prelim"), "status": "preliminary"},
        {"resourceType": "Observation", "id": "hr", "status": "final", "subject": ref, "code": hr, **when,
         "valueSampledData": {**sd, "data": "70 71 E 72 L U", "lowerLimit": 40, "upperLimit": 200}},
        {"resourceType": "Observation", "id": "hr-bad", "status": "final", "subject": ref, "code": hr, **when,
         "valueSampledData": {**sd, "data": "70 x"}},
        {"resourceType": "MedicationRequest", "id": "mr", "status": "active", "intent": "order", "subject": ref,
         "authoredOn": "2023-08-01", "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "860975"}]}},
        {"resourceType": "MedicationStatement", "id": "ms", "status": "active", "subject": ref, "dateAsserted": "2023-09-01",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "860975"}]}},
        {"resourceType": "MedicationStatement", "id": "ms-ref", "status": "active", "subject": ref,
         "medicationReference": {"reference": "Medication/m1"}},
        {"resourceType": "Condition", "id": "c", "subject": ref, "recordedDate": "2019-05-01",
         "code": {"coding": [{"system": SNOMED, "code": "38341003"}]}},
        {"resourceType": "Condition", "id": "c-refuted", "subject": ref, "onsetPeriod": {"start": "2019-05-01"},
         "verificationStatus": {"coding": [{"code": "refuted"}]}, "code": {"coding": [{"system": SNOMED, "code": "1"}]}},
        {"resourceType": "Condition", "id": "c-undated", "subject": ref, "code": {"coding": [{"system": SNOMED, "code": "2"}]}},
        {"resourceType": "Encounter", "id": "e", "status": "finished", "subject": ref, "period": {"start": "2023-03-01"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
         "type": [{"coding": [{"system": SNOMED, "code": "32485007"}]}]},
        {"resourceType": "ImagingStudy", "id": "is", "status": "available", "subject": ref, "started": "2023-04-01",
         "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}],
         "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]},
    ]
    path = write_bundle(tmp_path / "b.json", [{k: v for k, v in r.items() if v is not None} for r in resources])
    (facts,), refused = _parse([path], FhirValidation.USED_FIELDS)
    assert json.dumps([[facts], refused]) == json.dumps(_parse([path], FhirValidation.FULL))  # NaN (E) equal too
    assert {label.split("/")[1] for *_, label in facts["events"]} == {"bp", "smk", "period", "mr", "ms", "c", "e", "is"}
    assert [s[-1] for s in facts["segments"]] == ["Observation/hr"]
    assert sorted((reason, source.rsplit("/", 1)[1]) for reason, source, _ in refused) == [
        ("bad_sampled_data", "hr-bad"), ("no_date", "c-undated")]


# records invalid in an element ingestion reads, and that element's name in the refusal
BROKEN_IN_A_USED_ELEMENT = [
    ({**quantity("2160-0", 1.1, "mg/dL", "2023-13-01", "Patient/p1", "bad-date")}, "effectiveDateTime"),
    ({**quantity("2160-0", 1.1, "mg/dL", "2023-10-01", "Patient/p1", "bad-value"),
      "valueQuantity": {"value": "high", "unit": "mg/dL"}}, "valueQuantity.value"),
    ({k: v for k, v in quantity("2160-0", 1.1, "mg/dL", "2023-10-01", "Patient/p1", "no-code").items() if k != "code"},
     "code"),
    ({**quantity("2160-0", 1.1, "mg/dL", "2023-10-01", "Patient/p1", "two-values"),
      "valueString": "1.1"}, "value"),
    ({**quantity("2160-0", 1.1, "mg/dL", "2023-10-01", "Patient/p1", "bad-system"),
      "code": {"coding": [{"system": "http://loinc.org", "code": "21 60 "}]}}, "code.coding.0.code"),
    ({"resourceType": "Condition", "id": "two-onsets", "subject": {"reference": "Patient/p1"},
      "code": {"coding": [{"system": SNOMED, "code": "44054006"}]}, "onsetDateTime": "2020-01-01",
      "onsetPeriod": {"start": "2020-01-01"}}, "onset"),
    ({"resourceType": "MedicationRequest", "id": "no-medication", "status": "active", "intent": "order",
      "subject": {"reference": "Patient/p1"}, "authoredOn": "2022-01-01"}, "medication"),
    ({"resourceType": "Encounter", "id": "no-class", "status": "finished", "subject": {"reference": "Patient/p1"},
      "period": {"start": "2022-01-01"}}, "class"),
    ({**patient("p2", "MRN-2"), "birthDate": "1950-02-30"}, "birthDate"),
    ({**patient("p3", "MRN-3"), "id": "p 3"}, "id"),
]


@pytest.mark.parametrize("validation", list(FhirValidation))
def test_a_record_invalid_in_an_element_read_is_refused_naming_it_on_both_paths(tmp_path: Path,
                                                                               validation: FhirValidation):
    good = [patient("p1", "MRN-1"), quantity("2160-0", 1.1, "mg/dL", "2023-10-01", "Patient/p1", "ok")]
    path = write_bundle(tmp_path / "b.json", good + [r for r, _ in BROKEN_IN_A_USED_ELEMENT])
    (facts,), refused = _parse([path], validation)
    assert facts["records"] == len(good) and len(facts["events"]) == 1
    assert [reason for reason, *_ in refused] == ["invalid_fhir"] * len(BROKEN_IN_A_USED_ELEMENT)
    for (_, source, message), (record, element) in zip(refused, BROKEN_IN_A_USED_ELEMENT):
        assert source.endswith(f"#{record['resourceType']}/{record['id']}")
        assert element in message.split(f"is not a valid FHIR R4 {record['resourceType']}")[1], (element, message)


def test_an_element_not_read_is_checked_only_by_full_validation(tmp_path: Path):
    odd = {**patient("p1", "MRN-1"), "name": "Lestrade", "favouriteColour": "blue"}  # not FHIR, and never read
    path = write_bundle(tmp_path / "b.json", [odd])
    (fast,), none = _parse([path], FhirValidation.USED_FIELDS)
    assert none == [] and len(fast["patients"]) == 1
    (full,), refused = _parse([path], FhirValidation.FULL)
    assert full["patients"] == [] and refused[0][0] == "invalid_fhir"


def test_the_node_config_chooses_the_validation_and_refuses_an_unknown_one(tmp_path: Path):
    from silo_node.config import NodeConfig
    from silo_node.ingest_command import run_ingest

    base = "name = 'st-mary'\ncoordinator = 'c:1'\nstate_dir = 's'\ninsecure = true\n[data]\ndataset = 'd'\nfhir = ['f']\n"
    assert NodeConfig.model_validate(tomllib.loads(base)).data.fhir_validation is FhirValidation.USED_FIELDS
    data = NodeConfig.model_validate(tomllib.loads(base + "fhir_validation = 'full'\n")).data
    with pytest.raises(ValidationError, match="data.fhir_validation"):
        NodeConfig.model_validate(tomllib.loads(base + "fhir_validation = 'none'\n"))
    path = write_bundle(tmp_path / "b.json", [{**patient("p1", "MRN-1"), "favouriteColour": "blue"}])
    common = {"fhir": [path], "dicom": [], "dicomweb": [], "wearables": [], "tabular": [], "report": None,
              "cohort": CohortSpec()}
    assert run_ingest(out=tmp_path / "fast", **common).patients == 1
    assert run_ingest(out=tmp_path / "full", fhir_validation=data.fhir_validation, **common).patients == 0
