"""Tabular EHR files (CSV, TSV, Parquet) read in chunks, recognised by their columns, parsed cell by cell.

Files are never loaded whole: CSV is read `CHUNK_ROWS` rows at a time by pandas, Parquet
one record batch at a time by pyarrow (`ParquetFile.iter_batches`), so memory depends on the
chunk size, not on the size of the warehouse export. Rows are numbered from 1 (the first
data row; in a CSV that is line 2) and quarantine entries name `file#row=N`.

A table's layout comes from its header, never from its file name (`layout_of`): the OMOP
CDM v5.4 tables (CONCEPT, PERSON, MEASUREMENT, OBSERVATION, CONDITION_OCCURRENCE,
DRUG_EXPOSURE, by their `*_concept_id` columns), a long extract (one row per event: a patient
id column and `code`), or a wide extract (one row per patient: a patient id column and one
column per feature).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import TabularError
from ..inputs import open_input
from ..limits import DEFAULT_LIMITS, IngestLimits

log = logging.getLogger(__name__)
CHUNK_ROWS = 20_000
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES
#: Columns that carry the patient's MRN in generic extracts (matched case-insensitively).
ID_COLUMNS = ("mrn", "patient_id", "medical_record_number")
OMOP_CLINICAL = {"measurement_concept_id": "measurement", "observation_concept_id": "observation",
                 "condition_concept_id": "condition_occurrence", "drug_concept_id": "drug_exposure"}
#: OMOP vocabulary_id (and the short names long extracts may use) -> FHIR system URI.
VOCABULARIES: dict[str, str] = {
    "loinc": "http://loinc.org", "snomed": "http://snomed.info/sct", "sct": "http://snomed.info/sct",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm", "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd10": "http://hl7.org/fhir/sid/icd-10", "icd9cm": "http://hl7.org/fhir/sid/icd-9-cm",
    "atc": "http://www.whocc.no/atc", "cvx": "http://hl7.org/fhir/sid/cvx", "ucum": "http://unitsofmeasure.org",
}


def header_key(column: str) -> str:
    """`' Glucose [mmol/L] '` -> `'glucose'`: the name a column is matched by."""
    return column.split("[", 1)[0].strip().lower()


def check_header(path: Path, sep: str | None, limits: IngestLimits) -> None:
    """Refuse a table whose first line is longer than `limits.max_line_bytes` or holds more than
    `limits.max_table_columns` columns, before pandas allocates anything for it (`sep` None: whitespace)."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES or suffix == ".zip":
        return  # Parquet: the schema is read without rows and counted by the caller; zip: pandas reads one member
    with open_input(path) as f:
        line = f.readline(limits.max_line_bytes + 1)
    if len(line) > limits.max_line_bytes:
        raise TabularError(f"has a first line longer than {limits.max_line_bytes} bytes (limits.max_line_bytes); expected "
                           "a header or row of a table. Check the delimiter, or raise the limit in the node config",
                           reason="line_too_long", source=path)
    n = len(line.split()) if sep is None else line.count(sep.encode()) + 1
    if n > limits.max_table_columns:
        raise TabularError(f"has {n} columns, above limits.max_table_columns ({limits.max_table_columns}); it is not "
                           "parsed. Check the delimiter, or raise the limit in the node config", reason="too_many_columns",
                           source=path)


def columns_of(path: Path, limits: IngestLimits = DEFAULT_LIMITS) -> list[str]:
    """The header of a table, without reading its rows (and within `limits`)."""
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        try:
            check_header(path, _sep(path), limits)
        except OSError as e:
            raise TabularError(f"cannot be read ({e}); check the path and its permissions", reason="unreadable",
                               source=path) from None
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return [str(c) for c in pd.read_csv(path, nrows=0, sep=_sep(path)).columns]
    except Exception as e:  # pandas/pyarrow raise many types for damaged files; the file is quarantined
        raise TabularError(f"cannot be read as a {'Parquet' if path.suffix.lower() in PARQUET_SUFFIXES else 'CSV'} "
                           f"table ({type(e).__name__}: {' '.join(str(e).split())[:200]}); expected a header row and "
                           "one row per patient or event", reason="unreadable", source=path) from None


def _sep(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def layout_of(columns: list[str]) -> str:
    """"concept", "person", an OMOP clinical table name, "long", "wide" or "unknown"."""
    keys = {header_key(c) for c in columns}
    if {"concept_id", "vocabulary_id", "concept_code"} <= keys:
        return "concept"
    if {"person_id", "year_of_birth"} <= keys:
        return "person"
    for column, table in OMOP_CLINICAL.items():
        if column in keys and "person_id" in keys:
            return table
    if keys & set(ID_COLUMNS):
        return "long" if "code" in keys else "wide"
    return "unknown"


def chunks(path: Path) -> Iterator[tuple[int, pd.DataFrame]]:
    """(number of the chunk's first row, rows) with lower-cased column names; cells as read (str for CSV)."""
    first = 1
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            batches = (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS))
        else:
            batches = pd.read_csv(path, sep=_sep(path), dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS)
        for df in batches:
            df.columns = [str(c).strip().lower() for c in df.columns]
            yield first, df
            first += len(df)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise TabularError(f"cannot be read past row {first - 1} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                           "rows before it were used. Re-export the table", reason="unreadable", source=path) from None


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def text(value: Any) -> str | None:
    return None if is_blank(value) else str(value).strip()


def code_text(value: str) -> str:
    """'1.0' -> '1': a code cell exported as a float matches a code map or rule written with integers."""
    try:
        f = float(value)
    except ValueError:
        return value
    return str(int(f)) if f.is_integer() else value


def identifier(value: Any) -> str | None:
    """An id cell as text; integral floats (Parquet int columns with nulls arrive as float) without '.0'."""
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():
        return str(int(value))
    return text(value)


def number(value: Any, column: str) -> float | None:
    """A finite float, None if the cell is empty; `ValueError` naming the column otherwise."""
    if is_blank(value):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r} holds {str(value)[:40]!r}; expected a number") from None
    if not math.isfinite(out):
        raise ValueError(f"column {column!r} holds {out}; expected a finite number")
    return out


def as_date(value: Any, column: str) -> date | None:
    """An ISO 8601 date/date-time cell (or a Parquet date); None if empty; `ValueError` naming the column otherwise."""
    if is_blank(value):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ValueError(f"column {column!r} holds {str(value)[:40]!r}; expected an ISO 8601 date such as "
                         "2023-11-02") from None


def day(value: Any, column: str, index_date: date) -> int | None:
    """Days from the index date to a date cell; None if empty."""
    d = as_date(value, column)
    return None if d is None else (d - index_date).days


def concept_id(value: Any, column: str) -> int | None:
    """An OMOP concept id; None for an empty cell or 0 ("No matching concept")."""
    n = number(value, column)
    if n is None or n == 0:
        return None
    if n != int(n):
        raise ValueError(f"column {column!r} holds {value!r}; expected an integer concept id")
    return int(n)


def gender(value: Any) -> str | None:
    g = (text(value) or "").lower()
    return {"f": "female", "female": "female", "w": "female", "m": "male", "male": "male"}.get(g)
