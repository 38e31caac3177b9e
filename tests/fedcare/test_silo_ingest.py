"""`fedcare silo ingest --tabular` and `[data] tabular` in node.toml reach the tabular reader."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedcare.cli import app

PATIENTS = "mrn,birth_date,sex,glucose [mmol/L]\nMRN-1,1950-01-01,F,6.1\nMRN-2,1960-02-02,M,\n"
EVENTS = "mrn,system,code,value,unit,date\nMRN-1,LOINC,2345-7,99,mg/dL,2023-10-01\nMRN-1,LOINC,2345-7,oops,mg/dL,2023-10-02\n"


def _write(root: Path) -> Path:
    (root / "warehouse").mkdir(parents=True)
    (root / "warehouse" / "patients.csv").write_text(PATIENTS)
    (root / "events.csv").write_text(EVENTS)
    return root


def test_tabular_from_the_command_line_and_from_node_toml(tmp_path: Path):
    root = _write(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["silo", "ingest", "--tabular", str(root / "warehouse"), "--tabular", str(root / "events.csv"),
                               "--out", str(root / "out")])
    assert done.exit_code == 0, done.output
    report = json.loads((root / "out" / "ingest-report.json").read_text())
    assert report["patients"] == report["samples"] == 2
    assert report["modalities"]["ehr"]["sources"] == {"tabular_long": 1, "tabular_wide": 1}
    assert report["modalities"]["ehr"]["quarantined"] == {"bad_row": 1}
    entries = [json.loads(line) for line in (root / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [e["source"] for e in entries] == [f"{root / 'events.csv'}#row=2"]

    (root / "node.toml").write_text('name = "st-mary"\ncoordinator = "127.0.0.1:1"\nstate_dir = "state"\ninsecure = true\n'
                                    '[data]\ndataset = "st-mary-ehr"\ntabular = ["warehouse", "events.csv"]\n')
    done = runner.invoke(app, ["silo", "ingest", "--config", str(root / "node.toml"), "--out", str(root / "out2")])
    assert done.exit_code == 0, done.output
    again = json.loads((root / "out2" / "ingest-report.json").read_text())
    assert again["modalities"]["ehr"] == report["modalities"]["ehr"]


def test_the_ingest_table_reads_at_80_columns(tmp_path: Path):
    """Every header and count whole, every line within 80 columns, long reasons wrapped, not cut."""
    import io

    from rich.console import Console

    from pipelines.ingest import IngestReport
    from silo_node.ingest_command import render_table

    root = _write(tmp_path)
    done = CliRunner().invoke(app, ["silo", "ingest", "--tabular", str(root / "warehouse"), "--tabular",
                                    str(root / "events.csv"), "--out", str(root / "out")])
    assert done.exit_code == 0, done.output
    report = IngestReport.model_validate_json((root / "out" / "ingest-report.json").read_text())
    report.excluded = {"below_min_age_or_unknown_age": 12, "prevalent_case_before_index_date": 3,
                       "no_index_date_first_event": 7}
    screen = io.StringIO()
    Console(file=screen, width=80, color_system=None).print(render_table(report))
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = screen.getvalue()
    for header in ("modality", "inputs", "parsed", "cached", "records", "patients", "samples"):
        assert header in text
    assert "bad_row: 1" in text
    flat = "".join(line.strip() for line in lines)
    assert "no_index_date_first_event: 7" in flat.replace(" ", "") or "no_index_date_first_event:7" in flat.replace(" ", "")
