"""A hospital's own tables, read as the node config describes them (`TableSource`), into the `FactStore`.

Each row is one patient: the MRN (or, without an id column, the file name and row number)
becomes the keyed pseudonym; age comes from an age column or a birth date; sex through the
column's code map; every column named like a study feature (or renamed to one) becomes a fact
of that feature, dated by the row's date column or the index date: a number in the unit the
config (or the header, `chol [mg/dL]`) gives, or, for a categorical feature, the index of its
declared category after the code map (a value outside them is counted, never guessed). The
label column and the index-date column are read when the study asks for them. Missing-value
tokens are blank cells. Files are read in chunks (`tables.CHUNK_ROWS`), so memory does not
grow with the table; a row that cannot be used is quarantined as `file#row=N`.

Every mapping is reported (`TableRead.mappings`, keyed `table N: column`, no paths), with a
warning for a code map that no cell matched or a study feature no table holds, so hospital IT
can see what fedcare understood.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from ..cohort import DEMOGRAPHIC_SYSTEM, CohortLike, FeatureLike
from ..deid import MAX_AGE, Deidentifier, age_years
from ..errors import EXHAUSTION, InputError, TabularError, refusal
from ..inputs import input_files
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..quarantine import Quarantine
from ..splits import SplitPart, split_part
from .factstore import KIND_INDEX, KIND_LABEL, KIND_MEASUREMENT, Event, FactStore
from .labels import label_rule
from .table_source import WHITESPACE, TableSource
from .tables import CHUNK_ROWS, as_date, check_header, code_text, day, gender, header_key, identifier, number, text

log = logging.getLogger(__name__)


@dataclass
class TableRead:
    files: int = 0
    records: int = 0  # rows used
    parsed: int = 0
    cached: int = 0  # always 0: own tables are small and re-read each run
    unused: Counter = field(default_factory=Counter)
    mappings: dict[str, str] = field(default_factory=dict)  # "table N: column" -> what fedcare read it as
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, SplitPart] = field(default_factory=dict)  # pseudonym -> the part its split column names


def _coded(cell: Any, code_map: dict[str, str] | None) -> tuple[str | None, bool]:
    """(value after the code map, whether the cell matched the map); blank -> (None, True)."""
    raw = text(cell)
    if raw is None:
        return None, True
    if code_map is None:
        return raw, True
    for key in (raw, code_text(raw)):
        if key in code_map:
            return code_map[key], True
    return raw, False


@dataclass
class _Plan:
    """What each column of one table is, for the study in hand."""

    numeric: list[tuple[FeatureLike, str, str | None]] = field(default_factory=list)  # feature, column, unit
    categorical: list[tuple[FeatureLike, str]] = field(default_factory=list)
    matched: Counter = field(default_factory=Counter)  # code-mapped column -> cells that matched its map
    seen: Counter = field(default_factory=Counter)  # code-mapped column -> non-blank cells


def _plan(src: TableSource, columns: list[str], cohort: CohortLike, tag: str, out: TableRead,
          errors: list[TabularError], path: Path) -> _Plan:
    keys = {header_key(c): c for c in columns}
    rename = {k.lower(): v.lower() for k, v in src.rename.items()}
    by_feature = {rename.get(k, k): k for k in keys}
    plan = _Plan()
    named = [c for c in (src.patient_id, src.age, src.birth_date, src.sex, src.date, src.split_column, *src.codes, *src.units, *src.rename) if c]
    named += [c.lower() for c in (cohort.label_column if cohort.label_source == "column" else None,
                                  cohort.index_column if cohort.index_from == "column" else None) if c]
    for column in dict.fromkeys(named):
        if column not in keys:
            warning = (f"{tag}: column {column!r}, named in the node config or the study, is not in the table; its "
                       f"columns are {list(keys)[:20]}. Fix the name (or the table's columns)")
            if warning not in out.warnings:
                out.warnings.append(warning)
    used: dict[str, str] = {}
    for role, column in (("patient id (pseudonymised)", src.patient_id), ("age in years", src.age),
                         ("birth date", src.birth_date), ("date of the row's values", src.date),
                         ("split part (train/validation/test)", src.split_column)):
        if column:
            used[column.lower()] = role
    if src.sex:
        used[src.sex.lower()] = f"sex via codes {src.codes[src.sex]}" if src.sex in src.codes else "sex (f/female/m/male)"
    if cohort.label_source == "column" and cohort.label_column:
        rule = f"> {cohort.label_above:g}" if cohort.label_above is not None else f"in {list(cohort.label_values)}"
        used[cohort.label_column.lower()] = f"label: positive when {rule}"
    if cohort.index_from == "column" and cohort.index_column:
        used[cohort.index_column.lower()] = "index date"
    for f in cohort.features:
        column = by_feature.get(f.name.lower())
        if f.system == DEMOGRAPHIC_SYSTEM or column is None:
            continue
        if f.categories:
            plan.categorical.append((f, column))
            via = f" via codes {src.codes[column]}" if column in src.codes else ""
            used[column] = f"feature {f.name}: categorical {list(f.categories)}{via}"
            continue
        original = keys[column]
        unit = src.units.get(column) or (original[original.index("[") + 1:original.rindex("]")].strip()
                                         if "[" in original and "]" in original else None)
        if f.unit is not None and unit is None:
            errors.append(TabularError(
                f"column {original!r} (feature {f.name!r}) states no unit; expected it in the node config "
                f"(units = {{ {column} = \"{f.unit}\" }}) or in the header ('{f.name} [{f.unit}]'). The column is not used",
                reason="missing_unit", source=f"{path}#column={original}"))
            continue
        plan.numeric.append((f, column, unit))
        used[column] = f"feature {f.name}" + (f" in {unit}" if unit else "")
    for k in keys:
        out.mappings[f"{tag}: {k}"] = used.get(k, "not used")
        if k not in used:
            out.unused["tabular_column_not_in_study"] += 1
    return plan


def _files(src: TableSource, quarantine: Quarantine) -> Iterator[Path]:
    suffixes = tuple(e.lower() for e in src.extensions)
    yield from input_files([src.path], lambda p: p.name.lower().endswith(suffixes), quarantine, "ehr")


def _chunks(src: TableSource, path: Path) -> Iterator[tuple[int, pd.DataFrame]]:
    sep = r"\s+" if src.delimiter == WHITESPACE else src.delimiter
    first = 1
    try:
        reader = pd.read_csv(path, sep=sep, header=0 if src.header else None,
                             names=list(src.columns) if src.columns else None, dtype=str, keep_default_na=False,
                             na_values=list(src.missing), skipinitialspace=True, chunksize=CHUNK_ROWS,
                             compression="infer", engine="python" if src.delimiter == WHITESPACE else "c")
        for df in reader:
            df.columns = [header_key(str(c)) for c in df.columns]
            yield first, df
            first += len(df)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as e:
        raise TabularError(f"cannot be read past row {first - 1} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                           "check the delimiter, header and columns given for it in the node config",
                           reason="unreadable", source=path) from None


def _header(src: TableSource, path: Path, limits: IngestLimits) -> list[str]:
    try:
        check_header(path, None if src.delimiter == WHITESPACE else src.delimiter, limits)
    except OSError as e:
        raise TabularError(f"cannot be read ({e}); check the path and its permissions", reason="unreadable",
                           source=path) from None
    if not src.header:
        return [header_key(c) for c in src.columns]
    for _, df in _chunks(src.model_copy(update={"columns": ()}), path):
        return list(df.columns)
    return []


def _row(src: TableSource, plan: _Plan, r: dict[str, Any], n: int, path: Path, cohort: CohortLike, deid: Deidentifier,
         index_date: date, unused: Counter) -> tuple[str, float | None, str | None, list[Event], SplitPart | None]:
    source = f"{path}#row={n}"
    mrn = identifier(r.get(src.patient_id.lower())) if src.patient_id else f"{path.name}#row={n}"
    if not mrn:
        raise ValueError(f"has an empty {src.patient_id!r}; expected the patient's MRN")
    index = None
    if cohort.index_from == "column" and cohort.index_column:
        index = day(r.get(cohort.index_column.lower()), cohort.index_column, index_date)
    # the row's values are dated by its date column, else on the patient's index date from this row, else the reference
    when = day(r.get(src.date.lower()), src.date, index_date) if src.date else (index if index is not None else 0)
    if when is None:
        raise ValueError(f"has an empty {src.date!r}; expected the date of the row's values")
    age = None
    if src.age:
        years = number(r.get(src.age.lower()), src.age)
        age = None if years is None else min(years, MAX_AGE)
    elif src.birth_date:
        cell = r.get(src.birth_date.lower())
        year = text(cell)
        birth = date(int(float(year)), 1, 1) if year and len(year) <= 6 else as_date(cell, src.birth_date)
        age = age_years(birth, index_date)
    sex = None
    if src.sex:
        value, ok = _coded(r.get(src.sex.lower()), src.codes.get(src.sex))
        if src.sex in src.codes and value is not None:
            plan.seen[src.sex] += 1
            plan.matched[src.sex] += ok
        sex = gender(value)
    events: list[Event] = []
    for f, column, unit in plan.numeric:
        value = number(r.get(column), column)
        if value is not None:
            events.append((KIND_MEASUREMENT, ((f.system, f.code),), value, unit, when, source))
    for f, column in plan.categorical:
        category, ok = _coded(r.get(column), src.codes.get(column))
        if category is None:
            continue
        if column in src.codes:
            plan.seen[column] += 1
            plan.matched[column] += ok
        category = code_text(category)
        if category not in f.categories:
            unused[f"unknown_category_{f.name}"] += 1
            continue
        events.append((KIND_MEASUREMENT, ((f.system, f.code),), float(f.categories.index(category)), None, when, source))
    if cohort.label_source == "column" and cohort.label_column:
        label = label_rule(r.get(cohort.label_column.lower()), cohort)
        if label is not None:
            events.append((KIND_LABEL, (), label, None, when, source))
    if index is not None:
        events.append((KIND_INDEX, (), 0.0, None, index, source))
    part = None
    if src.split_column:
        part = split_part(r.get(src.split_column), src.split_values or None)
        if part is None and text(r.get(src.split_column)) is not None:
            unused["unknown_split_value"] += 1  # the patient takes the hash split
    return deid.pseudonym(mrn), age, sex, events, part


def read_own_tables(sources: Sequence[TableSource], quarantine: Quarantine, *, deid: Deidentifier, index_date: date,
                    cohort: CohortLike, store: FactStore, limits: IngestLimits = DEFAULT_LIMITS) -> TableRead:
    """Read every table the node config describes into `store`; see the module docstring."""
    out = TableRead()
    features_found: set[str] = set()
    for t, src in enumerate(sources, 1):
        for path in _files(src, quarantine):
            out.files += 1
            tag = f"table {t}"
            errors: list[TabularError] = []
            try:
                columns = _header(src, path, limits)
                plan = _plan(src, columns, cohort, tag, out, errors, path)
                for e in errors:
                    quarantine.add("ehr", e)
                features_found |= {f.name for f, *_ in plan.numeric} | {f.name for f, _ in plan.categorical}
                out.parsed += 1
                for first, df in _chunks(src, path):
                    for i, r in enumerate(df.to_dict("records")):
                        n = first + i
                        try:
                            pid, age, sex, events, part = _row(src, plan, r, n, path, cohort, deid, index_date, out.unused)
                        except (InputError, ValueError, TypeError) as e:
                            quarantine.add("ehr", TabularError(f"{e}; fix the row at the source or name the token "
                                                               "among the table's missing values", reason="bad_row",
                                                               source=f"{path}#row={n}"))
                            continue
                        store.add_patient(pid, age, sex)
                        store.add_events((pid, None, e) for e in events)
                        if part is not None:
                            out.splits[pid] = part
                        out.records += 1
            except (TabularError, *EXHAUSTION) as e:  # one file never aborts the run
                quarantine.add("ehr", refusal(e, path))
                continue
            for column, seen in sorted(plan.seen.items()):
                if plan.matched[column] == 0:
                    out.warnings.append(f"{tag}: column {column!r}: none of its {seen} values is in its code map "
                                        f"{sorted(src.codes[column])}; the column maps to nothing. Fix codes.{column}")
    if sources:
        for f in cohort.features:
            if f.system != DEMOGRAPHIC_SYSTEM and f.name not in features_found:
                out.warnings.append(f"study feature {f.name!r} is in no table; name the column {f.name!r} or map it "
                                    f"with rename = {{ <column> = \"{f.name}\" }}")
    for w in out.warnings:
        log.warning("tables: %s", w)
    log.info("own tables: %d files, %d rows used", out.files, out.records)
    return out
