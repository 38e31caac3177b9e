"""Generic EHR warehouse extracts, mapped by the study's feature spec.

**Long** (one row per event): a patient id column (`mrn`, `patient_id`), `code`, `system`
(a URI such as `http://loinc.org` or a vocabulary name: LOINC, SNOMED, RxNorm, ICD10CM),
`date` (or `effective_date`, `event_date`, `start_date`), and optional `value`, `unit` and
`category`. A row without a value is a presence fact (1.0), as a FHIR Condition or
MedicationRequest is; `category` `condition`/`diagnosis`/`problem` makes the row a
diagnosis, which is what the study's label is read from.

**Wide** (one row per patient, or per patient and date): a patient id column; optional
demographics `birth_date` (or `year_of_birth`) and `gender`/`sex`, which make the row a patient
record; optional `date` (values dated at the index date when absent); and one column per
feature of the study, named by the feature's `name`. A feature with a unit needs the unit
stated, in the header (`glucose [mmol/L]`) or in a `<name>_unit` column; values are converted
to the feature's unit like FHIR values (`pipelines.ehr.units`). Empty cells are missing values
(they become missing-value indicators, never zeros).

The MRN becomes the keyed pseudonym (`pipelines.deid`), the same as FHIR's and DICOM's, so
the patient links across modalities. A row that cannot be used is quarantined with a reason
naming `file#row=N`; the rest of the file is used.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from ..cohort import DEMOGRAPHIC_SYSTEM, FeatureLike
from ..deid import Deidentifier, age_years
from ..errors import TabularError
from .factstore import Event
from .tables import ID_COLUMNS, VOCABULARIES, as_date, day, gender, header_key, identifier, number, text
from .units import CODE_ALIASES

log = logging.getLogger(__name__)
DATE_COLUMNS = ("date", "effective_date", "event_date", "start_date")
DIAGNOSIS_CATEGORIES = {"condition", "diagnosis", "problem"}
Row = tuple[str, list[Event], tuple[float | None, str | None] | None]  # pseudonym, events, demographics


def _first(columns: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in columns), None)


def system_uri(value: str) -> str | None:
    if "://" in value or value.startswith("urn:"):
        return value
    return VOCABULARIES.get(value.strip().lower().replace(" ", "").replace("-", ""))


class LongExtract:
    """Rows of a long extract -> events of the row's patient."""

    def __init__(self, path: Path, columns: list[str], index_date: date, deid: Deidentifier) -> None:
        keys = [c.strip().lower() for c in columns]
        self.id_col = _first(keys, ID_COLUMNS)
        self.date_col = _first(keys, DATE_COLUMNS)
        missing = [n for n, c in (("system", "system" if "system" in keys else None),
                                  (" or ".join(DATE_COLUMNS), self.date_col)) if c is None]
        if missing:
            raise TabularError(f"has columns {columns[:12]} but lacks {missing}; a long extract (one row per event) needs "
                               f"{ID_COLUMNS[0]}, code, system and date", reason="missing_column", source=path)
        self.path, self.index_date, self.deid = path, index_date, deid

    def row(self, r: dict[str, Any], n: int) -> Row:
        mrn, code, system = identifier(r.get(self.id_col)), identifier(r.get("code")), text(r.get("system"))
        if not mrn or not code or not system:
            raise ValueError(f"has an empty {'patient id' if not mrn else 'code' if not code else 'system'}")
        uri = system_uri(system)
        if uri is None:
            raise TabularError(f"has code system {system!r}; expected a URI (http://loinc.org) or one of "
                               f"{sorted(VOCABULARIES)}", reason="unknown_system")
        when = day(r.get(self.date_col), self.date_col, self.index_date)
        if when is None:
            raise ValueError(f"has an empty {self.date_col!r}; expected the date of the event")
        value = number(r.get("value"), "value")
        key = CODE_ALIASES.get((uri, code), (uri, code))
        kind = "d" if (text(r.get("category")) or "").lower() in DIAGNOSIS_CATEGORIES else "m"
        event: Event = (kind, (key,), 1.0 if value is None else value, text(r.get("unit")), when,
                        f"{self.path}#row={n}")
        return self.deid.pseudonym(mrn), [event], None


class WideExtract:
    """Rows of a wide extract -> the patient's demographics and one event per filled feature column."""

    def __init__(self, path: Path, columns: list[str], features: Sequence[FeatureLike], index_date: date,
                 deid: Deidentifier, errors: list[TabularError], unused: Counter) -> None:
        by_key = {header_key(c): c for c in columns}
        keys = {c.strip().lower(): c for c in columns}
        self.id_col = _first(list(keys), ID_COLUMNS)
        self.date_col = "date" if "date" in keys else None
        self.birth_col = _first(list(keys), ("birth_date", "birthdate", "year_of_birth"))
        self.gender_col = _first(list(keys), ("gender", "sex"))
        self.path, self.index_date, self.deid = path, index_date, deid
        self.features: list[tuple[FeatureLike, str, str | None, str | None]] = []  # feature, column, unit, unit column
        used = {self.id_col, self.date_col, self.birth_col, self.gender_col}
        for f in features:
            if f.system == DEMOGRAPHIC_SYSTEM or f.name.lower() not in by_key:
                continue
            column = by_key[f.name.lower()]
            unit = column[column.index("[") + 1:column.rindex("]")].strip() if "[" in column and "]" in column else None
            unit_col = f"{f.name.lower()}_unit" if f"{f.name.lower()}_unit" in keys else None
            used |= {column.strip().lower(), unit_col}
            if f.unit is not None and unit is None and unit_col is None:
                errors.append(TabularError(
                    f"column {column!r} (feature {f.name!r}) states no unit; expected it in the header, e.g. "
                    f"'{f.name} [{f.unit}]', or in a '{f.name}_unit' column. The column is not used",
                    reason="missing_unit", source=f"{path}#column={column}"))
                continue
            self.features.append((f, column.strip().lower(), unit, unit_col))
        for c in keys:
            if c not in used:
                unused["tabular_column_not_in_study"] += 1
                log.info("%s: column %r is not a feature of the study; not used", path, keys[c])

    def row(self, r: dict[str, Any], n: int) -> Row:
        mrn = identifier(r.get(self.id_col))
        if not mrn:
            raise ValueError(f"has an empty {self.id_col!r}; expected the patient's MRN")
        when = 0 if self.date_col is None else day(r.get(self.date_col), self.date_col, self.index_date)
        if when is None:
            raise ValueError(f"has an empty {self.date_col!r}; expected the date of the row's values")
        source = f"{self.path}#row={n}"
        events: list[Event] = []
        for f, column, unit, unit_col in self.features:
            value = number(r.get(column), column)
            if value is not None:
                events.append(("m", ((f.system, f.code),), value, text(r.get(unit_col)) if unit_col else unit, when, source))
        demographics = None
        if self.birth_col or self.gender_col:
            birth = None
            if self.birth_col == "year_of_birth":
                year = number(r.get(self.birth_col), self.birth_col)
                birth = None if year is None else date(int(year), 1, 1)
            elif self.birth_col:
                birth = as_date(r.get(self.birth_col), self.birth_col)
            demographics = (age_years(birth, self.index_date), gender(r.get(self.gender_col)) if self.gender_col else None)
        return self.deid.pseudonym(mrn), events, demographics


def rows(df: pd.DataFrame, first: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, r in enumerate(df.to_dict("records")):
        yield first + i, r
