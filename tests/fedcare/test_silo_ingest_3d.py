"""`fedcare silo ingest --spec` with a 3D study: the cohort's image_dims/image_depth reach the DICOM reader."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from fedcare.cli import app
from pipelines.cache import CACHE_FILE

from ..pipelines.dicom_series import write_series
from ..pipelines.fixtures import patient, write_bundle

SPEC_3D = 'name = "ct-3d"\nmodalities = ["ehr", "image"]\n[cohort]\nimage_size = 16\nimage_dims = 3\nimage_depth = 8\n'


def test_silo_ingest_builds_volumes_for_a_3d_study_spec(tmp_path: Path):
    (tmp_path / "fhir").mkdir()
    write_bundle(tmp_path / "fhir" / "b.json", [patient("a", "MRN-A"), patient("b", "MRN-B")])
    write_series(tmp_path / "dicom" / "a", "MRN-A", 6)
    write_series(tmp_path / "dicom" / "b", "MRN-B", 6, skip=(2,))  # fine as a slice, not as a volume
    (tmp_path / "spec.toml").write_text(SPEC_3D)
    runner = CliRunner()
    args = ["silo", "ingest", "--fhir", str(tmp_path / "fhir"), "--dicom", str(tmp_path / "dicom")]
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "out3d"), "--spec", str(tmp_path / "spec.toml")])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out3d" / "ingest-report.json").read_text())
    assert report["modalities"]["image"]["samples"] == 1
    assert report["modalities"]["image"]["quarantined"] == {"inconsistent_series_geometry": 1}
    (entry,) = [json.loads(line) for line in (tmp_path / "out3d" / "quarantine.jsonl").read_text().splitlines()]
    assert entry["source"].startswith("series 2.25.") and "slice gaps" in entry["message"]
    with sqlite3.connect(tmp_path / "out3d" / "cache" / CACHE_FILE) as db:
        (layout,) = db.execute("SELECT layout FROM entries WHERE kind = 'volume'").fetchone()
    assert json.loads(layout) == [["image", "<f4", [1, 8, 16, 16]]]

    done = runner.invoke(app, [*args, "--out", str(tmp_path / "out2d")])  # the default study: 2D, both patients
    assert done.exit_code == 0, done.output
    flat = json.loads((tmp_path / "out2d" / "ingest-report.json").read_text())
    assert flat["modalities"]["image"]["samples"] == 2 and flat["modalities"]["image"]["quarantined"] == {}
