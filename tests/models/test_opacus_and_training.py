"""Opacus accepts the model (per-sample gradients), and the model learns a multimodal task."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from pipelines.models import build_model, fedprox_term, multimodal_loss, shared_parameter_names

F_, S, C, L = 4, 16, 2, 16


def make(fusion="moe"):
    torch.manual_seed(0)
    return build_model(
        modalities=("ehr", "image", "signal"), ehr_features=F_, image_size=S, signal_channels=C,
        signal_length=L, embed_dim=4, ehr_hidden=16, image_channels=(4, 8), signal_hidden=8, fusion=fusion,
    )


def cohort(n, seed=0):
    """Label = sign of a score made from all three modalities; about 20% of modalities missing."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, F_, generator=g)
    ehr = torch.cat([values, torch.zeros(n, F_)], dim=1)
    level = torch.randn(n, generator=g)
    image = level.view(n, 1, 1, 1) + 0.3 * torch.randn(n, 1, S, S, generator=g)
    amp = torch.randn(n, generator=g)
    t = torch.linspace(0, 6.28, L)
    signal = amp.view(n, 1, 1) * torch.sin(t).expand(n, C, L) + 0.1 * torch.randn(n, C, L, generator=g)
    mask = (torch.rand(n, 3, generator=g) > 0.2).float()
    mask[mask.sum(1) == 0, 0] = 1.0
    label = ((values[:, 0] * mask[:, 0] + level * mask[:, 1] + amp * mask[:, 2]) > 0).float()
    return ehr, image, signal, mask, label


def test_opacus_validator_accepts_the_model():
    for fusion in ("moe", "concat"):
        assert ModuleValidator.validate(make(fusion), strict=True) == []


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_dp_sgd_step_with_poisson_sampling_gives_per_sample_grads():
    model = make()
    loader = DataLoader(TensorDataset(*cohort(24)), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG advice, not relevant in a test
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
        )
    before = [p.detach().clone() for p in model.parameters()]
    global_weights = {n: p.detach().clone() for n, p in model._module.named_parameters()
                      if n in shared_parameter_names(model, ("head",))}
    steps = 0
    for ehr, image, signal, mask, label in loader:
        if len(label) == 0:  # Poisson sampling may draw an empty batch
            continue
        optimizer.zero_grad()
        out = model(ehr, image, signal, mask)
        loss, parts = multimodal_loss(out, label, mask, kl_weight=1e-3, consistency_weight=0.1)
        loss = loss + fedprox_term(model, global_weights, mu=0.01)
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in parts.values())
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad_sample is not None, name
            assert p.grad_sample.shape == (len(label), *p.shape), name
            assert torch.isfinite(p.grad_sample).all(), name
        optimizer.step()
        steps += 1
    assert steps > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    model = make()
    ehr, image, signal, mask, label = cohort(256, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(ehr, image, signal, mask)
            loss, _ = multimodal_loss(out, label, mask, kl_weight=1e-3, consistency_weight=0.1)
        model.train()
        return loss.item(), ((out.logits > 0).float() == label).float().mean().item()

    start_loss, _ = evaluate()
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        idx = torch.randint(0, 256, (32,), generator=g)
        out = model(ehr[idx], image[idx], signal[idx], mask[idx])
        loss, _ = multimodal_loss(out, label[idx], mask[idx], kl_weight=1e-3, consistency_weight=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end_loss, accuracy = evaluate()
    assert end_loss < 0.7 * start_loss
    assert accuracy > 0.8
