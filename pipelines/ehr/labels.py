"""The label of one patient, read where the study says hospitals keep it (`cohort.label_source`).

- "condition": 1 when the label condition (`label_system`/`label_code`) starts within
  `(index, index + label_window_days]`. A patient whose condition started on or before the
  index date is a prevalent case: excluded when `exclude_prevalent` (an incident-outcome
  study, the default), else labelled 1.
- "observation": 1 when a value of `label_system`/`label_code` (a FHIR Observation, a table
  measurement) within `(index, index + label_window_days]` is above `label_above`; 0 when
  every such value is at or below it; no value in the window: no label.
- "column": the table column `label_column`, with the rule applied as the table is read
  (`label_rule`): above `label_above` (e.g. `num > 0`) or one of `label_values`.

A patient without a label is excluded from the cohort and counted by reason.
"""

from __future__ import annotations

from typing import Any

from ..cohort import CohortLike
from .factstore import EhrPatient
from .tables import code_text, number, text

#: Exclusion reasons (`IngestReport.excluded`).
PREVALENT = "prevalent_label_condition"
NO_LABEL_VALUE = "no_label_value"


def label_rule(cell: Any, cohort: CohortLike) -> float | None:
    """A table cell (missing tokens already blank) -> 1.0 / 0.0 by the study's rule; None if blank.

    `ValueError` naming the column when a threshold rule meets a cell that is no number.
    """
    if cohort.label_above is not None:
        value = number(cell, cohort.label_column or "label")
        return None if value is None else float(value > cohort.label_above)
    value_text = text(cell)
    if value_text is None:
        return None
    return float(value_text in cohort.label_values or code_text(value_text) in cohort.label_values)


def label_of(p: EhrPatient, cohort: CohortLike) -> tuple[int | None, str | None]:
    """(label, None), or (None, reason the patient has no label)."""
    if cohort.label_source == "column":
        if not p.labels:
            return None, NO_LABEL_VALUE
        return int(max(p.labels)[1] > 0), None  # the latest row of the patient wins
    key = (cohort.label_system, cohort.label_code)
    window = cohort.label_window_days
    if cohort.label_source == "observation":
        values = [m.value for m in p.measurements if key in m.codes and 0 < m.day <= window]
        if not values:
            return None, NO_LABEL_VALUE
        threshold = cohort.label_above if cohort.label_above is not None else 0.0
        return int(any(v > threshold for v in values)), None
    onsets = [d.day for d in p.diagnoses if key in d.codes]
    if any(o <= 0 for o in onsets):
        return (None, PREVALENT) if cohort.exclude_prevalent else (1, None)
    return int(any(o <= window for o in onsets)), None
