"""Each patient's index (landmark) date, as the study chooses it (`cohort.index_from`).

Facts are stored with days relative to the reference date (`cohort.index_date`); a patient's
index day is where its own timeline starts, and its facts are shifted to count from it
(`EhrPatient.shifted`), so look-back windows end and prediction windows start there.

- "fixed": the reference date itself, for everyone.
- "column": a date column of a table (`index_column`, read as the table is read).
- "first_event": the first fact coded `index_system`/`index_code` (a diagnosis, an encounter
  or procedure code, a medication).
- "last_observation": the latest fact of the patient (real exports end years before any fixed
  date; this puts every patient's look-back window over their own data).

A patient without an index date is excluded from the cohort, counted by reason
(`no_index_date_<index_from>`).
"""

from __future__ import annotations

from ..cohort import CohortLike
from .factstore import EhrPatient


def no_index_reason(cohort: CohortLike) -> str:
    return f"no_index_date_{cohort.index_from}"


def index_day(p: EhrPatient, cohort: CohortLike) -> int | None:
    """Days from the reference date to the patient's index date; None if the patient has none."""
    if cohort.index_from == "fixed":
        return 0
    if cohort.index_from == "column":
        return max(p.index_days) if p.index_days else None
    if cohort.index_from == "first_event":
        key = (cohort.index_system, cohort.index_code)
        days = [m.day for m in p.measurements if key in m.codes]
        return min(days) if days else None
    days = [m.day for m in p.measurements] + [d.day for d in p.diagnoses]
    return max(days) if days else None
