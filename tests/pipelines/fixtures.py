"""Hand-written, realistic FHIR R4 resources for the tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

LOINC, SNOMED, UCUM, RXNORM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org", "http://www.nlm.nih.gov/research/umls/rxnorm"
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


def patient(pid: str, mrn: str, family: str = "Lestrade", birth: str = "1950-05-17", gender: str = "male") -> dict:
    return {"resourceType": "Patient", "id": pid,
            "identifier": [{"type": MR, "system": "urn:oid:1.2.36.146.595.217.0.1", "value": mrn},
                           {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"999-{mrn[-2:]:0>2}-1234"}],
            "name": [{"use": "official", "family": family, "given": ["Gregory"]}],
            "telecom": [{"system": "phone", "value": "+44 20 7946 0991", "use": "home"}],
            "gender": gender, "birthDate": birth,
            "address": [{"line": ["221B Baker Street"], "city": "London", "postalCode": "NW1 6XE"}]}


def quantity(code: str, value: float, unit: str, when: str, subject: str, oid: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}, **extra}


def write_bundle(path: Path, resources: list[dict], kind: str = "collection", base: str = "") -> Path:
    entries = []
    for r in resources:
        e = {"fullUrl": f"{base}{r['resourceType']}/{r['id']}" if base else f"urn:uuid:{r['id']}", "resource": r}
        if kind == "searchset":
            e["search"] = {"mode": "match"}
        entries.append(e)
    path.write_text(json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}))
    return path
