"""Tabular EHR extracts (CSV, Parquet; generic long/wide or OMOP CDM) -> the silo's `FactStore`.

Files and folders are scanned for `*.csv`, `*.tsv`, `*.parquet`; each file's layout is taken
from its header (`pipelines.ehr.tables.layout_of`). OMOP CONCEPT tables are read first, so that
every clinical table can map its concept ids; the other files follow in path order, chunk by
chunk, and their de-identified facts go straight to the `FactStore` (nothing is held per
patient in memory). A file that cannot be read or recognised, and every row that cannot be
used, is quarantined under "ehr" with a reason naming `file` or `file#row=N`; the run goes on.
Row mapping: `pipelines.ehr.extracts` (generic) and `pipelines.ehr.omop` (OMOP CDM v5.4).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from ..cache import IngestCache
from ..cohort import FeatureLike
from ..deid import Deidentifier
from ..errors import EXHAUSTION, InputError, TabularError, refusal
from ..limits import DEFAULT_LIMITS, IngestLimits
from ..inputs import input_files
from .extracts import LongExtract, WideExtract, rows
from .factstore import FactStore
from .omop import ClinicalRows, check_vocabulary, concept_rows, is_clinical, person_row
from ..quarantine import Quarantine
from . import tables
from ..cache import file_hash
from .tablefacts import ChunkFacts, TableCache, table_key
from .tables import SUFFIXES, chunks, columns_of, layout_of

log = logging.getLogger(__name__)


@dataclass
class TabularRead:
    files: int = 0
    records: int = 0  # rows used
    parsed: int = 0  # files parsed in this run
    cached: int = 0  # files replayed from the silo's cache
    layouts: Counter = field(default_factory=Counter)  # files by layout
    unused: Counter = field(default_factory=Counter)


def read_tabular(paths: Sequence[Path], quarantine: Quarantine, *, deid: Deidentifier, index_date: date,
                 features: Sequence[FeatureLike], store: FactStore, cache: IngestCache | None = None,
                 limits: IngestLimits = DEFAULT_LIMITS) -> TabularRead:
    """Read every table under `paths` into `store`; see the module docstring."""
    cache = cache or IngestCache(None, "")
    out = TabularRead()
    found: list[tuple[Path, list[str], str, str]] = []
    for path in input_files(paths, lambda p: p.suffix.lower() in SUFFIXES, quarantine, "ehr"):
        out.files += 1
        try:
            columns = columns_of(path, limits)
            digest = file_hash(path)
        except TabularError as e:
            quarantine.add("ehr", e)
            continue
        except OSError as e:
            quarantine.add("ehr", TabularError(f"cannot be read ({e}); check the path and its permissions",
                                               reason="unreadable", source=path))
            continue
        layout = layout_of(columns)
        if layout == "unknown":
            quarantine.add("ehr", TabularError(
                f"has columns {columns[:12]} and is no known layout; expected an OMOP CDM table (person, measurement, "
                "observation, condition_occurrence, drug_exposure, concept) or an extract with an 'mrn' column "
                "(plus 'code' for one row per event)", reason="unknown_layout", source=path))
            continue
        out.layouts[layout] += 1
        found.append((path, columns, layout, digest))
    found.sort(key=lambda f: f[2] != "concept")  # stable: CONCEPT first, then path order
    vocabulary = [digest for _, _, layout, digest in found if layout == "concept"]
    for path, columns, layout, digest in found:
        key = table_key(digest, tables.CHUNK_ROWS, vocabulary if is_clinical(layout) else ())
        try:
            _read_file(path, columns, layout, quarantine, deid=deid, index_date=index_date, features=features,
                       store=store, out=out, table_cache=TableCache(cache, key, path))
        except (TabularError, *EXHAUSTION) as e:  # the file (or what is left of it) cannot be read; rows before stay used
            quarantine.add("ehr", refusal(e, path))
    log.info("tabular: %d files %s (%d from cache), %d rows used", out.files, dict(out.layouts), out.cached, out.records)
    return out


def _read_file(path: Path, columns: list[str], layout: str, quarantine: Quarantine, *, deid: Deidentifier,
               index_date: date, features: Sequence[FeatureLike], store: FactStore, out: TabularRead,
               table_cache: TableCache) -> None:
    if is_clinical(layout):
        check_vocabulary(path, store)
    manifest = table_cache.manifest()
    if manifest is not None:
        for facts in table_cache.replay(int(manifest["chunks"])):
            facts.apply(store)
            out.records += facts.records
            out.unused.update(facts.unused)
        if table_cache.chunks == int(manifest["chunks"]):
            out.unused.update(manifest["unused"])
            out.cached += 1
            return
    out.parsed += 1
    errors: list[TabularError] = []
    file_unused: Counter = Counter()
    extract = None
    if layout == "long":
        extract = LongExtract(path, columns, index_date, deid)
    elif layout == "wide":
        extract = WideExtract(path, columns, features, index_date, deid, errors, file_unused)
    out.unused.update(file_unused)
    for e in errors:
        quarantine.add("ehr", e)
    table_cache.clean = not errors
    for i, (first, df) in enumerate(chunks(path)):
        if i < table_cache.chunks:  # replayed from the cache before an entry was found missing
            continue
        facts, refused = _parse_chunk(path, layout, first, df, quarantine, deid=deid, index_date=index_date,
                                      store=store, extract=extract)
        facts.apply(store)
        out.records += facts.records
        out.unused.update(facts.unused)
        table_cache.put_chunk(facts, refused)
    table_cache.finish(file_unused)


def _parse_chunk(path: Path, layout: str, first: int, df: pd.DataFrame, quarantine: Quarantine, *, deid: Deidentifier,
                 index_date: date, store: FactStore, extract: LongExtract | WideExtract | None) -> tuple[ChunkFacts, bool]:
    """One chunk's facts, and whether a row of it was refused (quarantined)."""
    facts = ChunkFacts()
    if layout == "concept":
        facts.concepts = concept_rows(df)
        facts.records = len(facts.concepts)
        return facts, False
    clinical = ClinicalRows(layout, df, store) if is_clinical(layout) else None
    refused = False
    for n, r in rows(df, first):
        source = f"{path}#row={n}"
        try:
            if layout == "person":
                pid, age, gender, ref = person_row(r, deid, index_date)
                facts.patients.append((pid, age, gender, [ref]))
            elif clinical is not None:
                got = clinical.row(r, source, deid, index_date, facts.unused)
                if got is None:
                    continue
                facts.events.append((None, got[0], got[1]))
            else:
                assert extract is not None
                pid, evs, demographics = extract.row(r, n)
                if demographics is not None:
                    facts.patients.append((pid, *demographics, []))
                facts.events.extend((pid, None, e) for e in evs)
        except InputError as e:
            quarantine.add("ehr", TabularError(str(e).removeprefix(f"{source}: "), reason=e.reason, source=source))
            refused = True
            continue
        except (ValueError, TypeError) as e:
            quarantine.add("ehr", TabularError(f"{e}; fix the row at the source", reason="bad_row", source=source))
            refused = True
            continue
        facts.records += 1
    return facts, refused
