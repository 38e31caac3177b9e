"""DP noise and sampling come from a secret local to the silo, never from the coordinator's round seed.

The coordinator chooses each round's seed and knows the silo's training-set size. If the noise
followed from them (torch.manual_seed(round_seed) + Opacus without secure mode), it could train
on data of the same size with the same seed, regenerate the noise and subtract it. These tests
run the real trainer with real Opacus.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from coordinator.api.study import CohortSpec, ModelSpec, PrivacySpec, StudySpec, TrainingSpec
from pipelines.models import get_shared_weights
from privacy.dp import secret_generator
from silo_node.trainer import LocalTrainer

S, L, N = 8, 8, 48


def silo_data(features: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(N, generator=g) < 0.5).float()
    ehr = torch.randn(N, 2 * features, generator=g)
    ehr[:, features:] = 0.0
    ehr[:, 0] += 2 * label
    image = torch.randn(N, 1, S, S, generator=g)
    signal = torch.randn(N, 4, L, generator=g)
    return TensorDataset(ehr, image, signal, torch.ones(N, 3), label)


def spec(dp: bool) -> StudySpec:
    return StudySpec(
        name="noise-secret",
        cohort=CohortSpec(image_size=S, signal_length=L),
        model=ModelSpec(image_encoder="cnn", signal_encoder="cnn", embed_dim=4, ehr_hidden=8, image_channels=(4,), signal_hidden=4),
        training=TrainingSpec(rounds=1, batch_size=16, learning_rate=0.05),
        privacy=PrivacySpec(dp=dp, noise_multiplier=1.0 if dp else None, target_epsilon=None if dp else 8.0,
                            max_grad_norm=1.0, encryption="none"),
    )


def delta(study: StudySpec, data: TensorDataset, round_seed: int) -> np.ndarray:
    trainer = LocalTrainer(study, data, data)
    weights = get_shared_weights(trainer.model, trainer.personal)
    result = trainer.train_round(weights, noise_multiplier=study.privacy.noise_multiplier, round_seed=round_seed)
    return np.concatenate([d.ravel() for d in result.delta])


def test_same_round_seed_gives_different_noise_under_dp():
    study = spec(dp=True)
    data = silo_data(len(study.cohort.features), seed=0)
    first, second = delta(study, data, round_seed=7), delta(study, data, round_seed=7)
    other_seed = delta(study, data, round_seed=8)
    same_seed_gap = float(np.linalg.norm(first - second))
    other_seed_gap = float(np.linalg.norm(first - other_seed))
    # Same data, same seed: the two updates differ by as much as with a different seed, i.e. the
    # seed explains none of the noise (with torch.manual_seed(round_seed) the gap was exactly 0).
    assert same_seed_gap > 0.5 * other_seed_gap > 0


def test_coordinator_view_cannot_reproduce_a_silos_update():
    """The coordinator's attack: same seed, a data set of the same size (here: the silo's own data
    but one record, which it may well know), then subtract. What remains is the noise's size."""
    study = spec(dp=True)
    features = len(study.cohort.features)
    private = silo_data(features, seed=0)
    neighbour = TensorDataset(*(torch.cat([t[:-1], u[-1:]]) for t, u in zip(private.tensors, silo_data(features, 5).tensors)))
    sent = delta(study, private, round_seed=11)
    guess = delta(study, neighbour, round_seed=11)
    residual = float(np.linalg.norm(sent - guess))
    # Without DP the same attack recovers the update up to the one changed record ...
    clear = spec(dp=False)
    clear_residual = float(np.linalg.norm(delta(clear, private, 11) - delta(clear, neighbour, 11)))
    # ... under DP the residual is as large as the update itself: the noise was not reproduced.
    assert residual > 0.5 * float(np.linalg.norm(sent))
    assert residual > 20 * clear_residual


def test_without_dp_a_round_is_reproducible_from_its_seed():
    study = spec(dp=False)
    data = silo_data(len(study.cohort.features), seed=0)
    assert np.array_equal(delta(study, data, round_seed=3), delta(study, data, round_seed=3))


def test_secret_generators_do_not_follow_the_global_seed():
    torch.manual_seed(0)
    a = torch.randn(4, generator=secret_generator())
    torch.manual_seed(0)
    b = torch.randn(4, generator=secret_generator())
    assert not torch.equal(a, b)
