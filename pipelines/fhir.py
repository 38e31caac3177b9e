"""FHIR R4 ingestion: bundles (JSON) and Bulk Data NDJSON -> per-patient coded facts.

Every Patient, Observation and Condition is validated with `fhir.resources` (R4B models,
wire-compatible with R4 for these resources); other resource types are counted and skipped
without parsing. References are resolved across all files, so a Synthea bundle per patient
and a Bulk Data export (`Patient.ndjson`, `Observation.ndjson`, ...) both work. The patient
key is the MRN: the identifier typed `MR` (HL7 v2 table 0203).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .errors import FhirError
from .quarantine import Quarantine
from .units import CODE_ALIASES

log = logging.getLogger(__name__)

PARSED_TYPES = ("Patient", "Observation", "Condition")
USABLE_STATUS = {"final", "amended", "corrected"}
MRN_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")


@dataclass(frozen=True)
class Measurement:
    codes: tuple[tuple[str, str], ...]  # (system, code), aliases already mapped
    value: float
    unit: str | None
    when: date
    source: str  # "file#Observation/id"


@dataclass(frozen=True)
class Diagnosis:
    codes: tuple[tuple[str, str], ...]
    onset: date
    source: str


@dataclass
class FhirPatient:
    mrn: str
    birth_date: date | None
    gender: str | None
    measurements: list[Measurement] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)


@dataclass
class FhirRead:
    patients: dict[str, FhirPatient]  # by MRN
    files: int = 0
    records: int = 0
    unused: Counter = field(default_factory=Counter)


def as_date(value: Any) -> date | None:
    """FHIR date/dateTime (possibly partial, e.g. '2024-03') -> date."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    parts = str(value)[:10].split("-")
    try:
        return date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, int(parts[2]) if len(parts) > 2 else 1)
    except (ValueError, IndexError):
        return None


def _codes(concept: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for c in (concept.coding or []) if concept is not None else []:
        if c.system and c.code:
            key = (str(c.system), str(c.code))
            out.append(CODE_ALIASES.get(key, key))
    return tuple(out)


def iter_files(paths: Sequence[Path], suffixes: tuple[str, ...] | None) -> Iterator[Path]:
    """Files given directly, and files under given folders (recursively, sorted)."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from (f for f in sorted(p.rglob("*")) if f.is_file() and (suffixes is None or f.suffix.lower() in suffixes))
        else:
            yield p


def _resources(path: Path) -> Iterator[tuple[str, dict]]:
    """(label, resource dict) for every resource in a JSON bundle/resource or an NDJSON file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FhirError(f"cannot be read as UTF-8 text ({e}); expected a FHIR JSON or NDJSON file", reason="unreadable", source=path) from None
    try:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix.lower() == ".ndjson" else [json.loads(text)]
    except json.JSONDecodeError as e:
        raise FhirError(f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); expected a FHIR "
                        "Bundle or resource. Re-export the file from the source system", reason="bad_json", source=path) from None
    for doc in docs:
        if not isinstance(doc, dict) or "resourceType" not in doc:
            raise FhirError("has no 'resourceType'; expected a FHIR R4 Bundle or resource", reason="not_fhir", source=path)
        if doc["resourceType"] == "Bundle":
            for i, entry in enumerate(doc.get("entry") or []):
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict):
                    yield entry.get("fullUrl") or f"entry[{i}]", res
        else:
            yield "", doc


class _Reader:
    def __init__(self, quarantine: Quarantine) -> None:
        self.q = quarantine
        self.out = FhirRead(patients={})
        self.by_ref: dict[str, FhirPatient] = {}
        self.pending: list[tuple[str, str, Any, str]] = []  # (type, subject ref, resource, source)

    def file(self, path: Path) -> None:
        self.out.files += 1
        try:
            resources = list(_resources(path))
        except FhirError as e:
            self.q.add("ehr", e)
            return
        for full_url, raw in resources:
            rtype = raw.get("resourceType")
            if rtype not in PARSED_TYPES:
                self.out.unused[f"resource_{rtype}"] += 1
                continue
            source = f"{path}#{rtype}/{raw.get('id', full_url)}"
            try:
                res = get_fhir_model_class(rtype).model_validate(raw)
            except (ValidationError, ValueError) as e:
                first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
                loc = ".".join(map(str, first["loc"])) or "(resource)"
                self.q.add("ehr", FhirError(f"is not a valid FHIR R4 {rtype}: {loc}: {first['msg']}; fix the record at the source",
                                            reason="invalid_fhir", source=source))
                continue
            self.out.records += 1
            if rtype == "Patient":
                self.patient(res, full_url, source)
            else:
                ref = res.subject.reference if res.subject is not None else None
                self.pending.append((rtype, str(ref or ""), res, source))

    def patient(self, res: Any, full_url: str, source: str) -> None:
        mrn = next((str(i.value) for i in res.identifier or [] if i.value and i.type is not None
                    and any((c.system, c.code) == MRN_TYPE for c in i.type.coding or [])), None)
        if mrn is None:
            self.q.add("ehr", FhirError("has no identifier of type MR (medical record number); expected one so the patient "
                                        "can be linked to images and wearables", reason="no_mrn", source=source))
            return
        p = self.out.patients.setdefault(mrn, FhirPatient(mrn, as_date(res.birthDate), res.gender))
        for ref in (full_url, f"Patient/{res.id}"):
            if ref:
                self.by_ref[ref] = p

    def resolve(self) -> FhirRead:
        for rtype, ref, res, source in self.pending:
            p = self.by_ref.get(ref)
            if p is None:
                self.q.add("ehr", FhirError(f"refers to subject {ref!r}, which is no Patient in the inputs; include the "
                                            "patient's record", reason="unknown_subject", source=source))
            elif rtype == "Observation":
                self.observation(p, res, source)
            else:
                self.condition(p, res, source)
        return self.out

    def observation(self, p: FhirPatient, obs: Any, source: str) -> None:
        if obs.status not in USABLE_STATUS:
            self.out.unused[f"status_{obs.status}"] += 1
            return
        when = as_date(obs.effectiveDateTime or obs.effectiveInstant
                       or (obs.effectivePeriod.start if obs.effectivePeriod else None) or obs.issued)
        if when is None:
            self.q.add("ehr", FhirError("has no effective[x] or issued date; expected one to place it in the feature "
                                        "window", reason="no_date", source=source))
            return
        parts = [(obs.code, obs.valueQuantity)] + [(c.code, c.valueQuantity) for c in obs.component or []]
        found = 0
        for concept, q in parts:
            if q is None or q.value is None:
                continue
            value = float(q.value)
            if not math.isfinite(value):
                self.q.add("ehr", FhirError(f"has a non-finite value {value}", reason="non_finite", source=source))
                continue
            unit = q.code if q.code and (q.system or "").endswith("unitsofmeasure.org") else q.unit
            p.measurements.append(Measurement(_codes(concept), value, unit, when, source))
            found += 1
        if not found:
            self.out.unused["observation_not_numeric"] += 1

    def condition(self, p: FhirPatient, cond: Any, source: str) -> None:
        status = {c.code for c in (cond.verificationStatus.coding or [])} if cond.verificationStatus else set()
        if status & {"refuted", "entered-in-error"}:
            self.out.unused["condition_refuted"] += 1
            return
        onset = as_date(cond.onsetDateTime or (cond.onsetPeriod.start if cond.onsetPeriod else None) or cond.recordedDate)
        if onset is None:
            self.q.add("ehr", FhirError("has no onset[x] or recordedDate; expected one to decide the label window",
                                        reason="no_date", source=source))
            return
        p.diagnoses.append(Diagnosis(_codes(cond.code), onset, source))


def read_fhir(paths: Sequence[Path], quarantine: Quarantine) -> FhirRead:
    """Read FHIR files and folders (`*.json`, `*.ndjson`); refused inputs go to `quarantine`."""
    reader = _Reader(quarantine)
    for path in iter_files(paths, (".json", ".ndjson")):
        reader.file(path)
    out = reader.resolve()
    log.info("FHIR: %d files, %d records, %d patients", out.files, out.records, len(out.patients))
    return out
