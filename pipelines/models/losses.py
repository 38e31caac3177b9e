"""Training loss of the multimodal model.

Privacy note: EVERY term below is computed per sample and the batch loss is the mean of the
per-sample losses. No term compares one patient with another (no in-batch negatives as in
InfoNCE/CLIP, no batch statistics), so a patient's record only enters its own per-sample
gradient, and DP-SGD's per-sample clipping (Abadi et al. 2016) bounds that patient's influence.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ModelInputError
from .model import MultimodalOutput


def kl_to_standard_normal(mu: Tensor, logvar: Tensor, present: Tensor) -> Tensor:
    """Per-sample KL(N(mu, sigma²) || N(0, I)), summed over dimensions and present modalities.

    mu, logvar `[B, M, D]`, present `[B, M]` -> `[B]`. The prior keeps embeddings on a common
    scale across silos and stops the variances from growing without bound (Kingma & Welling 2014).
    """
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=-1)
    return (kl * present).sum(dim=-1)


def cross_modal_consistency(mu: Tensor, logvar: Tensor, present: Tensor) -> Tensor:
    """Per-sample squared Hellinger distance between present modalities' embeddings.

    For two diagonal Gaussians, per dimension (Δ = μ_i − μ_j, v = σ_i² + σ_j²):
    H² = 1 − sqrt(2σ_iσ_j / v) · exp(−Δ² / 4v), averaged over dimensions and over pairs of
    present modalities. It is variance-aware (a disagreement counts relative to the embeddings'
    uncertainty, so a noisy modality is not forced onto a clean one), 0 exactly when the
    embeddings are equal, and bounded in [0, 1]: unlike KL-type divergences it cannot blow up
    for confident embeddings and overwhelm the task loss, and it keeps each patient's
    contribution bounded. Samples with fewer than two present modalities contribute 0.
    """
    total = mu.new_zeros(mu.shape[0])
    pairs = mu.new_zeros(mu.shape[0])
    for i, j in itertools.combinations(range(mu.shape[1]), 2):
        log_v = torch.logaddexp(logvar[:, i], logvar[:, j])
        log_bc = 0.5 * (math.log(2.0) + 0.5 * (logvar[:, i] + logvar[:, j]) - log_v) - (
            (mu[:, i] - mu[:, j]).pow(2) / (4.0 * log_v.exp())
        )
        hellinger2 = -torch.expm1(log_bc).mean(dim=-1)
        both = present[:, i] * present[:, j]
        total = total + both * hellinger2
        pairs = pairs + both
    return total / pairs.clamp(min=1.0)


def per_sample_loss(
    output: MultimodalOutput,
    label: Tensor,
    mask: Tensor,
    *,
    kl_weight: float,
    consistency_weight: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Each sample's loss `[B]`, BCE + kl_weight·KL + consistency_weight·consistency, and the three terms `[B]`.

    `mask` is the data's modality mask `[B, 3]`; modalities the model has no encoder for are
    ignored whatever the mask says. DP-SGD's ghost clipping backpropagates these per-sample losses
    (privacy.dp.PrivateTraining.backward).
    """
    logits, mu, logvar = output.logits, output.mu, output.logvar
    if label.shape != logits.shape:
        raise ModelInputError(f"label must have shape {list(logits.shape)} (one 0/1 per sample), got {list(label.shape)}")
    if mask.shape != mu.shape[:2]:
        raise ModelInputError(f"mask must have shape {list(mu.shape[:2])}, got {list(mask.shape)}")
    present = (mask > 0.5).to(mu.dtype)
    if output.present is not None:  # drop modalities the data has but the model does not encode
        present = present * output.present
    terms = {"bce": F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype), reduction="none"),
             "kl": kl_to_standard_normal(mu, logvar, present),
             "consistency": cross_modal_consistency(mu, logvar, present)}
    return terms["bce"] + kl_weight * terms["kl"] + consistency_weight * terms["consistency"], terms


def multimodal_loss(
    output: MultimodalOutput,
    label: Tensor,
    mask: Tensor,
    *,
    kl_weight: float,
    consistency_weight: float,
) -> tuple[Tensor, dict[str, float]]:
    """The batch loss, the mean of `per_sample_loss`, and its parts as floats for logging."""
    per_sample, terms = per_sample_loss(output, label, mask, kl_weight=kl_weight, consistency_weight=consistency_weight)
    # sum / B equals mean for B >= 1 and stays finite for the empty batches Poisson sampling yields
    n = max(per_sample.shape[0], 1)
    loss = per_sample.sum() / n
    parts = {"loss": float(loss.detach()), **{k: float(v.detach().sum() / n) for k, v in terms.items()}}
    return loss, parts
