"""A guard that keeps protected health information out of audit events.

Audit logs leave the hospital's clinical systems (they are read by auditors, attached to
reports, copied to the coordinator's operators), so an event may carry counts, sizes,
hashes, study and round ids, never a patient's identifiers. The guard matches field
*names* against the HIPAA Safe Harbor identifiers (45 CFR 164.514(b)(2)) and the FHIR R4
``Patient`` elements that hold them; values are inspected only for the two obvious
leaks: an embedded FHIR person resource and a US social security number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from compliance.errors import PHIFieldError

# Compared after lower-casing and dropping everything but letters and digits, so
# "birthDate", "birth_date" and "Birth-Date" are one key.
PHI_KEYS = frozenset({
    # names (FHIR Patient.name, HumanName parts)
    "name", "fullname", "firstname", "lastname", "givenname", "familyname",
    "middlename", "maidenname", "patientname",
    # addresses and geography smaller than a state (Patient.address)
    "address", "streetaddress", "homeaddress", "postalcode", "zipcode", "zip",
    # dates tied to the person (Patient.birthDate, deceasedDateTime)
    "birthdate", "dateofbirth", "dob", "birthday", "deceaseddatetime", "deathdate",
    # record numbers and contact points (Patient.identifier, Patient.telecom)
    "mrn", "medicalrecordnumber", "identifier", "telecom", "phone", "phonenumber",
    "telephone", "mobile", "fax", "email", "emailaddress", "ssn", "socialsecuritynumber",
    "nationalid", "passportnumber", "insurancenumber", "healthplannumber", "photo",
})
_PERSON_RESOURCES = frozenset({"Patient", "Person", "RelatedPerson", "Practitioner"})
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")


def normalise_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def check_no_phi(fields: Mapping[str, Any], *, event: str | None = None) -> None:
    """Raise :class:`PHIFieldError` if any (nested) field looks like PHI.

    ``event`` names the audit event the fields are for; without it the fields are a request's
    inputs, checked *before* anything is stored, so that a refused input changes no state.
    """
    _check(fields, event=event, where="")


def _check(value: Any, *, event: str | None, where: str) -> None:
    if isinstance(value, Mapping):
        if value.get("resourceType") in _PERSON_RESOURCES:
            _refuse(event, where or "(fields)", f"it holds a FHIR {value['resourceType']} resource")
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if normalise_key(str(key)) in PHI_KEYS:
                _refuse(event, path, f"the name '{key}' is a patient identifier")
            _check(item, event=event, where=path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, event=event, where=f"{where}[{i}]")
    elif isinstance(value, str) and _SSN.search(value):
        _refuse(event, where, "its value contains a social security number")


def _refuse(event: str | None, path: str, why: str) -> None:
    if event is None:
        raise PHIFieldError(
            f"'{path}' looks like protected health information ({why}); it would be written to audit "
            "logs that leave the hospital. Refused, nothing was stored: send it without the identifier."
        )
    raise PHIFieldError(
        f"audit event '{event}': field '{path}' looks like protected health information "
        f"({why}). Audit events may carry counts, sizes, hashes and study/round ids only; "
        "drop the field, or record a count or a salted hash instead."
    )
