"""Per-silo cohort statistics (pipelines.analytics) against numpy on the same values."""

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from pipelines.analytics import cohort_statistics, histogram_cells, quantiles_from_histogram
from pipelines.deid import Deidentifier
from pipelines.errors import DatasetError
from .conftest import KEY, ingest


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


def test_summaries_are_columns_of_their_own_missing_where_a_patient_lacks_the_modality() -> None:
    ehr, mask, label = _cohort(n=6)
    series = np.array([1.0, 2.0, np.nan, 1.0, 3.0, np.nan])
    stats = cohort_statistics(ehr_raw=ehr, mask=mask, label=label, columns=["age", "bp"],
                              bins={"image_series": [2.0, 3.0]}, summaries={"image_series": series})
    col = stats.columns[2]
    assert (col.name, col.present, col.missing, col.histogram) == ("image_series", 4, 2, (2, 1, 1))
    assert col.mean == pytest.approx(7 / 4)
    with pytest.raises(DatasetError, match="one value per patient"):
        cohort_statistics(ehr_raw=ehr, mask=mask, label=label, columns=["age", "bp"], bins={},
                          summaries={"image_series": series[:5]})


def test_ingestion_counts_each_patients_series_and_wearable_hours(small_hospital) -> None:
    """A second series for one patient and a second, 2-hour recording for another are counted (not only the chosen)."""
    h = small_hospital
    first = sorted(h.dicom_dir.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(h.dicom_dir / "second-series.dcm")
    twice = ds.PatientID
    csv = sorted(h.wearables_dir.glob("*.csv"))[0]
    seconds = pd.to_datetime(pd.read_csv(csv)["timestamp"], utc=True)
    start = seconds.min() - pd.Timedelta(days=1)  # a day earlier: this recording's window is superseded
    extra = [start] + [start + pd.Timedelta(seconds=7200 - k) for k in range(199, -1, -1)]
    (h.wearables_dir / "older").mkdir()
    pd.DataFrame({"timestamp": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in extra], "heart_rate": 70.0, "acc_x": 0.0,
                  "acc_y": 0.0, "acc_z": 1.0}).to_csv(h.wearables_dir / "older" / csv.name, index=False)
    result = ingest(h)
    rows = result.dataset.pseudonyms
    s = result.summaries
    series = {p: v for p, v in zip(rows, s.image_series) if not np.isnan(v)}
    pid = Deidentifier(KEY).pseudonym
    assert series[pid(twice)] == 2 and sorted(set(series.values())) == [1, 2]
    assert list(series.values()).count(2) == 1 and len(series) == int(result.dataset.mask[:, 1].sum())
    hours = dict(zip(rows, s.wearable_hours))
    own = (seconds.max() - seconds.min()).total_seconds() / 3600
    assert hours[pid(csv.stem)] == pytest.approx(2.0 + own)
    others = [v for p, v in hours.items() if p != pid(csv.stem) and not np.isnan(v)]
    assert others and all(0.03 < v < 0.06 for v in others)  # one 160-sample recording at 1 Hz, about 159 s
