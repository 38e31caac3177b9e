"""What a clinician reads about a binary risk model on one silo's patients.

Discrimination (AUROC, AUPRC), the operating point (sensitivity, specificity, balanced and
plain accuracy at a threshold chosen on the silo's *validation* split by Youden's J, Youden
1950, never a fixed 0.5 nor one tuned on the test patients), calibration (Brier score, Brier
1950; expected calibration error over 10 equal-width bins, Naeini et al. 2015 / Guo et al. 2017),
and the majority-class baseline beside them: a model is only useful where it beats
"always predict the commoner class" (accuracy max(p, 1-p), AUROC 0.5, AUPRC p, Brier p(1-p)).

All values are plain floats keyed by name, so they travel in the metrics map of a
MetricsReport unchanged; validation metrics carry the prefix `val_` (the coordinator's
best-round choice reads `val_auroc`).
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

log = logging.getLogger(__name__)

VALIDATION_PREFIX = "val_"
DEFAULT_THRESHOLD = 0.5  # only when the validation split cannot choose one (one class, or empty)
CALIBRATION_BINS = 10


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity − 1 on these patients.

    Falls back to `DEFAULT_THRESHOLD` when they hold a single class (J is undefined then).
    """
    y = np.asarray(labels) >= 0.5
    if y.all() or not y.any():
        log.warning("validation split holds one class only (%d patients); threshold %.2f", len(y), DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_curve(y, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is +inf (nobody positive)


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, *, bins: int = CALIBRATION_BINS) -> float:
    """Σ_b (n_b / n)·|mean label − mean score| over equal-width score bins."""
    y, s = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    which = np.minimum((s * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(y[inside].mean() - s[inside].mean())
    return float(error)


def clinical_metrics(labels: np.ndarray, scores: np.ndarray, *, threshold: float) -> dict[str, float]:
    """The metrics above for predicted probabilities `scores` of patients with 0/1 `labels`."""
    y = np.asarray(labels, dtype=np.float64) >= 0.5
    s = np.asarray(scores, dtype=np.float64)
    if len(y) == 0:
        return {}
    prevalence = float(y.mean())
    both = 0 < prevalence < 1
    predicted = s >= threshold
    sensitivity = float(predicted[y].mean()) if y.any() else float("nan")
    specificity = float((~predicted[~y]).mean()) if (~y).any() else float("nan")
    metrics = {
        "auroc": float(roc_auc_score(y, s)) if both else 0.5,
        "auprc": float(average_precision_score(y, s)) if both else prevalence,
        "accuracy": float((predicted == y).mean()),
        "balanced_accuracy": float(np.nanmean([sensitivity, specificity])),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "threshold": float(threshold),
        "brier": float(np.mean((s - y) ** 2)),
        "ece": expected_calibration_error(y, s),
        "prevalence": prevalence,
        "baseline_accuracy": max(prevalence, 1 - prevalence),
        "baseline_auprc": prevalence,
        "baseline_brier": prevalence * (1 - prevalence),
    }
    # a metric undefined on these patients (no positives: no sensitivity) is left out, not sent as NaN
    return {k: v for k, v in metrics.items() if np.isfinite(v)}
