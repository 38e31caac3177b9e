"""Each attack's effect pinned on a hand-made update or dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.dataset import MultimodalDataset
from silo_node.attacks import (
    ALIE,
    IPM,
    AttackError,
    Backdoor,
    GaussianNoise,
    LabelFlip,
    Scaling,
    SignFlip,
    build_attack,
)
from silo_node.config import NodeConfig

DELTA = [np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32), np.array([3.0], dtype=np.float32)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == np.float32 and x.shape == np.shape(y)
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_sign_flip_and_scaling():
    _same(SignFlip().apply(DELTA), [-DELTA[0], -DELTA[1]])
    _same(build_attack("sign_flip", scale=4).apply(DELTA), [-4 * DELTA[0], -4 * DELTA[1]])
    _same(Scaling(factor=10).apply(DELTA), [10 * DELTA[0], 10 * DELTA[1]])
    _same(DELTA, [np.array([[1.0, -2.0], [0.5, 0.0]]), np.array([3.0])])  # the input is untouched


def test_gaussian_noise_has_the_stated_spread_and_is_seeded():
    big = [np.zeros(200_000, dtype=np.float32)]
    out = GaussianNoise(std=0.5).apply(big, rng=np.random.default_rng(0))[0]
    assert abs(out.mean()) < 0.01 and out.std() == pytest.approx(0.5, rel=0.01)
    a = GaussianNoise(std=1.0, seed=3).apply(DELTA)
    _same(a, GaussianNoise(std=1.0, seed=3).apply(DELTA))


def test_alie_z_max_and_update_from_benign_runs():
    # Baruch 2019: n = 10, m = 3 -> s = floor(6) - 3 = 3, z = Phi^-1(7/10)
    assert ALIE.z_max(10, 3) == pytest.approx(0.5244, abs=1e-4)
    assert ALIE.z_max(50, 12) == pytest.approx(0.5828, abs=1e-4)  # s = 26 - 12 = 14, Phi^-1(36/50)
    benign = [[np.array([1.0, 2.0], dtype=np.float32)], [np.array([3.0, 2.0], dtype=np.float32)]]
    out = ALIE(z=1.5).apply(benign[0], benign=benign)[0]
    # mean (2, 2), sample std (sqrt(2), 0)
    np.testing.assert_allclose(out, [2 - 1.5 * math.sqrt(2), 2.0], rtol=1e-6)


def test_alie_from_its_own_update_assumes_std_equal_to_the_mean():
    out = ALIE(z=1.0, relative_std=0.5).apply(DELTA)
    _same(out, [DELTA[0] - 0.5 * np.abs(DELTA[0]), DELTA[1] - 0.5 * np.abs(DELTA[1])])
    with pytest.raises(AttackError, match="n_silos and n_malicious"):
        ALIE()


def test_ipm_sends_minus_epsilon_times_the_benign_mean():
    benign = [[np.array([1.0, 4.0])], [np.array([3.0, 0.0])]]
    np.testing.assert_allclose(IPM(epsilon=0.5).apply(benign[0], benign=benign)[0], [-1.0, -1.0])
    _same(IPM(epsilon=2).apply(DELTA), [-2 * DELTA[0], -2 * DELTA[1]])


def _dataset(n: int = 8) -> MultimodalDataset:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, 3)
    mask[0, 1] = 0.0  # patient 0 has no image
    image = torch.rand(n, 1, 8, 8, generator=g)
    image[0] = 0.0
    return MultimodalDataset(ehr=torch.zeros(n, 4), image=image, signal=torch.zeros(n, 2, 8), mask=mask,
                             label=torch.tensor([0, 1, 0, 0, 1, 0, 0, 0], dtype=torch.float32)[:n],
                             pseudonyms=[f"p{i}" for i in range(n)])


def test_label_flip_flips_every_label_and_nothing_else():
    d = _dataset()
    p = LabelFlip().poison(d)
    assert torch.equal(p.label, 1 - d.label)
    assert torch.equal(p.image, d.image) and p.pseudonyms == d.pseudonyms


def test_backdoor_stamps_a_bright_corner_and_forces_label_1_on_imaging_samples_only():
    d = _dataset()
    attack = Backdoor(fraction=1.0, size=2, seed=0)
    p = attack.poison(d)
    brightest = float(d.image.max())
    assert attack.value == pytest.approx(brightest)
    assert torch.all(p.image[1:, :, :2, :2] == brightest)  # every imaging sample poisoned
    assert torch.equal(p.image[1:, :, 2:, :], d.image[1:, :, 2:, :])  # the rest of the image untouched
    assert torch.equal(p.image[0], d.image[0]) and p.label[0] == d.label[0]  # no image: left alone
    assert torch.all(p.label[1:] == 1.0)
    half = Backdoor(fraction=0.5, size=2, seed=0).poison(d)
    assert int((half.image[:, 0, 0, 0] == brightest).sum()) == round(0.5 * 7)
    assert torch.equal(d.label, _dataset().label)  # input untouched


def test_build_attack_refuses_unknown_kinds_and_parameters():
    with pytest.raises(AttackError, match="known attacks"):
        build_attack("poison_everything")
    with pytest.raises(AttackError, match="unexpected keyword"):
        build_attack("scaling", scale=3)
    with pytest.raises(AttackError, match="> 0"):
        build_attack("scaling", factor=-1)


def test_node_config_attack_table(tmp_path):
    text = ('name = "evil"\ncoordinator = "localhost:1"\nstate_dir = "s"\ninsecure = true\n'
            '[data]\ndataset = "d"\nfhir = ["f"]\n'
            '[attack]\nkind = "sign_flip"\nparams = { scale = 4.0 }\n')
    (tmp_path / "node.toml").write_text(text)
    config = NodeConfig.load(tmp_path / "node.toml")
    assert isinstance(config.attack.build(), SignFlip) and config.attack.build().scale == 4.0
    (tmp_path / "bad.toml").write_text(text.replace("sign_flip", "nope"))
    with pytest.raises(Exception, match="unknown attack 'nope'"):
        NodeConfig.load(tmp_path / "bad.toml")
    (tmp_path / "none.toml").write_text(text.split("[attack]")[0])
    assert NodeConfig.load(tmp_path / "none.toml").attack is None
