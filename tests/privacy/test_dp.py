"""DP-SGD wrapping and accounting, checked against Google's independent dp_accounting."""

from __future__ import annotations

import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants.rdp import RDPAccountant

from privacy.dp import (
    DPStep,
    PrivateTraining,
    epsilon_spent,
    make_private,
    noise_for_target,
    would_exceed,
)
from privacy.errors import DPError

CASES = [  # (sigma, q, steps, delta)
    (1.1, 0.01, 1000, 1e-5),
    (0.8, 0.004, 3000, 1e-6),
    (2.0, 0.05, 200, 1e-5),
    (1.5, 0.02, 50, 1e-3),
]


def google_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = rdp_privacy_accountant.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return acc.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("sigma,q,steps,delta", CASES)
def test_rdp_epsilon_matches_dp_accounting(sigma, q, steps, delta):
    ours = epsilon_spent([DPStep(sigma, q, steps)], delta=delta, accountant="rdp")
    assert ours == pytest.approx(google_epsilon(sigma, q, steps, delta), rel=0.02)


def test_history_composes_like_one_event_per_round():
    history = [DPStep(1.1, 0.01, 300), DPStep(1.1, 0.01, 700)]
    assert epsilon_spent(history, delta=1e-5) == pytest.approx(google_epsilon(1.1, 0.01, 1000, 1e-5), rel=0.02)
    assert epsilon_spent([], delta=1e-5) == 0.0


def test_prv_is_close_to_and_not_above_rdp():
    step = DPStep(1.1, 0.01, 1000)
    prv = epsilon_spent([step], delta=1e-5, accountant="prv")
    rdp = epsilon_spent([step], delta=1e-5, accountant="rdp")
    assert 0.5 * rdp < prv <= rdp * 1.01


def test_noise_for_target_reaches_target():
    sigma = noise_for_target(target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=1000, accountant="rdp")
    eps = epsilon_spent([DPStep(sigma, 0.01, 1000)], delta=1e-5)
    assert 2.9 <= eps <= 3.0 + 1e-9


def test_would_exceed_checks_before_the_round():
    history = [DPStep(1.1, 0.01, 1000)]
    spent = epsilon_spent(history, delta=1e-5)
    nxt = DPStep(1.1, 0.01, 1000)
    exceeds, after = would_exceed(history, nxt, cap_epsilon=spent + 0.01, delta=1e-5)
    assert exceeds and after > spent + 0.01
    exceeds, after2 = would_exceed(history, nxt, cap_epsilon=after + 0.01, delta=1e-5)
    assert not exceeds and after2 == pytest.approx(after)


@pytest.mark.parametrize(
    "kwargs",
    [dict(delta=0.0), dict(delta=1e-5, accountant="gdp")],
)
def test_bad_arguments_raise_dp_error(kwargs):
    with pytest.raises(DPError):
        epsilon_spent([DPStep(1.0, 0.01, 10)], **kwargs)
    with pytest.raises(DPError):
        DPStep(1.0, 1.5, 10)


def test_opacus_step_clips_per_sample_and_adds_noise():
    torch.manual_seed(0)
    x = torch.randn(64, 5) * 10
    y = torch.randn(64, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = torch.nn.Linear(5, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pt = make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=0.5)
    assert isinstance(pt, PrivateTraining)
    xb, yb = next(iter(pt.data_loader))
    pt.optimizer.zero_grad()
    torch.nn.functional.mse_loss(pt.module(xb), yb).backward()
    params = [p for p in pt.module.parameters()]
    per_sample = torch.cat([p.grad_sample.reshape(len(xb), -1) for p in params], dim=1)
    assert per_sample.norm(dim=1).max() > 0.5  # large inputs: raw per-sample grads exceed the bound
    pt.optimizer.pre_step()  # clip, accumulate, add noise (what step() does before updating)
    summed_clipped = torch.cat([p.summed_grad.reshape(-1) for p in params])
    assert summed_clipped.norm() <= 0.5 * len(xb) + 1e-4  # each sample contributes ≤ max_grad_norm
    noisy = torch.cat([p.grad.reshape(-1) for p in params])
    clean = summed_clipped / pt.optimizer.expected_batch_size
    assert not torch.allclose(noisy, clean, atol=1e-3)  # Gaussian noise was added
    assert pt.engine.accountant.mechanism() == "rdp"


def _demo_shaped_model() -> torch.nn.Module:
    from pipelines.models import build_model

    return build_model(modalities=("ehr", "image", "signal"), ehr_features=3, image_size=8, signal_channels=2,
                       signal_length=16, embed_dim=4, ehr_hidden=8, image_channels=(4,), signal_hidden=4,
                       modality_dropout=0.0)


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_per_sample_gradients_equal_each_samples_own_gradient(mode):
    """Opacus' per-sample gradients (every mode we may run) against one backward pass per sample."""
    from pipelines.models import multimodal_loss

    torch.manual_seed(0)
    n = 6
    data = (torch.randn(n, 6), torch.randn(n, 1, 8, 8), torch.randn(n, 2, 16), torch.ones(n, 3),
            (torch.arange(n) % 2).float())
    model = _demo_shaped_model()
    model.training = False  # the embedding is its mean (no sampling noise); layers stay in training mode for Opacus
    reference = []
    for i in range(n):
        model.zero_grad()
        out = model(*(x[i:i + 1] for x in data[:4]))
        multimodal_loss(out, data[4][i:i + 1], data[3][i:i + 1], kl_weight=1e-3, consistency_weight=0.1)[0].backward()
        reference.append({k: p.grad.clone() for k, p in model.named_parameters()})
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=n)
    model.train()  # Opacus wraps only a model in training mode
    private = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
                           noise_multiplier=0.0, max_grad_norm=1.0, grad_sample_mode=mode)
    model.training = False
    out = private.module(*data[:4])
    loss, _ = multimodal_loss(out, data[4], data[3], kl_weight=1e-3, consistency_weight=0.1)
    loss.backward()
    for name, p in model.named_parameters():
        per_sample = p.grad_sample  # Opacus undoes the 1/n of a mean-reduced loss (loss_reduction="mean")
        for i in range(n):
            assert torch.allclose(per_sample[i], reference[i][name], atol=1e-5), (mode, name, i)


def test_ghost_clipping_sums_each_samples_own_clipped_gradient():
    """Ghost clipping computes no per-sample gradients: its backward leaves the sum over samples of each
    sample's own gradient (one backward pass per sample) scaled by min(1, C / its norm)."""
    from pipelines.models import per_sample_loss

    torch.manual_seed(0)
    n, bound = 6, 0.05  # a bound below every sample's gradient norm: each one is clipped
    data = (torch.randn(n, 6), torch.randn(n, 1, 8, 8), torch.randn(n, 2, 16), torch.ones(n, 3),
            (torch.arange(n) % 2).float())
    model = _demo_shaped_model()
    model.training = False  # the embedding is its mean (no sampling noise); layers stay in training mode for Opacus
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(n):
        model.zero_grad()
        out = model(*(x[i:i + 1] for x in data[:4]))
        per_sample_loss(out, data[4][i:i + 1], data[3][i:i + 1], kl_weight=1e-3, consistency_weight=0.1)[0].sum().backward()
        own = {name: p.grad.clone() for name, p in model.named_parameters()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in own.values()))
        assert norm > bound
        for name, g in own.items():
            expected[name] += g * bound / norm
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=n)
    model.train()
    private = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
                           noise_multiplier=0.0, max_grad_norm=bound, grad_sample_mode="ghost")
    model.training = False
    losses, _ = per_sample_loss(private.module(*data[:4]), data[4], data[3], kl_weight=1e-3, consistency_weight=0.1)
    private.backward(losses)
    for name, p in model.named_parameters():
        assert not hasattr(p, "grad_sample") or p.grad_sample is None, name  # no per-sample gradients were kept
        assert torch.allclose(p.grad, expected[name], atol=1e-5), name


def test_ghost_clipping_refuses_adaptive_clipping():
    from privacy.dp import AdaptiveClipping

    model = torch.nn.Linear(2, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    with pytest.raises(DPError, match="ghost clipping"):
        make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost", adaptive=AdaptiveClipping())


def test_adaptive_clipping_needs_count_noise_above_half_sigma():
    from privacy.dp import AdaptiveClipping

    model = torch.nn.Linear(2, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    with pytest.raises(DPError, match="noise_multiplier 3 < 2 x count_noise"):
        make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
                     noise_multiplier=3.0, max_grad_norm=1.0, adaptive=AdaptiveClipping(count_noise=1.0))
