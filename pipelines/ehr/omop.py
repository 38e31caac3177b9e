"""OMOP CDM v5.4 tables -> the same de-identified patients and coded events as FHIR.

OMOP rows carry concept ids, not codes; the CONCEPT table among the inputs maps each id to its
vocabulary and code (LOINC, SNOMED, RxNorm, ICD10CM, UCUM, ...; `tables.VOCABULARIES`), so
the study's feature spec (`system` + `code`) selects OMOP data exactly as it selects FHIR
data. A row's codes are those of its standard concept and of its source concept
(`*_source_concept_id`, e.g. the ICD-10-CM code behind a SNOMED condition), so a feature may
name either. Mapping per table:

- PERSON: a patient; the MRN is `person_source_value` (`person_id` when empty), so the
  pseudonym equals FHIR's and DICOM's; age from year/month/day of birth; gender from
  `gender_concept_id` (8507 male, 8532 female) or `gender_source_value`.
- MEASUREMENT / OBSERVATION: `value_as_number` in `unit_concept_id` (or `unit_source_value`)
  is a measurement; `value_as_concept_id` is a presence fact under the answer's codes (as a
  FHIR `valueCodeableConcept`); an OBSERVATION without a value is a presence fact.
- CONDITION_OCCURRENCE: a diagnosis on `condition_start_date` (label candidate).
- DRUG_EXPOSURE: a presence fact on `drug_exposure_start_date`.

A concept id that is in no CONCEPT table given is quarantined (`unknown_concept`), as is a row
without person or date (`bad_row`); concept 0 ("No matching concept") is counted as unused.
Rows refer to their person through a keyed token of `person_id`, resolved by the `FactStore`,
so PERSON may come before or after the clinical tables.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from ..deid import Deidentifier, age_years
from ..errors import TabularError
from .factstore import Codes, Event, FactStore
from .tables import VOCABULARIES, concept_id, day, gender, identifier, number, text
from .units import CODE_ALIASES

log = logging.getLogger(__name__)
MALE, FEMALE = 8507, 8532


@dataclass(frozen=True)
class ClinicalTable:
    prefix: str  # "measurement" -> measurement_concept_id, measurement_source_concept_id, ...
    dates: tuple[str, ...]
    kind: str  # "m" or "d"


TABLES = {
    "measurement": ClinicalTable("measurement", ("measurement_date", "measurement_datetime"), "m"),
    "observation": ClinicalTable("observation", ("observation_date", "observation_datetime"), "m"),
    "condition_occurrence": ClinicalTable("condition", ("condition_start_date", "condition_start_datetime"), "d"),
    "drug_exposure": ClinicalTable("drug", ("drug_exposure_start_date", "drug_exposure_start_datetime"), "m"),
}


def person_ref(deid: Deidentifier, person_id: Any) -> str:
    return deid.reference(f"omop/person/{int(float(person_id))}")


def concept_rows(df: pd.DataFrame) -> list[tuple[int, str, str]]:
    """(concept_id, vocabulary_id, concept_code) of a CONCEPT chunk's complete rows, for `FactStore.add_concepts`."""
    return [(int(float(i)), str(v), str(c)) for i, v, c in zip(df["concept_id"], df["vocabulary_id"], df["concept_code"])
            if text(i) and text(v) and text(c)]


def person_row(r: dict[str, Any], deid: Deidentifier, index_date: date) -> tuple[str, float | None, str | None, str]:
    """(pseudonym, age, gender, person token) of one PERSON row; `ValueError` if it cannot be used."""
    pid = identifier(r.get("person_id"))
    if not pid:
        raise ValueError("has an empty 'person_id'")
    mrn = identifier(r.get("person_source_value")) or pid
    year = number(r.get("year_of_birth"), "year_of_birth")
    month, dom = number(r.get("month_of_birth"), "month_of_birth"), number(r.get("day_of_birth"), "day_of_birth")
    birth = None if year is None else date(int(year), int(month or 1), int(dom or 1))
    sex = {MALE: "male", FEMALE: "female"}.get(concept_id(r.get("gender_concept_id"), "gender_concept_id") or 0)
    return deid.pseudonym(mrn), age_years(birth, index_date), sex or gender(r.get("gender_source_value")), person_ref(deid, pid)


class ClinicalRows:
    """One chunk of a MEASUREMENT / OBSERVATION / CONDITION_OCCURRENCE / DRUG_EXPOSURE table -> events."""

    def __init__(self, table: str, df: pd.DataFrame, store: FactStore) -> None:
        self.t = TABLES[table]
        p = self.t.prefix
        self.columns = [f"{p}_concept_id", f"{p}_source_concept_id", "value_as_concept_id", "unit_concept_id"]
        ids: set[int] = set()
        for column in self.columns:
            if column in df.columns:
                for v in df[column]:
                    try:
                        cid = concept_id(v, column)
                    except ValueError:
                        continue  # reported with its row below
                    if cid is not None:
                        ids.add(cid)
        self.vocab = store.concepts(ids)

    def _codes(self, *ids: int | None) -> Codes:
        out = []
        for cid in ids:
            if cid is not None and cid in self.vocab:
                vocabulary, code = self.vocab[cid]
                system = VOCABULARIES.get(vocabulary.lower().replace(" ", ""))
                if system is not None:
                    out.append(CODE_ALIASES.get((system, code), (system, code)))
        return tuple(out)

    def row(self, r: dict[str, Any], source: str, deid: Deidentifier, index_date: date, unused: Counter) -> tuple[str, Event] | None:
        """(person token, event), or None for a row that is valid but unusable (counted in `unused`)."""
        p = self.t.prefix
        person = text(r.get("person_id"))
        if not person:
            raise ValueError("has an empty 'person_id'")
        std, src = (concept_id(r.get(c), c) for c in self.columns[:2])
        if std is None and src is None:
            unused["omop_concept_0"] += 1
            return None
        unknown = [c for c in (std, src) if c is not None and c not in self.vocab]
        if len(unknown) == len([c for c in (std, src) if c is not None]):
            raise TabularError(f"has {p}_concept_id {std or 0} / {p}_source_concept_id {src or 0} (source value "
                               f"{(text(r.get(f'{p}_source_value')) or '')[:40]!r}) that no CONCEPT table given holds; "
                               "include the OMOP CONCEPT table of this CDM among the --tabular inputs",
                               reason="unknown_concept", source=source)
        codes = self._codes(std, src)
        if not codes:
            unused["omop_concept_without_fhir_system"] += 1
            return None
        when = next((d for d in (day(r.get(c), c, index_date) for c in self.t.dates if c in r) if d is not None), None)
        if when is None:
            raise ValueError(f"has no {self.t.dates[0]!r}; expected the date of the {p}")
        value, unit = 1.0, None
        if p in ("measurement", "observation"):
            number_value = number(r.get("value_as_number"), "value_as_number")
            answer = concept_id(r.get("value_as_concept_id"), "value_as_concept_id")
            if number_value is not None:
                value = number_value
                unit_codes = self.vocab.get(concept_id(r.get("unit_concept_id"), "unit_concept_id") or 0)
                unit = unit_codes[1] if unit_codes and unit_codes[0].upper() == "UCUM" else text(r.get("unit_source_value"))
            elif answer is not None and self._codes(answer):
                codes = self._codes(answer)
            elif p == "measurement":
                unused["omop_measurement_without_value"] += 1
                return None
        return person_ref(deid, person), (self.t.kind, codes, value, unit, when, source)


def is_clinical(layout: str) -> bool:
    return layout in TABLES


def check_vocabulary(path: Path, store: FactStore) -> None:
    if not store.has_concepts():
        raise TabularError("is an OMOP clinical table but no CONCEPT table was given; include the CDM's CONCEPT table "
                           "(concept.csv or .parquet) among the --tabular inputs to map concept ids to codes",
                           reason="no_vocabulary", source=path)
