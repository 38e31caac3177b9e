"""Bulk Data NDJSON cut into chunks of lines parsed by workers (#20 item 3; pipelines/ehr/ndjson.py): the facts,
refused records, refused files (named by line) and counts of one sequential read."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from coordinator.api.study import CohortSpec
from pipelines.ehr.ndjson import split_ndjson
from pipelines.ingest import ingest_silo
from pipelines.parallel import SEQUENTIAL, Workers
from pipelines.synthetic import HospitalFiles

KEY = b"fedcare-test-pseudonym-key-32byt"
CHUNK = 4096  # bytes: a dozen resources a chunk


def _bulk_export(hospital: HospitalFiles, out: Path) -> dict[str, Path]:
    """The hospital's bundles as a Bulk Data export: one NDJSON file per resource type, references as Type/id."""
    files: dict[str, list[str]] = {}
    for bundle in sorted(hospital.fhir_dir.glob("*.json")):
        for entry in json.loads(bundle.read_text())["entry"]:
            res = entry["resource"]
            subject = res.get("subject", {})
            if str(subject.get("reference", "")).startswith("urn:uuid:"):
                subject["reference"] = "Patient/" + subject["reference"].removeprefix("urn:uuid:")
            files.setdefault(res["resourceType"], []).append(json.dumps(res))
    out.mkdir()
    paths = {}
    for rtype, lines in files.items():
        paths[rtype] = out / f"{rtype}.ndjson"
        paths[rtype].write_text("\n".join(lines) + "\n")
    return paths


def test_chunked_ndjson_equals_one_sequential_read(small_hospital: HospitalFiles, tmp_path: Path) -> None:
    paths = _bulk_export(small_hospital, tmp_path / "bulk")
    obs = paths["Observation"].read_text().splitlines()
    bad = json.loads(obs[40])
    bad["status"] = 7  # a record refused, the rest of the file used
    obs[40] = json.dumps(bad)
    obs.insert(60, "")  # a blank line is skipped, and still counted in line numbers
    paths["Observation"].write_text("\n".join(obs))  # no newline after the last line
    conditions = paths["Condition"].read_text().splitlines()
    bad_line = len(conditions) - 2  # 1-based: three lines before the end
    conditions.insert(bad_line - 1, "{ not json")  # refuses the whole file, in its last chunk
    paths["Condition"].write_text("\n".join(conditions) + "\n")
    assert len(split_ndjson(paths["Observation"], CHUNK)) >= 5 and len(split_ndjson(paths["Condition"], CHUNK)) >= 2
    runs = {}
    for name, workers in (("sequential", SEQUENTIAL), ("chunked", Workers(processes=2, min_inputs=1,
                                                                            ndjson_chunk_bytes=CHUNK))):
        runs[name] = ingest_silo(fhir=[tmp_path / "bulk"], dicom=[], wearables=[], cohort=CohortSpec(),
                                 pseudonym_key=KEY, workers=workers)
    seq, par = runs["sequential"], runs["chunked"]
    assert seq.report.modalities["ehr"].records > 100 and seq.report.samples >= 10
    assert par.report.model_dump() == seq.report.model_dump()
    assert par.quarantine.entries == seq.quarantine.entries
    refused = {e.reason: e.message for e in seq.quarantine.entries}
    assert f"line {bad_line} is not valid JSON" in refused["bad_json"] and "invalid_fhir" in refused
    assert par.dataset.pseudonyms == seq.dataset.pseudonyms
    for field in ("ehr", "label", "mask"):
        assert torch.equal(getattr(par.dataset, field), getattr(seq.dataset, field))
