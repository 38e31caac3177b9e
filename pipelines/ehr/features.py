"""EHR features, computed per patient from coded facts (FHIR, tabular) and the cohort.

Dates arrive as days relative to the index date (`pipelines.ehr.factstore`). Features are aggregated
over days `(-window_days, 0]`, converted to the feature's
UCUM unit (`pipelines.ehr.units`); demographics (`system = "fedcare"`) come from the Patient.
A categorical feature (declared `categories`) is one-hot over them, the same columns at every
silo; the label is read by `pipelines.ehr.labels`, the index date by `pipelines.ehr.timeline`.
"""

from __future__ import annotations

import math
import numpy as np

from ..cohort import DEMOGRAPHIC_SYSTEM, FeatureLike
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


def _aggregate(p: EhrPatient, f: FeatureLike, quarantine: Quarantine, refused: set[str]) -> float:
    """The feature's aggregate over its look-back window in cohort units (a categorical: the category index)."""
    hits: list[tuple[int, float]] = []
    for m in p.measurements:
        if (f.system, f.code) not in m.codes or not (-f.window_days < m.day <= 0) or m.source in refused:
            continue
        if f.categories:  # the table reader stored the declared category's index; anything else is no category
            if m.unit is None and float(m.value).is_integer() and 0 <= m.value < len(f.categories):
                hits.append((m.day, m.value))
            continue
        try:
            hits.append((m.day, convert(m.value, m.unit, f.unit, code=f.code, source=m.source)))
        except UnitError as e:
            refused.add(m.source)
            quarantine.add("ehr", e)
    if f.aggregate == "count":
        return float(len(hits))
    if not hits:
        return float("nan")
    values = [v for _, v in sorted(hits, key=lambda h: h[0])]
    if f.aggregate == "last":
        return values[-1]
    if f.aggregate == "mean":
        return float(np.mean(values))
    return min(values) if f.aggregate == "min" else max(values)


def ehr_values(p: EhrPatient, features: tuple[FeatureLike, ...], quarantine: Quarantine, refused: set[str]) -> np.ndarray:
    """Raw values, one per EHR column (`cohort.ehr_columns`), in cohort units, NaN where missing.

    A categorical feature is one-hot over its declared categories (all NaN when missing).
    `refused` collects quarantined sources.
    """
    out: list[float] = []
    for f in features:
        value = _demographic(p, f.code) if f.system == DEMOGRAPHIC_SYSTEM else _aggregate(p, f, quarantine, refused)
        if f.categories:
            out.extend([float("nan")] * len(f.categories) if math.isnan(value)
                       else [float(k == int(value)) for k in range(len(f.categories))])
        else:
            out.append(value)
    return np.asarray(out, dtype=np.float64)


def has_observed_ehr(values: np.ndarray, features: tuple[FeatureLike, ...]) -> bool:
    """The EHR modality is present when a coded feature (not only demographics) was observed."""
    columns = [f for f in features for _ in range(len(f.categories) or 1)]
    coded = [k for k, f in enumerate(columns) if f.system != DEMOGRAPHIC_SYSTEM and f.aggregate != "count"]
    idx = coded or range(len(columns))
    return any(not math.isnan(values[k]) for k in idx)
