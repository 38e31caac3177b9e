"""Ingestion on every core: the facts, dataset, report and quarantine of a parallel run equal the sequential ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from coordinator.api.study import CohortSpec
from pipelines.cache import IngestCache
from pipelines.cohort import INDEX_DATE
from pipelines.deid import Deidentifier
from pipelines.imaging.dicom import file_inputs
from pipelines.imaging.images import read_images
from pipelines.ingest import ingest_silo
from pipelines.parallel import SEQUENTIAL, Workers, map_ordered
from pipelines.quarantine import Quarantine
from pipelines.synthetic import HospitalFiles

KEY = b"fedcare-test-pseudonym-key-32byt"


def _square(x: int) -> int:
    return x * x


def test_map_ordered_keeps_the_order_of_the_inputs() -> None:
    assert list(map_ordered(_square, range(50), Workers(processes=2, min_inputs=1))) == [x * x for x in range(50)]


def test_parallel_ingest_equals_sequential(small_hospital: HospitalFiles) -> None:
    files = sorted(small_hospital.fhir_dir.glob("*.json"))
    files[0].write_text("{ not json")  # a file refused as a whole, in a worker
    bundle = json.loads(files[1].read_text())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["gender"] = 42  # a record refused, the rest of the file used
    files[1].write_text(json.dumps(bundle))
    runs = {}
    for name, workers in (("sequential", SEQUENTIAL), ("parallel", Workers(processes=2, min_inputs=1))):
        runs[name] = ingest_silo(fhir=[small_hospital.fhir_dir], dicom=[small_hospital.dicom_dir],
                                 wearables=[small_hospital.wearables_dir], cohort=CohortSpec(), pseudonym_key=KEY,
                                 workers=workers)
    seq, par = runs["sequential"], runs["parallel"]
    assert par.report.model_dump() == seq.report.model_dump()
    assert par.quarantine.entries == seq.quarantine.entries
    assert {e.reason for e in seq.quarantine.entries} >= {"bad_json", "invalid_fhir"}
    assert par.dataset.pseudonyms == seq.dataset.pseudonyms
    for field in ("ehr", "label", "mask"):
        assert torch.equal(getattr(par.dataset, field), getattr(seq.dataset, field))


def test_parallel_dicom_equals_sequential_on_a_hospital_with_broken_files(small_hospital: HospitalFiles) -> None:
    """DICOM headers and chosen slices parsed by workers (pipelines.imaging.instances): same images, report, refusals."""
    instances = sorted(p for p in small_hospital.dicom_dir.rglob("*") if p.is_file())
    instances[0].write_bytes(instances[0].read_bytes()[:-100])  # pixel data cut short: refused in a worker
    (small_hospital.dicom_dir / "notes.txt").write_text("not DICOM")
    runs = {}
    for name, workers in (("sequential", SEQUENTIAL), ("parallel", Workers(processes=2, min_inputs=1))):
        runs[name] = ingest_silo(fhir=[small_hospital.fhir_dir], dicom=[small_hospital.dicom_dir], wearables=[],
                                 cohort=CohortSpec(), pseudonym_key=KEY, workers=workers)
    seq, par = runs["sequential"], runs["parallel"]
    assert seq.report.modalities["image"].records >= 10 and seq.report.modalities["image"].patients >= 10
    assert par.report.model_dump() == seq.report.model_dump()
    assert par.quarantine.entries == seq.quarantine.entries
    assert {e.reason for e in seq.quarantine.entries if e.modality == "image"} >= {"not_dicom", "truncated"}
    assert torch.equal(par.dataset.image, seq.dataset.image) and torch.equal(par.dataset.mask, seq.dataset.mask)


def test_parallel_dicom_equals_sequential_on_pydicoms_test_files(tmp_path: Path) -> None:
    """pydicom's packaged test files (every transfer syntax it ships, damaged and non-image files among them)."""
    import pydicom

    for f in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*"):
        if f.is_file():
            shutil.copy(f, tmp_path / f"{len(list(tmp_path.iterdir())):03d}-{f.name}")
    got = {}
    for name, workers in (("sequential", SEQUENTIAL), ("parallel", Workers(processes=2, min_inputs=1))):
        quarantine = Quarantine()
        chosen, stats = read_images(file_inputs([tmp_path], quarantine), deid=Deidentifier(KEY), index_date=INDEX_DATE,
                                    image_size=32, cache=IngestCache(None, ""), quarantine=quarantine, workers=workers)
        got[name] = (chosen, stats, quarantine.entries)
    (seq, seq_stats, seq_refused), (par, par_stats, par_refused) = got["sequential"], got["parallel"]
    assert len(seq) >= 10 and seq_stats["parsed"] >= 50 and len(seq_refused) >= 50  # 13, 78 and 98 with pydicom 3.0
    assert "undecodable" in {e.reason for e in seq_refused}  # refused while decoding a chosen slice, in a worker
    assert par_stats == seq_stats and par_refused == seq_refused and par.keys() == seq.keys()
    for pid, image in seq.items():
        assert np.array_equal(par[pid].image, image.image) and par[pid].source == image.source
