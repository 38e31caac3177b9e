"""The silo's LocalTrainer: bit-identical runs without DP, validation-chosen thresholds, adaptive clipping."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from coordinator.api.study import (
    CohortSpec,
    ModelSpec,
    PrivacySpec,
    StudySpec,
    TrainingSpec,
)
from pipelines.models import get_shared_weights
from silo_node.trainer import DeviceUnavailable, LocalTrainer, pick_device

S, L = 8, 8


def silo_data(n: int, features: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=g) < 0.3).float()
    ehr = torch.randn(n, 2 * features, generator=g)
    ehr[:, features:] = 0.0
    ehr[:, 0] += 1.5 * label
    return TensorDataset(ehr, torch.randn(n, 1, S, S, generator=g), torch.randn(n, 4, L, generator=g),
                         torch.ones(n, 3), label)


def spec(*, dp: bool, clipping: str = "flat", seed: int = 0) -> StudySpec:
    return StudySpec(
        name="trainer",
        cohort=CohortSpec(image_size=S, signal_length=L),
        model=ModelSpec(image_encoder="cnn", signal_encoder="cnn", embed_dim=4, ehr_hidden=8, image_channels=(4,), signal_hidden=4),
        training=TrainingSpec(rounds=1, local_epochs=2, batch_size=16, learning_rate=0.05, seed=seed),
        privacy=PrivacySpec(dp=dp, noise_multiplier=1.0 if dp else None, target_epsilon=None if dp else 8.0,
                            encryption="none", clipping=clipping, max_grad_norm=10.0),
    )


def _trainer(s: StudySpec) -> LocalTrainer:
    f = len(s.cohort.features)
    return LocalTrainer(s, silo_data(96, f, 0), silo_data(40, f, 1), validation=silo_data(40, f, 2))


def test_same_seed_and_data_give_a_bit_identical_model_without_dp():
    runs = []
    for _ in range(2):
        t = _trainer(spec(dp=False))
        w = get_shared_weights(t.model, t.personal)
        first = t.train_round(w, noise_multiplier=None, round_seed=11)
        w = [a + d for a, d in zip(w, first.delta)]
        runs.append(t.train_round(w, noise_multiplier=None, round_seed=12).delta)
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    t = _trainer(spec(dp=False))
    other = t.train_round(get_shared_weights(t.model, t.personal), noise_multiplier=None, round_seed=99).delta
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], other))  # the round seed matters


def test_evaluate_reports_test_metrics_at_the_validation_threshold():
    t = _trainer(spec(dp=False))
    w = get_shared_weights(t.model, t.personal)
    for r in range(3):
        w = [a + d for a, d in zip(w, t.train_round(w, noise_multiplier=None, round_seed=r).delta)]
    m = t.evaluate(w)
    for key in ("auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece",
                "baseline_accuracy", "val_auroc", "val_loss", "loss", "threshold"):
        assert key in m and np.isfinite(m[key]), key
    assert m["val_threshold"] == m["threshold"] != 0.5
    assert all(isinstance(v, float) for v in m.values())


def test_adaptive_clipping_moves_the_bound_towards_the_median_norm():
    t = _trainer(spec(dp=True, clipping="adaptive"))
    w = get_shared_weights(t.model, t.personal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = t.train_round(w, noise_multiplier=1.0, round_seed=0)
    # started at 10, far above this small model's per-sample gradient norms: the bound must fall
    assert result.clip_bound is not None and result.clip_bound < 10.0 * np.exp(-0.2 * 0.3 * 5)
    assert t.clip_bound == result.clip_bound  # the next round starts from the adapted bound
    assert result.dp_step is not None and result.dp_step.noise_multiplier == 1.0  # the ledger's σ, unchanged


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_node_that_insists_on_cuda_without_a_gpu_is_refused_in_one_line():
    with pytest.raises(DeviceUnavailable) as refused:
        pick_device("cuda")
    message = str(refused.value)
    assert "\n" not in message and "sees no CUDA GPU" in message and 'device = "auto"' in message
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")


def test_a_dp_study_with_noise_multiplier_zero_is_refused_at_the_edge():
    """σ = 0 would train a whole round and only then fail at the ledger's record (privacy.dp.DPStep needs σ > 0)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        PrivacySpec(dp=True, noise_multiplier=0.0, target_epsilon=None)
    assert "noise_multiplier" in str(refused.value)
