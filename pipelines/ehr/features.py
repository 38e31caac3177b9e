"""EHR features and the label, computed per patient from coded facts (FHIR, tabular) and the cohort.

Dates arrive as days relative to the index date (`pipelines.ehr.factstore`). Features are aggregated
over days `(-window_days, 0]`, converted to the feature's
UCUM unit (`pipelines.ehr.units`); demographics (`system = "fedcare"`) come from the Patient.
The label is 1 when the label condition starts within `(index, index + label_window_days]`;
a patient whose label condition started on or before the index date is a prevalent case and
is excluded from the cohort (counted in the report), as incident-outcome studies do.
"""

from __future__ import annotations

import math
import numpy as np

from ..cohort import DEMOGRAPHIC_SYSTEM, CohortLike, FeatureLike
from ..errors import ConfigurationError, UnitError
from .factstore import EhrPatient
from ..quarantine import Quarantine
from .units import convert

DEMOGRAPHIC_CODES = ("age", "sex-female", "sex-male")
AGGREGATES = ("last", "mean", "min", "max", "count")


def check_features(features: tuple[FeatureLike, ...]) -> None:
    for f in features:
        if f.system == DEMOGRAPHIC_SYSTEM and f.code not in DEMOGRAPHIC_CODES:
            raise ConfigurationError(f"feature {f.name!r} has code {f.code!r} in system {DEMOGRAPHIC_SYSTEM!r}; "
                                     f"expected one of {DEMOGRAPHIC_CODES}. Fix the study's cohort.features")
        if f.aggregate not in AGGREGATES:
            raise ConfigurationError(f"feature {f.name!r} has aggregate {f.aggregate!r}; expected one of {AGGREGATES}")


def _demographic(p: EhrPatient, code: str) -> float:
    if code == "age":
        return float("nan") if p.age is None else p.age
    if p.gender not in ("female", "male"):
        return float("nan")
    return float(p.gender == code.removeprefix("sex-"))


def ehr_values(p: EhrPatient, features: tuple[FeatureLike, ...], quarantine: Quarantine, refused: set[str]) -> np.ndarray:
    """Raw feature values in cohort units, NaN where missing. `refused` collects quarantined sources."""
    out = np.full(len(features), np.nan, dtype=np.float64)
    for j, f in enumerate(features):
        if f.system == DEMOGRAPHIC_SYSTEM:
            out[j] = _demographic(p, f.code)
            continue
        hits: list[tuple[int, float]] = []
        for m in p.measurements:
            if (f.system, f.code) not in m.codes or not (-f.window_days < m.day <= 0) or m.source in refused:
                continue
            try:
                hits.append((m.day, convert(m.value, m.unit, f.unit, code=f.code, source=m.source)))
            except UnitError as e:
                refused.add(m.source)
                quarantine.add("ehr", e)
        if f.aggregate == "count":
            out[j] = float(len(hits))
        elif hits:
            values = [v for _, v in sorted(hits, key=lambda h: h[0])]
            out[j] = {"last": values[-1], "mean": float(np.mean(values)), "min": min(values), "max": max(values)}[f.aggregate]
    return out


def label_of(p: EhrPatient, cohort: CohortLike) -> int | None:
    """1/0, or None for a prevalent case (label condition on or before the index date, day <= 0)."""
    key = (cohort.label_system, cohort.label_code)
    onsets = [d.day for d in p.diagnoses if key in d.codes]
    if any(o <= 0 for o in onsets):
        return None
    return int(any(o <= cohort.label_window_days for o in onsets))


def has_observed_ehr(values: np.ndarray, features: tuple[FeatureLike, ...]) -> bool:
    """The EHR modality is present when a coded feature (not only demographics) was observed."""
    coded = [j for j, f in enumerate(features) if f.system != DEMOGRAPHIC_SYSTEM and f.aggregate != "count"]
    idx = coded or range(len(features))
    return any(not math.isnan(values[j]) for j in idx)
