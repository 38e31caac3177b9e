"""The multimodal loss: its terms, and that every term is per sample."""

from __future__ import annotations

import pytest
import torch

from pipelines.models import (
    ModelInputError,
    MultimodalOutput,
    cross_modal_consistency,
    kl_to_standard_normal,
    multimodal_loss,
)


def output(mu, logvar, logits=None):
    b = mu.shape[0]
    return MultimodalOutput(torch.zeros(b) if logits is None else logits, mu, logvar, torch.ones(b, 3) / 3)


def test_kl_zero_at_standard_normal_and_positive_otherwise():
    zeros = torch.zeros(4, 3, 8)
    ones = torch.ones(4, 3)
    assert torch.equal(kl_to_standard_normal(zeros, zeros, ones), torch.zeros(4))
    assert (kl_to_standard_normal(zeros + 0.5, zeros, ones) > 0).all()
    assert (kl_to_standard_normal(zeros, zeros - 1.0, ones) > 0).all()
    assert (kl_to_standard_normal(zeros, zeros + 1.0, ones) > 0).all()


def test_kl_ignores_absent_modalities():
    mu = torch.zeros(2, 3, 4)
    mu[:, 1] = 3.0
    present = torch.tensor([[1.0, 0, 1], [1, 1, 1]])
    kl = kl_to_standard_normal(mu, torch.zeros_like(mu), present)
    assert kl[0] == 0 and kl[1] > 0


def test_consistency_zero_when_embeddings_equal():
    torch.manual_seed(0)
    mu = torch.randn(3, 1, 8).expand(3, 3, 8)
    logvar = torch.randn(3, 1, 8).expand(3, 3, 8)
    c = cross_modal_consistency(mu, logvar, torch.ones(3, 3))
    assert torch.allclose(c, torch.zeros(3), atol=1e-6)


def test_consistency_is_variance_aware():
    mu = torch.zeros(2, 3, 4)
    mu[:, 1] = 1.0
    logvar = torch.zeros(2, 3, 4)
    logvar[1] = 2.0  # same disagreement, less confident embeddings
    present = torch.tensor([[1.0, 1, 0], [1, 1, 0]])
    c = cross_modal_consistency(mu, logvar, present)
    assert c[0] > c[1] > 0


def test_consistency_needs_two_present_modalities():
    mu = torch.randn(2, 3, 4)
    c = cross_modal_consistency(mu, torch.zeros_like(mu), torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    assert torch.equal(c, torch.zeros(2))


def test_loss_is_mean_of_per_sample_losses():
    torch.manual_seed(0)
    mu, logvar, logits = torch.randn(5, 3, 4), torch.randn(5, 3, 4), torch.randn(5)
    label = torch.tensor([0.0, 1, 1, 0, 1])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    kw = dict(kl_weight=0.3, consistency_weight=0.7)
    loss, parts = multimodal_loss(output(mu, logvar, logits), label, mask, **kw)
    singles = [
        multimodal_loss(output(mu[i : i + 1], logvar[i : i + 1], logits[i : i + 1]), label[i : i + 1], mask[i : i + 1], **kw)[0]
        for i in range(5)
    ]
    assert torch.allclose(loss, torch.stack(singles).mean())
    assert set(parts) == {"loss", "bce", "kl", "consistency"}
    assert parts["loss"] == pytest.approx(parts["bce"] + 0.3 * parts["kl"] + 0.7 * parts["consistency"], rel=1e-5)


def test_loss_of_empty_batch_is_finite():
    loss, _ = multimodal_loss(output(torch.zeros(0, 3, 4), torch.zeros(0, 3, 4)), torch.zeros(0), torch.zeros(0, 3),
                              kl_weight=1.0, consistency_weight=1.0)
    assert loss.item() == 0.0


def test_loss_ignores_modalities_the_model_does_not_encode():
    mu = torch.randn(2, 3, 4)
    mu[:, 2] = 0.0  # the model has no signal encoder: its row is zero
    out = MultimodalOutput(torch.zeros(2), mu, torch.zeros_like(mu), torch.zeros(2, 3), torch.tensor([[1.0, 1, 0]] * 2))
    with_signal, _ = multimodal_loss(out, torch.zeros(2), torch.ones(2, 3), kl_weight=1, consistency_weight=1)
    without, _ = multimodal_loss(out, torch.zeros(2), torch.tensor([[1.0, 1, 0]] * 2), kl_weight=1, consistency_weight=1)
    assert torch.equal(with_signal, without)


def test_label_shape_is_checked():
    with pytest.raises(ModelInputError, match="label must have shape"):
        multimodal_loss(output(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), torch.zeros(2, 1), torch.ones(2, 3),
                        kl_weight=0, consistency_weight=0)
