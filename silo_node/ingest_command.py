"""`fedcare silo ingest`: run one silo's ingestion outside a study and report what it found.

The hospital's IT points it at FHIR, DICOM (files or a DICOMweb PACS), wearable and tabular
inputs; it writes the de-identified cache under `out/cache`, the quarantine (which names
local files, so it stays here) to `out/quarantine.jsonl`, and the counts-only report as JSON
to `report` (default `out/ingest-report.json`). `render_table` shows the report for people.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from compliance.keys import write_secret_file
from pipelines.cohort import CohortLike
from pipelines.ehr.table_source import TableSource
from pipelines.limits import DEFAULT_LIMITS, IngestLimits
from pipelines.ingest import IngestReport, ingest_silo

log = logging.getLogger(__name__)
KEY_FILE = "pseudonym.key"


def load_or_create_key(path: Path) -> bytes:
    """The silo-local pseudonym secret (32 random bytes, mode 0600), created on first use."""
    if not path.exists():
        write_secret_file(path, secrets.token_bytes(32), replace=False)  # 0600 from creation, atomic
    return path.read_bytes()


def run_ingest(*, fhir: Sequence[Path], dicom: Sequence[Path], dicomweb: Sequence[str], wearables: Sequence[Path],
               tabular: Sequence[Path], out: Path, report: Path | None, cohort: CohortLike,
               key_file: Path | None = None, tables: Sequence[TableSource] = (),
               limits: IngestLimits | None = None) -> IngestReport:
    """Ingest, write cache/quarantine/report under `out`, return the report. `key_file` defaults to `out/pseudonym.key`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ingest_silo(fhir=list(fhir), tabular=list(tabular), dicom=list(dicom), wearables=list(wearables),
                         dicomweb=list(dicomweb), tables=list(tables), limits=limits or DEFAULT_LIMITS,
                         cohort=cohort, pseudonym_key=load_or_create_key(Path(key_file) if key_file else out / KEY_FILE),
                         cache_dir=out / "cache")
    result.quarantine.write_jsonl(out / "quarantine.jsonl")
    target = Path(report) if report is not None else out / "ingest-report.json"
    target.write_text(json.dumps(result.report.model_dump(mode="json"), indent=2), encoding="utf-8")
    log.info("ingestion report written to %s", target)
    return result.report


def render_table(report: IngestReport) -> Table:
    """Per modality: inputs read (parsed / from cache), records, patients, samples, quarantined by reason."""
    table = Table(title=f"Ingestion at index date {report.index_date}: {report.samples} samples, "
                        f"{report.positives} positive, {report.quarantined_total} quarantined")
    for column in ("modality", "inputs read", "parsed", "cached", "records", "patients", "samples", "quarantined", "unused"):
        table.add_column(column, justify="left" if column in ("modality", "quarantined", "unused") else "right")
    for name, m in report.modalities.items():
        table.add_row(name, str(m.inputs_read), str(m.parsed), str(m.cached), str(m.records), str(m.patients), str(m.samples),
                      ", ".join(f"{k}: {v}" for k, v in m.quarantined.items()) or "-",
                      ", ".join(f"{k}: {v}" for k, v in m.unused.items()) or "-")
    table.add_section()
    linked = ", ".join(f"{k}: {v}" for k, v in report.linked.items()) or "-"
    if report.image_linked_by.get("imaging_study"):
        linked += f" (images linked by ImagingStudy: {report.image_linked_by['imaging_study']})"
    excluded = ", ".join(f"{k}: {v}" for k, v in report.excluded.items()) or "-"
    table.add_row("linked", linked, "", "", "", str(report.patients), str(report.samples), f"excluded {excluded}", "")
    ehr = report.modalities.get("ehr")
    if ehr is not None and (ehr.mappings or ehr.warnings):
        table.add_section()
        for column, meaning in ehr.mappings.items():
            table.add_row("column", escape(column), "", "", "", "", "", escape(meaning), "")
        for warning in ehr.warnings:
            table.add_row("warning", "", "", "", "", "", "", escape(warning), "")
    return table
