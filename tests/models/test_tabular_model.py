"""Models sized to tabular-only studies (model.architecture = linear | mlp): shape, size, DP training, refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from coordinator.api.study import CohortSpec, ModelSpec, PrivacySpec, SpecError, StudySpec, TrainingSpec
from pipelines.models import ModelConfigError, build_model, get_shared_weights, shared_parameter_names
from silo_node.trainer import LocalTrainer


def _spec(architecture: str, personal: tuple[str, ...] = ()) -> StudySpec:
    return StudySpec(name="tabular", modalities=("ehr",), cohort=CohortSpec(image_size=8, signal_length=8),
                     model=ModelSpec(architecture=architecture, ehr_hidden=8, personal_layers=personal),
                     training=TrainingSpec(rounds=1, batch_size=16, learning_rate=0.5),
                     privacy=PrivacySpec(dp=True, noise_multiplier=0.8, target_epsilon=None, encryption="none"))


def test_linear_model_is_logistic_regression_on_values_and_indicators():
    spec = _spec("linear")
    model = build_model(**spec.model_arguments())
    f = len(spec.cohort.features)
    assert sum(p.numel() for p in model.parameters()) == 2 * f + 1
    ehr = torch.randn(5, 2 * f)
    out = model(ehr, torch.zeros(5, 1, 8, 8), torch.zeros(5, 4, 8), torch.ones(5, 3))
    assert torch.allclose(out.logits, ehr @ model.head.weight[0] + model.head.bias)
    assert out.gate[:, 0].eq(1).all() and out.gate[:, 1:].eq(0).all()


def test_mlp_trains_under_dp_and_keeps_a_personal_intercept():
    spec = _spec("mlp", personal=("head.bias",))
    f = len(spec.cohort.features)
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(64, generator=g) < 0.4).float()
    ehr = torch.randn(64, 2 * f, generator=g)
    ehr[:, 0] += 2 * y
    data = TensorDataset(ehr, torch.zeros(64, 1, 8, 8), torch.zeros(64, 4, 8), torch.ones(64, 3), y)
    trainer = LocalTrainer(spec, data, data)
    assert "head.bias" not in shared_parameter_names(trainer.model, trainer.personal)
    w = get_shared_weights(trainer.model, trainer.personal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = trainer.train_round(w, noise_multiplier=0.8, round_seed=0)
    assert result.dp_step is not None and any(np.abs(d).sum() > 0 for d in result.delta)
    assert np.isfinite(trainer.evaluate([a + d for a, d in zip(w, result.delta)])["auroc"])


def test_tabular_architecture_with_images_is_refused_at_the_spec_and_the_builder():
    with pytest.raises(ValueError, match="tabular-only studies"):
        StudySpec(name="x", model=ModelSpec(architecture="linear"))
    with pytest.raises(SpecError, match="model.architecture 'mlp' is for tabular-only"):
        StudySpec.from_json('{"name": "x", "model": {"architecture": "mlp"}}')
    args = {**_spec("linear").model_arguments(), "modalities": ("ehr", "image")}
    with pytest.raises(ModelConfigError, match="architecture 'linear' is for tabular-only"):
        build_model(**args)
