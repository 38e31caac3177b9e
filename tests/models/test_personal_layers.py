"""Personal layers are trained at the silo and never appear in the update it sends (real trainer, real Opacus)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from coordinator.api.study import CohortSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from pipelines.models import get_shared_weights, shared_parameter_names
from silo_node.trainer import LocalTrainer

S, L = 8, 8


def silo_data(n: int, features: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=g) < 0.5).float()
    ehr = torch.randn(n, 2 * features, generator=g)
    ehr[:, features:] = 0.0  # no missing values
    ehr[:, 0] += 2 * label
    image = torch.randn(n, 1, S, S, generator=g) + label.view(n, 1, 1, 1)
    signal = torch.randn(n, 4, L, generator=g)
    mask = torch.ones(n, 3)
    mask[::3, 2] = 0.0
    return TensorDataset(ehr, image, signal, mask, label)


@pytest.mark.parametrize("dp", [False, True])
@pytest.mark.parametrize("signal_encoder", ["cnn", "gru"])
def test_personal_layers_never_leave_the_silo(dp, signal_encoder):
    spec = StudySpec(
        name="personal",
        cohort=CohortSpec(image_size=S, signal_length=L),
        model=ModelSpec(image_encoder="cnn", embed_dim=4, ehr_hidden=8, image_channels=(4,), signal_hidden=4,
                        signal_encoder=signal_encoder, personal_layers=("head", "fusion.gate")),
        training=TrainingSpec(rounds=1, batch_size=8, learning_rate=0.05),
        privacy=PrivacySpec(dp=dp, noise_multiplier=0.5 if dp else None, target_epsilon=None if dp else 8.0,
                            encryption="none"),
    )
    features = len(spec.cohort.features)
    trainer = LocalTrainer(spec, silo_data(32, features, 0), silo_data(16, features, 1))
    names = shared_parameter_names(trainer.model, trainer.personal)
    assert names and not any(n.startswith(("head.", "fusion.gate.")) for n in names)
    personal_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n not in names}
    assert personal_before  # the head and the gate are personal here
    global_weights = get_shared_weights(trainer.model, trainer.personal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG advice
        result = trainer.train_round(global_weights, noise_multiplier=0.5 if dp else None, round_seed=7)
    # the update holds exactly the shared parameters, in order, with their shapes ...
    shapes = dict(trainer.model.named_parameters())
    assert [d.shape for d in result.delta] == [tuple(shapes[n].shape) for n in names]
    assert all(d.dtype == np.float32 and np.isfinite(d).all() for d in result.delta)
    assert any(np.abs(d).sum() > 0 for d in result.delta)
    # ... while the personal layers did train, locally
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[n], before) for n, before in personal_before.items())
    # and loading the next global model leaves them as the silo trained them
    trained = {n: after[n].detach().clone() for n in personal_before}
    trainer.evaluate([w + d for w, d in zip(global_weights, result.delta)])
    assert all(torch.equal(dict(trainer.model.named_parameters())[n], trained[n]) for n in trained)
