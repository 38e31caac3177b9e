"""Statistics of one silo's de-identified cohort, for an analysis study (federated analytics).

Computed on the cohort's samples (`MultimodalDataset`: `ehr_raw` values in the feature's unit with
NaN for missing, the modality mask and the label), before any disclosure control: counts
(patients, with each modality, label positives), and per EHR value column (and per-sample summary,
such as a patient's image series or wearable hours) the count present and missing, the mean and the
sum of squared deviations from it (M2; moments that pool exactly across silos, Chan, Golub & LeVeque
1979), and a histogram on bins the study fixes, with one open cell at each end so the cells add up
to the count present. Quantiles are read from a histogram by linear interpolation inside the bin
(the grouped-data median of descriptive statistics), so a pooled
histogram gives pooled quantiles without any silo releasing a patient's value.

Disclosure control (privacy.disclosure) and the wire format (coordinator.api.protocol) are applied
by the silo node; this module only counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .cohort import MODALITIES
from .errors import DatasetError


@dataclass(frozen=True)
class ColumnStatistics:
    """One EHR value column at one silo, exact."""

    name: str
    present: int
    missing: int
    mean: float | None  # None when nothing is present
    m2: float | None  # sum of squared deviations from the mean
    histogram: tuple[int, ...] | None  # len(edges) + 1 cells; None without bins
    edges: tuple[float, ...] | None
    # for DP moments: sums of the values clamped to the bins' range (bounded sensitivity)
    clamped_sum: float | None
    clamped_sum_squares: float | None


@dataclass(frozen=True)
class CohortStatistics:
    """One silo's cohort, exact: the input of disclosure control."""

    patients: int
    label_positive: int
    modalities: dict[str, int]
    columns: tuple[ColumnStatistics, ...]

    @property
    def label_negative(self) -> int:
        return self.patients - self.label_positive


def histogram_cells(values: np.ndarray, edges: Sequence[float]) -> tuple[int, ...]:
    """Counts of `values` in the cells (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return tuple(int(c) for c in np.bincount(idx, minlength=len(edges) + 1))


def quantiles_from_histogram(cells: Sequence[int], edges: Sequence[float], qs: Sequence[float]) -> list[float | None]:
    """Quantiles of grouped data: linear inside the bin holding the q-th share of the count. A quantile
    that falls in an open end cell (below the first edge, at or above the last) has no value: None."""
    counts = np.asarray(cells, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return [None for _ in qs]
    cum = np.cumsum(counts)
    out: list[float | None] = []
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0 or i >= len(edges):  # an open end cell
            out.append(None)
            continue
        below = cum[i - 1]
        lo, hi = edges[i - 1], edges[i]
        share = (target - below) / counts[i] if counts[i] > 0 else 0.0
        out.append(float(lo + share * (hi - lo)))
    return out


def column_statistics(name: str, values: np.ndarray, edges: Sequence[float] | None) -> ColumnStatistics:
    """`values`: one column over the cohort, NaN where missing."""
    values = np.asarray(values, dtype=np.float64)
    seen = values[~np.isnan(values)]
    n = int(seen.size)
    mean = float(seen.mean()) if n else None
    m2 = float(np.sum((seen - mean) ** 2)) if n else None
    hist = histogram_cells(seen, edges) if edges is not None else None
    clamped = np.clip(seen, edges[0], edges[-1]) if edges is not None else None
    return ColumnStatistics(name=name, present=n, missing=int(values.size - n), mean=mean, m2=m2, histogram=hist,
                            edges=tuple(float(e) for e in edges) if edges is not None else None,
                            clamped_sum=float(clamped.sum()) if clamped is not None else None,
                            clamped_sum_squares=float(np.sum(clamped ** 2)) if clamped is not None else None)


def cohort_statistics(*, ehr_raw: np.ndarray, mask: np.ndarray, label: np.ndarray, columns: Sequence[str],
                      bins: Mapping[str, Sequence[float]],
                      summaries: Mapping[str, np.ndarray] | None = None) -> CohortStatistics:
    """Exact statistics of a cohort: `ehr_raw` [N, C] (NaN = missing, columns named by `columns`),
    `mask` [N, 3] (modalities in `MODALITIES` order), `label` [N] 0/1; `summaries`: further [N] values by name
    (NaN = missing), whose statistics follow the EHR columns' as columns of their own."""
    ehr_raw, mask, label = np.asarray(ehr_raw, dtype=np.float64), np.asarray(mask), np.asarray(label)
    n = int(label.shape[0])
    if ehr_raw.shape != (n, len(columns)) or mask.shape != (n, len(MODALITIES)):
        raise DatasetError(f"cohort statistics: ehr_raw {ehr_raw.shape}, mask {mask.shape}, label {label.shape}; "
                           f"expected [{n}, {len(columns)}], [{n}, {len(MODALITIES)}] and [{n}]")
    summaries = summaries or {}
    wrong = next((name for name, v in summaries.items() if np.shape(v) != (n,)), None)
    if wrong is not None:
        raise DatasetError(f"cohort statistics: summary {wrong!r} is {np.shape(summaries[wrong])}; expected [{n}], "
                           "one value per patient (NaN where it has none)")
    return CohortStatistics(
        patients=n,
        label_positive=int((label > 0.5).sum()),
        modalities={m: int((mask[:, k] > 0.5).sum()) for k, m in enumerate(MODALITIES)},
        columns=(*(column_statistics(c, ehr_raw[:, j], bins.get(c)) for j, c in enumerate(columns)),
                 *(column_statistics(name, v, bins.get(name)) for name, v in summaries.items())),
    )


def dataset_statistics(dataset, *, columns: Sequence[str], bins: Mapping[str, Sequence[float]],  # noqa: ANN001
                       summaries: Mapping[str, np.ndarray] | None = None) -> CohortStatistics:
    """Statistics of a `MultimodalDataset` (its `ehr_raw`, before any normalisation). `summaries`: further
    per-sample values by name (NaN = missing; e.g. `pipelines.steps.ModalitySummaries`: image series, wearable
    hours), whose statistics follow the EHR columns' as columns of their own."""
    if dataset.ehr_raw is None:
        raise DatasetError("the dataset keeps no raw EHR values (ehr_raw); re-ingest it to compute statistics")
    return cohort_statistics(ehr_raw=dataset.ehr_raw.numpy(), mask=dataset.mask.numpy(), label=dataset.label.numpy(),
                             columns=columns, bins=bins, summaries=summaries)
