"""EHR normalisation that means the same at every hospital and never looks at a test row.

Each EHR value column gets one scale (`ColumnScale`):
- a categorical feature's one-hot columns stay 0/1; a count is log1p;
- a feature with a reference interval (the spec's `FeatureSpec.reference`, else the fixed
  adult clinical references `REFERENCE_RANGES`) maps to (x - mid) / half-width, on a log scale
  where the analyte is skewed: the same at every silo, from no data at all;
- any other feature is z-scored with statistics of the **training rows only**
  (`EhrScaling.fit(raw, features, train=...)`); a silo refits on its training part once the
  split is known (`fit_on_training`), so no statistic touches a validation or test row.

Values are clipped at `CLIP` (keeps DP clipping meaningful); each column is followed, after
all value columns, by its missing indicator: `[N, 2C]` for `C = len(cohort.ehr_columns)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cohort import DEMOGRAPHIC_SYSTEM, FeatureLike
from .dataset import MultimodalDataset
from .errors import DatasetError

LOINC = "http://loinc.org"
CLIP = 10.0


@dataclass(frozen=True)
class ReferenceRange:
    """Adult reference interval; values map to (x - mid) / half-width, on a log scale if `log`."""

    low: float
    high: float
    log: bool = False

    def normalise(self, x: np.ndarray) -> np.ndarray:
        lo, hi = (np.log(self.low), np.log(self.high)) if self.log else (self.low, self.high)
        x = np.log(np.maximum(x, 1e-6)) if self.log else x
        return (x - (lo + hi) / 2) / ((hi - lo) / 2)


#: (system, code) -> reference interval in the cohort's default units (see study.DEFAULT_FEATURES).
REFERENCE_RANGES: dict[tuple[str, str], ReferenceRange] = {
    (DEMOGRAPHIC_SYSTEM, "age"): ReferenceRange(20, 90),  # a
    (DEMOGRAPHIC_SYSTEM, "sex-female"): ReferenceRange(0, 1),
    (DEMOGRAPHIC_SYSTEM, "sex-male"): ReferenceRange(0, 1),
    (LOINC, "2345-7"): ReferenceRange(70, 100),  # glucose, mg/dL (fasting)
    (LOINC, "4548-4"): ReferenceRange(4.0, 5.6),  # HbA1c, %
    (LOINC, "8480-6"): ReferenceRange(90, 120),  # systolic BP, mm[Hg]
    (LOINC, "8462-4"): ReferenceRange(60, 80),  # diastolic BP, mm[Hg]
    (LOINC, "39156-5"): ReferenceRange(18.5, 25),  # BMI, kg/m2
    (LOINC, "2093-3"): ReferenceRange(125, 200),  # total cholesterol, mg/dL
    (LOINC, "2160-0"): ReferenceRange(0.6, 1.2),  # creatinine, mg/dL
    (LOINC, "33762-6"): ReferenceRange(10, 125, log=True),  # NT-proBNP, pg/mL (skewed: log scale)
}


@dataclass(frozen=True)
class ColumnScale:
    """How one value column maps to a model input: `kind` "onehot" | "count" | "reference" | "fitted"."""

    kind: str
    reference: ReferenceRange | None = None
    mean: float = 0.0
    std: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "onehot":
            return x
        if self.kind == "count":
            return np.log1p(x)
        if self.reference is not None:
            return self.reference.normalise(x)
        return (x - self.mean) / self.std


def _reference(f: FeatureLike) -> ReferenceRange | None:
    spec = getattr(f, "reference", None)
    if spec is not None:
        return ReferenceRange(float(spec[0]), float(spec[1]))
    return REFERENCE_RANGES.get((f.system, f.code))


@dataclass(frozen=True)
class EhrScaling:
    """One `ColumnScale` per EHR value column; fitted once, applied to every part of the silo's data."""

    columns: tuple[ColumnScale, ...]

    @classmethod
    def fit(cls, raw: np.ndarray, features: Sequence[FeatureLike], *, train: Sequence[int] | None = None) -> "EhrScaling":
        """Scales for `raw` [N, C]; statistics (features without a reference only) from the rows `train`
        (None: every row, for data that is not split yet)."""
        raw = np.asarray(raw, dtype=np.float64)
        rows = raw if train is None else raw[np.asarray(list(train), dtype=np.int64)]
        out: list[ColumnScale] = []
        for f in features:
            categories = tuple(getattr(f, "categories", ()) or ())
            if categories:
                out.extend(ColumnScale("onehot") for _ in categories)
                continue
            j = len(out)
            ref = _reference(f)
            if f.aggregate == "count":
                out.append(ColumnScale("count"))
            elif ref is not None:
                out.append(ColumnScale("reference", ref))
            else:
                seen = rows[:, j][np.isfinite(rows[:, j])] if rows.shape[0] else np.zeros(0)
                out.append(ColumnScale("fitted", mean=float(seen.mean()) if seen.size else 0.0,
                                       std=float(seen.std()) or 1.0 if seen.size else 1.0))
        if raw.ndim != 2 or raw.shape[1] != len(out):
            raise DatasetError(f"EHR values have shape {raw.shape}; expected [N, {len(out)}], one column per feature "
                               "and per declared category of a categorical feature")
        return cls(tuple(out))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw values `[N, C]` (NaN = missing) -> `[N, 2C]` float32: scaled values (0 if missing), then indicators."""
        raw = np.asarray(raw, dtype=np.float64).reshape(-1, len(self.columns))
        missing = ~np.isfinite(raw)
        out = np.zeros_like(raw)
        for j, scale in enumerate(self.columns):
            ok = ~missing[:, j]
            out[ok, j] = scale.apply(raw[ok, j])
        out = np.clip(out, -CLIP, CLIP)
        return np.concatenate([out, missing.astype(np.float64)], axis=1).astype(np.float32)


def normalise_ehr(raw: np.ndarray, features: Sequence[FeatureLike], *, train: Sequence[int] | None = None) -> np.ndarray:
    """`EhrScaling.fit(raw, features, train=train).apply(raw)`."""
    return EhrScaling.fit(raw, features, train=train).apply(raw)


def fit_on_training(train: MultimodalDataset, *others: MultimodalDataset,
                    features: Sequence[FeatureLike]) -> tuple[MultimodalDataset, ...]:
    """The parts of a silo's split with `ehr` rebuilt from their raw values by one scaling fitted on `train` only.

    This is the normalisation step that takes the training rows: call it after the split and
    before training, so that validation and test rows never inform a statistic.
    """
    parts = (train, *others)
    if any(p.ehr_raw is None for p in parts):
        raise DatasetError("a dataset part has no raw EHR values (ehr_raw); expected the dataset ingestion built")
    scaling = EhrScaling.fit(train.ehr_raw.numpy(), features)  # type: ignore[union-attr]
    return tuple(p.with_ehr(torch.from_numpy(scaling.apply(p.ehr_raw.numpy()))) for p in parts)  # type: ignore[union-attr]
