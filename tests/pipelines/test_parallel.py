"""Ingestion on every core: the facts, dataset, report and quarantine of a parallel run equal the sequential ones."""

from __future__ import annotations

import json

import torch

from coordinator.api.study import CohortSpec
from pipelines.ingest import ingest_silo
from pipelines.parallel import SEQUENTIAL, Workers, map_ordered
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
