"""Clinical metrics of a silo (silo_node.evaluation): threshold from validation, calibration, baseline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from silo_node.evaluation import DEFAULT_THRESHOLD, choose_threshold, clinical_metrics, expected_calibration_error


def test_threshold_is_youden_optimum_not_one_half():
    # a model whose scores are all low (e.g. trained on a rare label): at 0.5 it calls everyone negative
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.05, 0.08, 0.10, 0.12, 0.15, 0.22, 0.20, 0.25, 0.30, 0.35])
    t = choose_threshold(y, s)
    assert t == pytest.approx(0.20)  # J = 1 - 1/6 there, the best any cut reaches
    at_half = clinical_metrics(y, s, threshold=0.5)
    chosen = clinical_metrics(y, s, threshold=t)
    assert at_half["sensitivity"] == 0.0 and chosen["sensitivity"] == 1.0
    assert chosen["specificity"] == pytest.approx(5 / 6)
    assert chosen["balanced_accuracy"] == pytest.approx((1 + 5 / 6) / 2)


def test_one_class_validation_falls_back_and_metrics_stay_finite():
    assert choose_threshold(np.zeros(5), np.linspace(0, 1, 5)) == DEFAULT_THRESHOLD
    m = clinical_metrics(np.zeros(4), np.array([0.1, 0.2, 0.6, 0.3]), threshold=0.5)
    assert "sensitivity" not in m and all(np.isfinite(v) for v in m.values())
    assert m["specificity"] == 0.75 and m["baseline_accuracy"] == 1.0


def test_values_against_their_definitions():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(float)
    s = np.clip(0.3 + 0.3 * (y - 0.3) + 0.2 * rng.standard_normal(400), 0, 1)
    m = clinical_metrics(y, s, threshold=0.4)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))
    assert m["prevalence"] == pytest.approx(y.mean())
    assert m["baseline_accuracy"] == pytest.approx(max(y.mean(), 1 - y.mean()))
    assert m["baseline_brier"] == pytest.approx(y.mean() * (1 - y.mean()))
    assert m["accuracy"] == pytest.approx(np.mean((s >= 0.4) == (y == 1)))


def test_calibration_error_is_zero_when_calibrated_and_large_when_not():
    y = np.array([1, 0, 0, 0] * 25 + [1, 1, 1, 0] * 25, dtype=float)
    calibrated = np.array([0.25] * 100 + [0.75] * 100)
    assert expected_calibration_error(y, calibrated) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(200, 0.95)) == pytest.approx(0.45)
