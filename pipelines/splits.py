"""Splits a study controls: the part (train / validation / test) a silo's data names per patient.

A benchmark cohort often comes with its split fixed: a column of the hospital's table
(`TableSource.split_column`) or a split file kept at the silo (`read_split_file`: one row per
patient, `mrn,split`). The cell is read through a value map (`DEFAULT_SPLIT_VALUES`, or the
node config's own), the MRN is pseudonymised with the silo's key like every record, and the
part travels with the patient into `MultimodalDataset.assigned`. `pipelines.dataset.split_silo`
honours it when the study says `cohort.split = "column"`; a patient without a part falls back to
the hash split and is counted (`IngestReport.split_assigned["none"]`).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:  # config loading (node.toml names a split file) must not import pandas and pydicom
    from .deid import Deidentifier

log = logging.getLogger(__name__)


class SplitPart(StrEnum):
    """The three disjoint parts of a silo (`pipelines.dataset.SiloSplit`)."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


#: The cell values understood without configuration, compared case-insensitively.
DEFAULT_SPLIT_VALUES: dict[str, SplitPart] = {
    "train": SplitPart.TRAIN, "training": SplitPart.TRAIN,
    "validation": SplitPart.VALIDATION, "val": SplitPart.VALIDATION, "valid": SplitPart.VALIDATION,
    "test": SplitPart.TEST, "testing": SplitPart.TEST,
}
#: The count key of patients whose data names no part (they take the hash split).
NO_PART = "none"


def split_part(cell: object, values: Mapping[str, SplitPart] | None = None) -> SplitPart | None:
    """The part a cell names, through `values` (default `DEFAULT_SPLIT_VALUES`); None when blank or unknown."""
    from .ehr.tables import identifier

    raw = identifier(cell)  # blank -> None; a split coded 0/1/2 read as float loses its '.0'
    if raw is None:
        return None
    return (values or DEFAULT_SPLIT_VALUES).get(raw.strip().lower())


def read_split_file(path: Path, deid: Deidentifier, values: Mapping[str, SplitPart] | None = None,
                    unused: Counter | None = None) -> dict[str, SplitPart]:
    """Pseudonym -> part from a CSV with a header `mrn,split` (extra columns are ignored).

    A row whose value maps to no part is counted in `unused["unknown_split_value"]`; an MRN named twice
    with two parts is refused (the split would depend on row order). The MRN is read as the tables read
    it (`pipelines.ehr.tables.identifier`), so it meets the same pseudonym."""
    from .ehr.tables import identifier

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigurationError(f"split file cannot be read ({e.strerror}); expected a CSV with columns mrn,split",
                           source=path) from None
    if rows and not {"mrn", "split"} <= {str(k).strip().lower() for k in rows[0]}:
        raise ConfigurationError(f"split file has columns {sorted(rows[0])}; expected a header row with mrn and split",
                           source=path)
    parts: dict[str, SplitPart] = {}
    for n, row in enumerate(rows, 2):
        row = {str(k).strip().lower(): v for k, v in row.items()}
        mrn = identifier(row.get("mrn"))
        part = split_part(row.get("split"), values)
        if not mrn or part is None:
            if unused is not None:
                unused["unknown_split_value"] += 1
            continue
        pid = deid.pseudonym(mrn)
        if parts.get(pid, part) != part:
            raise ConfigurationError(f"split file names two parts for the MRN on row {n}; expected one part per patient",
                               source=path)
        parts[pid] = part
    log.info("split file: %d patients with a part", len(parts))
    return parts
