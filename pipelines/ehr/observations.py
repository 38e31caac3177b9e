"""Coded facts of one validated FHIR R4 resource (fhir.resources R4B model).

A fact is `(kind, codes, value, unit, when)`: kind "m" for a measurement or event usable as
a feature, "d" for a diagnosis (label candidate), "i" for an ImagingStudy (codes hold its
StudyInstanceUID). Rules:
- Observation: only status final/amended/corrected; `valueQuantity` and every component's
  `valueQuantity` (blood-pressure panels) become measurements under their own codes;
  `valueCodeableConcept` becomes a presence fact (1.0) under the *answer's* codes (e.g.
  SNOMED 77176002 "smoker"); `dataAbsentReason` is counted as missing, never as a zero.
- Condition: onset (or recordedDate); refuted / entered-in-error are skipped.
- MedicationRequest (authoredOn) and MedicationStatement (effective[x], dateAsserted):
  a presence fact under the medication's codes (RxNorm, ATC).
- Encounter: a presence fact on period.start under its type codes and class (AMB, IMP, ...);
  ImagingStudy: its StudyInstanceUID, and a presence fact on `started` under its modalities,
  so "the first inpatient encounter" or "the first CT" can be a patient's index date.
Counts of what was skipped go to `unused`, problems raise `FhirError` (no source: the caller adds it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from ..errors import FhirError
from .units import CODE_ALIASES

USABLE_STATUS = {"final", "amended", "corrected"}
SKIPPED_MEDICATION_STATUS = {"entered-in-error", "cancelled", "not-taken", "draft"}
Fact = tuple[str, tuple[tuple[str, str], ...], float, str | None, date | None]


def _date(value: Any) -> date | None:
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


def codes_of(concept: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for c in (concept.coding or []) if concept is not None else []:
        if c.system and c.code:
            key = (str(c.system), str(c.code))
            out.append(CODE_ALIASES.get(key, key))
    return tuple(out)


def _unit(q: Any) -> str | None:
    return q.code if q.code and (q.system or "").endswith("unitsofmeasure.org") else q.unit


def _observation(obs: Any, unused: Counter) -> Iterator[Fact]:
    if obs.status not in USABLE_STATUS:
        unused[f"status_{obs.status}"] += 1
        return
    when = _date(obs.effectiveDateTime or obs.effectiveInstant
                 or (obs.effectivePeriod.start if obs.effectivePeriod else None) or obs.issued)
    if when is None:
        raise FhirError("has no effective[x] or issued date; expected one to place it in the feature window",
                        reason="no_date")
    found = 0
    for concept, q, absent in [(obs.code, obs.valueQuantity, obs.dataAbsentReason)] + [
            (c.code, c.valueQuantity, c.dataAbsentReason) for c in obs.component or []]:
        if absent is not None:
            unused["data_absent"] += 1
            continue
        if q is None or q.value is None:
            continue
        value = float(q.value)
        if not math.isfinite(value):
            raise FhirError(f"has a non-finite value {value}; expected a number", reason="non_finite")
        found += 1
        yield "m", codes_of(concept), value, _unit(q), when
    if obs.valueCodeableConcept is not None and codes_of(obs.valueCodeableConcept):
        found += 1
        yield "m", codes_of(obs.valueCodeableConcept), 1.0, None, when
    if obs.valueSampledData is not None or any(c.valueSampledData is not None for c in obs.component or []):
        found += 1  # a wearable stream: read by pipelines.wearables.sampled, not as an EHR feature
    if not found and obs.dataAbsentReason is None:
        unused["observation_not_used"] += 1


def _condition(cond: Any, unused: Counter) -> Iterator[Fact]:
    status = {c.code for c in (cond.verificationStatus.coding or [])} if cond.verificationStatus else set()
    if status & {"refuted", "entered-in-error"}:
        unused["condition_refuted"] += 1
        return
    onset = _date(cond.onsetDateTime or (cond.onsetPeriod.start if cond.onsetPeriod else None) or cond.recordedDate)
    if onset is None:
        raise FhirError("has no onset[x] or recordedDate; expected one to decide the label window", reason="no_date")
    yield "d", codes_of(cond.code), 1.0, None, onset


def _medication(res: Any, rtype: str, unused: Counter) -> Iterator[Fact]:
    if res.status in SKIPPED_MEDICATION_STATUS:
        unused[f"medication_{res.status}"] += 1
        return
    concept = getattr(res, "medicationCodeableConcept", None)
    if concept is None or not codes_of(concept):
        unused["medication_reference_only"] += 1  # a Medication resource reference: not resolved here
        return
    if rtype == "MedicationRequest":
        when = _date(res.authoredOn)
    else:
        when = _date(res.effectiveDateTime or (res.effectivePeriod.start if res.effectivePeriod else None)
                     or res.dateAsserted)
    if when is None:
        raise FhirError(f"has no date ({'authoredOn' if rtype == 'MedicationRequest' else 'effective[x] or dateAsserted'}); "
                        "expected one to place it in the feature window", reason="no_date")
    yield "m", codes_of(concept), 1.0, None, when


def _encounter(enc: Any, unused: Counter) -> Iterator[Fact]:
    """A presence fact on the encounter's start, under its type codes and its class (v3 ActCode: AMB, IMP, EMER)."""
    if enc.status in ("cancelled", "entered-in-error", "planned"):
        unused[f"encounter_{enc.status}"] += 1
        return
    when = _date(enc.period.start if enc.period else None)
    if when is None:
        unused["encounter_without_period"] += 1
        return
    codes = tuple(c for concept in enc.type or [] for c in codes_of(concept))
    cls = enc.class_fhir
    if cls is not None and cls.system and cls.code:
        codes += ((str(cls.system), str(cls.code)),)
    if codes:
        yield "m", codes, 1.0, None, when


def facts_of(rtype: str, res: Any, unused: Counter) -> list[Fact]:
    if rtype == "Observation":
        return list(_observation(res, unused))
    if rtype == "Condition":
        return list(_condition(res, unused))
    if rtype in ("MedicationRequest", "MedicationStatement"):
        return list(_medication(res, rtype, unused))
    if rtype == "Encounter":
        return list(_encounter(res, unused))
    if rtype == "ImagingStudy":
        uid = next((str(i.value).removeprefix("urn:oid:") for i in res.identifier or []
                    if i.value and (i.system == "urn:dicom:uid" or str(i.value).startswith("urn:oid:"))), None)
        if uid is None:
            unused["imaging_study_without_uid"] += 1
            return []
        facts: list[Fact] = [("i", ((uid, ""),), 0.0, None, None)]
        started = _date(res.started)
        modalities = tuple((str(m.system), str(m.code)) for m in res.modality or [] if m.system and m.code)
        if started is not None and modalities:  # dated by its modalities: an index event ("first CT") or a count
            facts.append(("m", modalities, 1.0, None, started))
        return facts
    return []
