"""Normalisation fitted on training rows only (#22 item 5): no statistic touches a validation or test row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.api.study import FeatureSpec
from pipelines.dataset import MultimodalDataset, split_silo
from pipelines.errors import DatasetError
from pipelines.normalise import EhrScaling, fit_on_training

FEATURES = (FeatureSpec(name="x", system="urn:t", code="x"),  # no reference: fitted on training rows
            FeatureSpec(name="bp", code="8480-6", unit="mm[Hg]"),  # built-in reference
            FeatureSpec(name="y", system="urn:t", code="y", reference=(0.0, 10.0)),  # the spec's reference
            FeatureSpec(name="c", system="urn:t", code="c", categories=("a", "b")))


def _dataset(raw: np.ndarray) -> MultimodalDataset:
    n = raw.shape[0]
    return MultimodalDataset(ehr=torch.from_numpy(EhrScaling.fit(raw, FEATURES).apply(raw)), image=torch.zeros(n, 1, 8, 8),
                             signal=torch.zeros(n, 1, 8), mask=torch.ones(n, 3), label=torch.from_numpy((np.arange(n) % 2).astype(np.float32)),
                             pseudonyms=[f"p{i}" for i in range(n)], ehr_raw=torch.from_numpy(raw))


def _raw(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    onehot = np.eye(2)[rng.integers(0, 2, n)]
    return np.column_stack([rng.normal(50, 5, n), rng.normal(120, 10, n), rng.uniform(0, 10, n), onehot])


def test_no_statistic_touches_a_test_or_validation_row():
    raw = _raw(200, 0)
    parts = split_silo(_dataset(raw), test_fraction=0.25, validation_fraction=0.2, seed=3)
    train, validation, test = fit_on_training(*parts, features=FEATURES)
    # the held-out rows changed beyond recognition: the training part's inputs do not move at all
    wild = raw.copy()
    held_out = [int(p[1:]) for p in parts.test.pseudonyms + parts.validation.pseudonyms]
    wild[held_out, 0] = 1e6
    again = fit_on_training(*split_silo(_dataset(wild), test_fraction=0.25, validation_fraction=0.2, seed=3),
                            features=FEATURES)
    assert torch.equal(again[0].ehr, train.ehr)
    # and the fitted feature is z-scored with the training rows' mean and deviation exactly
    x = train.ehr_raw[:, 0].numpy()
    assert train.ehr[:, 0].numpy() == pytest.approx(((x - x.mean()) / x.std()).astype(np.float32), abs=1e-5)
    assert test.ehr[:, 0].numpy() == pytest.approx(((test.ehr_raw[:, 0].numpy() - x.mean()) / x.std()).astype(np.float32), abs=1e-5)


def test_references_from_the_spec_and_one_hot_columns_need_no_data():
    raw = _raw(10, 1)
    out = EhrScaling.fit(raw, FEATURES, train=[]).apply(raw)  # no training row at all
    assert out[:, 1] == pytest.approx(((raw[:, 1] - 105) / 15).astype(np.float32), abs=1e-5)  # 90-120 mm[Hg]
    assert out[:, 2] == pytest.approx(((raw[:, 2] - 5) / 5).astype(np.float32), abs=1e-5)  # the spec's 0-10
    assert (out[:, 3:5] == raw[:, 3:5]).all() and out.shape == (10, 10)


def test_raw_values_must_match_the_feature_columns():
    with pytest.raises(DatasetError, match=r"expected \[N, 5\]"):
        EhrScaling.fit(np.zeros((3, 4)), FEATURES)
