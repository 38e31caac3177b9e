from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coordinator.api.study import DEFAULT_FEATURES, CohortSpec, FeatureSpec
from pipelines.dataset import MultimodalDataset, split_train_test
from pipelines.normalise import normalise_ehr
from pipelines.errors import DatasetError, UnitError
from pipelines.ehr.units import convert

from .conftest import ingest


def _dataset(n: int) -> MultimodalDataset:
    return MultimodalDataset(ehr=torch.zeros(n, 4), image=torch.zeros(n, 1, 8, 8), signal=torch.zeros(n, 2, 16),
                             mask=torch.ones(n, 3), label=torch.zeros(n), pseudonyms=[f"p{i}" for i in range(n)])


def test_normalise_ehr_reference_ranges_and_indicators():
    features = (DEFAULT_FEATURES[2], DEFAULT_FEATURES[9], FeatureSpec(name="x", code="9999-9"))
    raw = np.array([[85.0, 125.0, 1.0], [np.nan, 10.0, 3.0]])
    out = normalise_ehr(raw, features)
    assert out.shape == (2, 6) and out.dtype == np.float32
    assert out[0, 0] == pytest.approx(0.0) and out[0, 1] == pytest.approx(1.0) and out[1, 1] == pytest.approx(-1.0)
    assert out[1, 0] == 0 and list(out[:, 3]) == [0, 1]  # missing: value 0, indicator 1
    assert out[0, 2] == pytest.approx(-1.0) and out[1, 2] == pytest.approx(1.0)  # no reference: local z-score


def test_split_is_deterministic_disjoint_and_complete():
    d = _dataset(400)
    train, test = split_train_test(d, test_fraction=0.25, seed=1)
    again, _ = split_train_test(d, test_fraction=0.25, seed=1)
    assert train.pseudonyms == again.pseudonyms and not set(train.pseudonyms) & set(test.pseudonyms)
    assert len(train) + len(test) == 400 and 60 < len(test) < 140
    other, _ = split_train_test(d, test_fraction=0.25, seed=2)
    assert other.pseudonyms != train.pseudonyms
    # a patient's side does not depend on who else is in the silo
    _, test_small = split_train_test(d.subset(range(200)), test_fraction=0.25, seed=1)
    assert set(test_small.pseudonyms) == set(test.pseudonyms) & set(d.pseudonyms[:200])


def test_dataset_refuses_bad_tensors():
    with pytest.raises(DatasetError, match="NaN or Inf"):
        MultimodalDataset(ehr=torch.full((2, 4), math.nan), image=torch.zeros(2, 1, 8, 8), signal=torch.zeros(2, 2, 16),
                          mask=torch.ones(2, 3), label=torch.zeros(2), pseudonyms=["a", "b"])
    with pytest.raises(DatasetError, match="field 'label'"):
        MultimodalDataset(ehr=torch.zeros(2, 4), image=torch.zeros(2, 1, 8, 8), signal=torch.zeros(2, 2, 16),
                          mask=torch.ones(2, 3), label=torch.zeros(3), pseudonyms=["a", "b"])


def test_unit_conversions():
    assert convert(5.0, "mmol/L", "mg/dL", code="2345-7") == pytest.approx(90.08, abs=0.01)
    assert convert(88.42, "umol/L", "mg/dL", code="2160-0") == pytest.approx(1.0, abs=0.01)
    assert convert(1.2, "g/L", "mg/dL", code="2093-3") == pytest.approx(120.0)
    assert convert(120, "mmHg", "mm[Hg]", code="8480-6") == 120
    assert convert(48, "mmol/mol", "%", code="4548-4") == pytest.approx(6.54, abs=0.01)
    with pytest.raises(UnitError, match="obs.json: unit 'mmol/L' for LOINC 39156-5"):
        convert(5.0, "mmol/L", "kg/m2", code="39156-5", source="obs.json")


def test_cohort_criteria_and_label_window(small_hospital):
    base = ingest(small_hospital)
    older = ingest(small_hospital, cohort=CohortSpec(min_age=60))
    assert older.report.excluded["below_min_age_or_unknown_age"] == len(base.dataset) - len(older.dataset) > 0
    # some negatives are diagnosed 420-900 days after the index date: a longer window finds them
    longer = ingest(small_hospital, cohort=CohortSpec(label_window_days=1000))
    assert longer.report.positives >= base.report.positives
    assert longer.dataset.pseudonyms == base.dataset.pseudonyms
