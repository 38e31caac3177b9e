"""Tabular EHR extracts (CSV, Parquet; generic long/wide or OMOP CDM) -> the silo's `FactStore`.

Files and folders are scanned for `*.csv`, `*.tsv`, `*.parquet`; each file's layout is taken
from its header (`pipelines.tables.layout_of`). OMOP CONCEPT tables are read first, so that
every clinical table can map its concept ids; the other files follow in path order, chunk by
chunk, and their de-identified facts go straight to the `FactStore` (nothing is held per
patient in memory). A file that cannot be read or recognised, and every row that cannot be
used, is quarantined under "ehr" with a reason naming `file` or `file#row=N`; the run goes on.
Row mapping: `pipelines.extracts` (generic) and `pipelines.omop` (OMOP CDM v5.4).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from .cohort import FeatureLike
from .deid import Deidentifier
from .errors import InputError, TabularError
from .extracts import LongExtract, WideExtract, rows
from .factstore import FactStore
from .fhir import iter_files
from .omop import ClinicalRows, check_vocabulary, is_clinical, person_row, read_concepts
from .quarantine import Quarantine
from .tables import SUFFIXES, chunks, columns_of, layout_of

log = logging.getLogger(__name__)


@dataclass
class TabularRead:
    files: int = 0
    records: int = 0  # rows used
    layouts: Counter = field(default_factory=Counter)  # files by layout
    unused: Counter = field(default_factory=Counter)


def read_tabular(paths: Sequence[Path], quarantine: Quarantine, *, deid: Deidentifier, index_date: date,
                 features: Sequence[FeatureLike], store: FactStore) -> TabularRead:
    """Read every table under `paths` into `store`; see the module docstring."""
    out = TabularRead()
    found: list[tuple[Path, list[str], str]] = []
    for path in iter_files(paths, SUFFIXES):
        out.files += 1
        try:
            columns = columns_of(path)
        except TabularError as e:
            quarantine.add("ehr", e)
            continue
        layout = layout_of(columns)
        if layout == "unknown":
            quarantine.add("ehr", TabularError(
                f"has columns {columns[:12]} and is no known layout; expected an OMOP CDM table (person, measurement, "
                "observation, condition_occurrence, drug_exposure, concept) or an extract with an 'mrn' column "
                "(plus 'code' for one row per event)", reason="unknown_layout", source=path))
            continue
        out.layouts[layout] += 1
        found.append((path, columns, layout))
    found.sort(key=lambda f: f[2] != "concept")  # stable: CONCEPT first, then path order
    for path, columns, layout in found:
        try:
            _read_file(path, columns, layout, quarantine, deid=deid, index_date=index_date, features=features,
                       store=store, out=out)
        except TabularError as e:  # the file (or what is left of it) cannot be read; rows before stay used
            quarantine.add("ehr", e)
    log.info("tabular: %d files %s, %d rows used", out.files, dict(out.layouts), out.records)
    return out


def _read_file(path: Path, columns: list[str], layout: str, quarantine: Quarantine, *, deid: Deidentifier,
               index_date: date, features: Sequence[FeatureLike], store: FactStore, out: TabularRead) -> None:
    if is_clinical(layout):
        check_vocabulary(path, store)
    errors: list[TabularError] = []
    extract = None
    if layout == "long":
        extract = LongExtract(path, columns, index_date, deid)
    elif layout == "wide":
        extract = WideExtract(path, columns, features, index_date, deid, errors, out.unused)
    for e in errors:
        quarantine.add("ehr", e)
    for first, df in chunks(path):
        if layout == "concept":
            out.records += read_concepts(df, store)
            continue
        clinical = ClinicalRows(layout, df, store) if is_clinical(layout) else None
        events, refs = [], []
        for n, r in rows(df, first):
            source = f"{path}#row={n}"
            try:
                if layout == "person":
                    pid, age, gender, ref = person_row(r, deid, index_date)
                    store.add_patient(pid, age, gender, [ref])
                elif clinical is not None:
                    got = clinical.row(r, source, deid, index_date, out.unused)
                    if got is None:
                        continue
                    refs.append(got)
                else:
                    assert extract is not None
                    pid, evs, demographics = extract.row(r, n)
                    if demographics is not None:
                        store.add_patient(pid, *demographics)
                    events.extend((pid, None, e) for e in evs)
            except InputError as e:
                quarantine.add("ehr", TabularError(str(e).removeprefix(f"{source}: "), reason=e.reason, source=source))
                continue
            except (ValueError, TypeError) as e:
                quarantine.add("ehr", TabularError(f"{e}; fix the row at the source", reason="bad_row", source=source))
                continue
            out.records += 1
        store.add_events(events)
        store.add_events((None, ref, e) for ref, e in refs)
