"""Tabular extracts in the silo's cache: a re-run parses only new or changed tables and gives the same dataset."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest
import torch

from coordinator.api.study import CohortSpec
from pipelines.cache import CACHE_FILE, IngestCache, cohort_hash
from pipelines.deid import Deidentifier
from pipelines.ehr.factstore import FactStore
from pipelines.ingest import IngestResult, ingest_silo
from pipelines.quarantine import Quarantine
from pipelines.ehr.tabular import read_tabular

from .test_tabular import FEATURES, ICD10CM, KEY, _csv, _omop

COHORT = CohortSpec(features=FEATURES, label_system=ICD10CM, label_code="I50.9")


def _ingest(tabular: list[Path], cache: Path) -> IngestResult:
    return ingest_silo(fhir=[], tabular=tabular, dicom=[], wearables=[], cohort=COHORT, pseudonym_key=KEY, cache_dir=cache)


def _same(a: IngestResult, b: IngestResult, more_rows: int = 0) -> None:
    assert a.dataset.pseudonyms == b.dataset.pseudonyms
    for field in ("ehr", "mask", "label"):
        assert torch.equal(getattr(a.dataset, field), getattr(b.dataset, field)), field
    assert sorted((e.source, e.reason) for e in a.quarantine.entries) == sorted((e.source, e.reason) for e in b.quarantine.entries)
    ra, rb = a.report.modalities["ehr"], b.report.modalities["ehr"]
    assert (ra.records + more_rows, ra.unused, ra.sources, a.report.patients) == (rb.records, rb.unused, rb.sources,
                                                                               b.report.patients)


def test_unchanged_tables_come_from_the_cache_changed_ones_are_parsed(tmp_path: Path):
    omop = _omop(tmp_path / "omop")  # measurement.csv has refused rows: re-read every run, like a FHIR file
    (tmp_path / "extra").mkdir()
    long_csv = _csv(tmp_path / "extra" / "events.csv", "mrn,system,code,value,unit,date\nMRN-C,LOINC,2345-7,99,mg/dL,2023-12-20\n")
    cache = tmp_path / "cache"
    first = _ingest([omop, long_csv], cache)
    ehr = first.report.modalities["ehr"]
    assert (ehr.inputs_read, ehr.parsed, ehr.cached) == (7, 7, 0) and len(first.quarantine) == 3

    again = _ingest([omop, long_csv], cache)
    ehr = again.report.modalities["ehr"]
    assert (ehr.parsed, ehr.cached) == (1, 6)  # only measurement.csv, with its quarantined rows, is read again
    _same(first, again)

    # a changed extract is parsed again and its new content used; the other tables stay cached
    long_csv.write_text("mrn,system,code,value,unit,date\nMRN-C,LOINC,2345-7,180,mg/dL,2023-12-20\n")
    changed = _ingest([omop, long_csv], cache)
    assert (changed.report.modalities["ehr"].parsed, changed.report.modalities["ehr"].cached) == (2, 5)
    i = changed.dataset.pseudonyms.index(Deidentifier(KEY).pseudonym("MRN-C"))
    assert not torch.equal(changed.dataset.ehr[i], first.dataset.ehr[i])  # glucose mean moved with the new value

    # a changed CONCEPT table changes what every clinical table means: it and the 4 clinical tables are parsed
    # again; PERSON and the long extract are not
    vocab = omop / "vocab.csv"
    vocab.write_text(vocab.read_text() + "9999001,Local code,Measurement,LOINC,Lab Test,S,0000-0\n")
    remapped = _ingest([omop, long_csv], cache)
    assert (remapped.report.modalities["ehr"].parsed, remapped.report.modalities["ehr"].cached) == (5, 2)
    _same(changed, remapped, more_rows=1)  # the new CONCEPT row; no table uses it


def test_chunks_replay_in_order_and_a_lost_chunk_entry_is_parsed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pipelines.ehr.tables

    monkeypatch.setattr(pipelines.ehr.tables, "CHUNK_ROWS", 3)
    lines = ["mrn,system,code,value,unit,date,category"] + [
        f"MRN-{i % 4},LOINC,2345-7,{90 + i},mg/dL,2023-12-{1 + i:02d}," for i in range(10)]
    lines.append("MRN-1,SNOMED,84114007,,,2024-02-01,condition")  # the 11th row, in the 4th chunk: a diagnosis
    table = _csv(tmp_path / "long.csv", "\n".join(lines) + "\n")
    people = _csv(tmp_path / "people.csv", "mrn,birth_date,sex\n" + "".join(f"MRN-{i},1960-0{i + 1}-01,F\n" for i in range(4)))
    deid, cache = Deidentifier(KEY), tmp_path / "cache"

    def read(cached: bool) -> tuple[list, int, int]:
        q = Quarantine()
        with FactStore() as store:
            got = read_tabular([table, people], q, deid=deid, index_date=date(2024, 1, 1), features=FEATURES,
                               store=store, cache=_cache(cache) if cached else None)
            store.resolve(q)
            facts = [store.patient(deid.pseudonym(f"MRN-{i}")) for i in range(4)]
        assert len(q) == 0 and got.records == 15
        return facts, got.parsed, got.cached

    plain, _, _ = read(cached=False)
    assert [len(p.measurements) for p in plain] == [3, 4, 2, 2] and plain[1].diagnoses[0].source == f"{table}#row=11"
    assert read(cached=True)[1:] == (2, 0)
    assert read(cached=True) == (plain, 0, 2)  # same facts, same order, same sources
    with sqlite3.connect(cache / CACHE_FILE) as db:
        entries = [k for (k,) in db.execute("SELECT key FROM entries WHERE kind = 'tabular-chunk'")]
        assert len(entries) == 6  # 3 rows a chunk: 4 chunks of long.csv, 2 of people.csv
        third = next(k for k in entries if k.endswith(".2"))
        db.execute("DELETE FROM entries WHERE kind = 'tabular-chunk' AND key = ?", (third,))
    assert read(cached=True) == (plain, 1, 1)  # chunks 1-2 of long.csv replayed, 3-4 parsed again
    with sqlite3.connect(cache / CACHE_FILE) as db:  # and the lost entry is written again
        assert db.execute("SELECT count(*) FROM entries WHERE key = ?", (third,)).fetchone() == (1,)
    assert read(cached=True) == (plain, 0, 2)


def _cache(root: Path) -> IngestCache:
    return IngestCache(root, cohort_hash(COHORT, date(2024, 1, 1), Deidentifier(KEY).fingerprint))
