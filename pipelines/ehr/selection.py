"""The cohort, patient by patient: index date, criteria, label and EHR values, over ranges of pseudonyms.

`select_patients` reads one range of a resolved `FactStore` (its file, opened read-only, so a
worker process can read it while the ingesting process holds it) and decides each patient
alone: its index date (`timeline`), the age criterion, its label (`labels`) and its EHR values
(`features`). A patient's decision needs no other patient's facts, so ranges are decided by the
run's workers (`pipelines.parallel`) and merged in pseudonym order: the rows, exclusions and
refusals are those of one pass in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cohort import CohortLike
from ..errors import InputError
from ..quarantine import Quarantine
from .factstore import EhrPatient, FactStore
from .features import ehr_values
from .labels import label_of
from .timeline import index_day, no_index_reason

#: Patients a range holds: enough that opening the store and handing back the range cost little beside it.
RANGE_PATIENTS = 256


@dataclass(frozen=True)
class Decision:
    """One patient's row of the dataset, or why it has none."""

    pseudonym: str
    excluded: str | None  # the reason it is left out; None: a row
    day: int = 0  # the index date, days after the reference date
    label: float = 0.0
    values: np.ndarray | None = None  # [F] EHR values in cohort units, NaN missing
    refused: list[InputError] = field(default_factory=list)  # facts refused while reading its values (quarantined)


class _Held(Quarantine):
    """Refusals held, in order, for the ingesting process to quarantine (and log) as it merges the decisions."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[InputError] = []

    def add(self, modality: str, error: InputError) -> None:
        self.held.append(error)


def decide(p: EhrPatient, cohort: CohortLike) -> Decision:
    """A patient's index date, the cohort criteria, its label and EHR values (`cohort.ehr_columns`)."""
    day = index_day(p, cohort)
    if day is None:
        return Decision(p.pseudonym, no_index_reason(cohort))
    p = p.shifted(day)
    if p.age is None or not p.age >= cohort.min_age:
        return Decision(p.pseudonym, "below_min_age_or_unknown_age")
    label, why = label_of(p, cohort)
    if label is None:
        return Decision(p.pseudonym, why or "no_label")
    held = _Held()
    values = ehr_values(p, tuple(cohort.features), held, set())
    return Decision(p.pseudonym, None, day, float(label), values, held.held)


def select_patients(item: tuple[str, str, str], *, cohort: CohortLike) -> list[Decision]:
    """The decisions of the patients from `first` to `last` (pseudonym order) of the store file `path`:
    (path, first, last), what a worker process is given."""
    path, first, last = item
    with FactStore.reader(Path(path)) as store:
        return [decide(p, cohort) for p in store.patients(first, last)]


def ranges(pseudonyms: Sequence[str], size: int | None = None) -> list[tuple[str, str]]:
    """Sorted pseudonyms as (first, last) of consecutive ranges of at most `size` (RANGE_PATIENTS)."""
    size = size or RANGE_PATIENTS
    return [(pseudonyms[k], pseudonyms[min(k + size, len(pseudonyms)) - 1]) for k in range(0, len(pseudonyms), size)]
