"""Per-silo cohort statistics (pipelines.analytics) against numpy on the same values."""

import numpy as np
import pytest

from pipelines.analytics import cohort_statistics, histogram_cells, quantiles_from_histogram
from pipelines.errors import DatasetError


def _cohort(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    ehr = rng.normal(60, 12, size=(n, 2))
    ehr[rng.random(n) < 0.3, 1] = np.nan
    mask = (rng.random((n, 3)) < [1.0, 0.6, 0.4]).astype(np.float32)
    label = (rng.random(n) < 0.2).astype(np.float32)
    return ehr, mask, label


def test_counts_moments_and_histogram_match_numpy() -> None:
    ehr, mask, label = _cohort()
    edges = [40.0, 50.0, 60.0, 70.0, 80.0]
    stats = cohort_statistics(ehr_raw=ehr, mask=mask, label=label, columns=["age", "bp"], bins={"bp": edges})
    assert stats.patients == 200 and stats.label_positive == int(label.sum())
    assert stats.modalities == {"ehr": 200, "image": int(mask[:, 1].sum()), "signal": int(mask[:, 2].sum())}
    bp = ehr[:, 1][~np.isnan(ehr[:, 1])]
    col = stats.columns[1]
    assert (col.present, col.missing) == (bp.size, 200 - bp.size)
    assert col.mean == pytest.approx(bp.mean(), rel=1e-12)
    assert col.m2 == pytest.approx(((bp - bp.mean()) ** 2).sum(), rel=1e-12)
    assert sum(col.histogram) == col.present and len(col.histogram) == len(edges) + 1
    assert col.histogram[2] == int(((bp >= 50) & (bp < 60)).sum())  # a bin holds its left edge, not its right
    assert stats.columns[0].histogram is None


def test_a_value_on_an_edge_falls_in_the_bin_that_starts_there() -> None:
    assert histogram_cells(np.array([1.0, 2.0, 2.5, 3.0]), [1.0, 2.0, 3.0]) == (0, 1, 2, 1)


def test_grouped_quantiles_interpolate_inside_a_bin_and_say_none_in_an_open_cell() -> None:
    # 10 values uniform in [0, 10): the median of grouped data is 5.
    assert quantiles_from_histogram([0, 10, 0], [0.0, 10.0], [0.5]) == [5.0]
    assert quantiles_from_histogram([5, 5, 0], [0.0, 10.0], [0.25, 0.75]) == [None, 5.0]


def test_misshaped_inputs_are_refused_with_the_shapes() -> None:
    ehr, mask, label = _cohort()
    with pytest.raises(DatasetError, match="expected"):
        cohort_statistics(ehr_raw=ehr[:, :1], mask=mask, label=label, columns=["a", "b"], bins={})
