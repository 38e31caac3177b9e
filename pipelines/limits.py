"""Bounds on what one input may make ingestion allocate (node config `[data.limits]`).

Every input is untrusted: a 1 KB DICOM may declare 65535 x 65535 pixels, a 262 KB deflated
DICOM may inflate to 268 MB, a JSON file may nest 200,000 deep, a CSV header may hold a
million columns. Each bound is checked before the expensive step (decoding, inflating,
parsing the table); an input beyond one is quarantined with the bound it broke and how to
raise it, and the run goes on. `MemoryError` and `RecursionError` met anyway are caught per
file (`pipelines.errors.exhausted`): one file never aborts the run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class IngestLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a DICOM instance's declared Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8
    max_pixel_bytes: int = Field(default=1 << 30, ge=1)
    max_frames: int = Field(default=2_000, ge=1)  # NumberOfFrames of one instance
    max_inflated_bytes: int = Field(default=1 << 30, ge=1)  # a deflated DICOM's dataset once inflated
    max_document_bytes: int = Field(default=64 << 20, ge=1)  # a FHIR resource or NDJSON line read whole (bundles stream)
    # levels of JSON nesting in a streamed FHIR Bundle (FHIR resources nest a few dozen at most; documents read whole
    # are bounded by Python's own recursion limit)
    max_json_depth: int = Field(default=512, ge=8)
    max_table_columns: int = Field(default=10_000, ge=1)  # columns of a CSV/TSV header
    max_line_bytes: int = Field(default=1 << 20, ge=1)  # a table's header line


DEFAULT_LIMITS = IngestLimits()
