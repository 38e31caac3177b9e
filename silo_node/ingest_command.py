"""`fedcare silo ingest`: run one silo's ingestion outside a study and report what it found.

The hospital's IT points it at FHIR, DICOM (files or a DICOMweb PACS), wearable and tabular
inputs; it writes the de-identified cache under `out/cache`, the quarantine (which names
local files, so it stays here) to `out/quarantine.jsonl`, and the counts-only report as JSON
to `report` (default `out/ingest-report.json`). `render_table` shows the report for people.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from pipelines.cohort import CohortLike
from pipelines.ehr.fhir_fields import FhirValidation
from pipelines.ehr.table_source import TableSource
from pipelines.limits import DEFAULT_LIMITS, IngestLimits
from pipelines.ingest import IngestReport, ingest_silo
from pipelines.wearables.mapping import WearableMapping
from pipelines.splits import NO_PART
from silo_node.pseudonym_key import KEY_FILE, load_or_create_key

log = logging.getLogger(__name__)


def run_ingest(*, fhir: Sequence[Path], dicom: Sequence[Path], dicomweb: Sequence[str], wearables: Sequence[Path],
               tabular: Sequence[Path], out: Path, report: Path | None, cohort: CohortLike,
               key_file: Path | None = None, tables: Sequence[TableSource] = (),
               limits: IngestLimits | None = None, split_file: Path | None = None,
               fhir_mrn_system: str | None = None, wearable_mapping: WearableMapping | None = None,
               fhir_validation: FhirValidation | None = None) -> IngestReport:
    """Ingest, write cache/quarantine/report under `out`, return the report. `key_file` defaults to `out/pseudonym.key`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ingest_silo(fhir=list(fhir), tabular=list(tabular), dicom=list(dicom), wearables=list(wearables),
                         dicomweb=list(dicomweb), tables=list(tables), split_file=split_file,
                         fhir_mrn_system=fhir_mrn_system, fhir_validation=fhir_validation or FhirValidation.USED_FIELDS,
                         limits=limits or DEFAULT_LIMITS,
                         wearable_mapping=wearable_mapping or WearableMapping(),
                         cohort=cohort, pseudonym_key=load_or_create_key(Path(key_file) if key_file else out / KEY_FILE),
                         cache_dir=out / "cache")
    result.quarantine.write_jsonl(out / "quarantine.jsonl")
    target = Path(report) if report is not None else out / "ingest-report.json"
    target.write_text(json.dumps(result.report.model_dump(mode="json"), indent=2), encoding="utf-8")
    log.info("ingestion report written to %s", target)
    return result.report


def render_table(report: IngestReport) -> Group:
    """The report for people, readable at 80 columns: a narrow table of counts per modality, then
    one wrapped line each for what was quarantined, unused, linked and excluded, the column mappings
    and the warnings."""
    counts = Table(title=f"Ingestion at index date {report.index_date}: {report.samples} samples, "
                         f"{report.positives} positive, {report.quarantined_total} quarantined")
    for column in ("modality", "inputs", "parsed", "cached", "records", "patients", "samples"):
        counts.add_column(column, justify="left" if column == "modality" else "right")
    for name, m in report.modalities.items():
        counts.add_row(name, str(m.inputs_read), str(m.parsed), str(m.cached), str(m.records), str(m.patients),
                       str(m.samples))
    counts.add_section()
    counts.add_row("linked", "", "", "", "", str(report.patients), str(report.samples))

    details = Table.grid(padding=(0, 1))
    details.add_column(style="bold", no_wrap=True)
    details.add_column(overflow="fold")
    for name, m in report.modalities.items():
        if m.quarantined:
            details.add_row(f"{name} quarantined", escape(_listing(m.quarantined)))
        if m.unused:
            details.add_row(f"{name} unused", escape(_listing(m.unused)))
    linked = _listing(report.linked) or "-"
    if report.image_linked_by.get("imaging_study"):
        linked += f" (images linked by ImagingStudy: {report.image_linked_by['imaging_study']})"
    details.add_row("linked", escape(linked))
    details.add_row("excluded", escape(_listing(report.excluded) or "-"))
    if set(report.split_assigned) - {NO_PART}:  # the data names parts: show what a column split would use
        details.add_row("split named", escape(_listing(report.split_assigned)))
    ehr = report.modalities.get("ehr")
    if ehr is not None:
        for column, meaning in ehr.mappings.items():
            details.add_row(f"column {escape(column)}", escape(meaning))
        for warning in ehr.warnings:
            details.add_row("warning", escape(warning))
    return Group(counts, details)


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())
