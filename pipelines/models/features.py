"""Fixed, hand-crafted feature extractors for images and wearable signals: DP-friendly encoders.

DP-SGD adds noise of the same scale to every trained coordinate, so the noise in an update
grows with √(parameters) while the clipped signal does not; at the few hundred patients a
hospital has, a convolutional encoder trained from scratch learns nothing under DP at ε = 8.
Tramèr & Boneh (2021, "Differentially Private Learning Needs Better Features (or Much More
Data)") show that a linear model on fixed hand-crafted features beats end-to-end deep models
under DP at small ε. These extractors have no parameters (nothing to clip, nothing to noise,
nothing to download): only the linear head on top of them is trained.

* Images: first-order statistics of the intensities, as radiomics defines them (IBSI, Zwanenburg
  et al. 2020, "first-order" family: mean, standard deviation, skewness, percentiles, maximum,
  energy above a level), over the whole image and the pixels above the image's 90th percentile,
  where a lesion's size and contrast show.
* Wearable signals: per channel mean, standard deviation, minimum, maximum and the heart-rate
  variability statistics of the time domain (Task Force of the ESC and NASPE 1996, "Heart rate
  variability: standards of measurement"): RMSSD (root mean square of successive differences)
  and the mean absolute successive difference, which pick up irregular-rhythm episodes.

Every statistic is computed per sample, so a patient's features depend on that patient alone
(record-level DP stays record-level).

The statistics are then standardised (`FeatureScaling`) with their mean and standard deviation on
the silo's training samples, as an EHR column without a reference interval is (pipelines.normalise):
their spreads differ by two orders of magnitude (on the demo's hospitals the skewness and the
bright-tail energy, among the most informative, vary by 0.01-0.02 while the quantiles vary by 0.3),
so a linear head on the raw values needs weights of ~50 on exactly the informative ones, which
DP-SGD's clipped, noisy steps do not reach within a study (measured with benchmarks/demo_learning.py:
the demo's AUROC 0.75 -> 0.83 on the same data and settings).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

IMAGE_QUANTILES = (0.5, 0.75, 0.9, 0.97, 0.99)


class ImageStatistics(nn.Module):
    """`[B, 1, ...]` image or volume -> `[B, IMAGE_FEATURES]` first-order intensity statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("quantiles", torch.tensor(IMAGE_QUANTILES), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        x = image.flatten(1)
        if x.shape[0] == 0:  # Poisson sampling can draw an empty batch
            return x.new_zeros(0, IMAGE_FEATURES)
        mean = x.mean(dim=1, keepdim=True)
        std = x.std(dim=1, keepdim=True, correction=0)
        centred = (x - mean) / std.clamp(min=1e-6)
        skewness = centred.pow(3).mean(dim=1, keepdim=True)
        q = torch.quantile(x, self.quantiles, dim=1).T  # [B, len(IMAGE_QUANTILES)]
        peak = x.amax(dim=1, keepdim=True)
        # the bright tail: how far above the 90th percentile the brightest pixels lie, and how many
        tail = (x - q[:, 2:3]).clamp(min=0)
        tail_energy = tail.pow(2).mean(dim=1, keepdim=True).sqrt()
        bright_share = (centred > 2.0).to(x.dtype).mean(dim=1, keepdim=True)
        return torch.cat([mean, std, skewness.clamp(-10, 10) / 3, q, peak, tail_energy, 10 * bright_share], dim=1)


IMAGE_FEATURES = 3 + len(IMAGE_QUANTILES) + 3  # mean, std, skewness; quantiles; peak, tail energy, bright share


class SignalStatistics(nn.Module):
    """`[B, C, L]` wearable window -> `[B, SIGNAL_STATISTICS · C]` per-channel time-domain statistics."""

    def forward(self, signal: Tensor) -> Tensor:
        diff = signal.diff(dim=2)
        parts = [
            signal.mean(dim=2),
            signal.std(dim=2, correction=0),
            signal.amin(dim=2),
            signal.amax(dim=2),
            diff.pow(2).mean(dim=2).sqrt(),  # RMSSD
            diff.abs().mean(dim=2),
        ]
        return torch.cat(parts, dim=1)


SIGNAL_STATISTICS = 6


MIN_SCALE = 1e-4  # a statistic constant on the training samples stays constant, not divided by ~0
# standardised statistics are clipped at ± this many training standard deviations: an outlier image or
# recording cannot dominate the clipped per-sample gradient (DP-SGD) of the linear head above it
FEATURE_CLIP = 10.0


class FeatureScaling(nn.Module):
    """`(x - center) / scale` per feature, clipped at ±FEATURE_CLIP; the identity until `fit` sets
    center and scale from the silo's training samples.

    The buffers are not persistent: they are no part of the update or of the released weights,
    like the EHR columns' training statistics, which also stay at the silo.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(features), persistent=False)
        self.register_buffer("scale", torch.ones(features), persistent=False)

    @torch.no_grad()
    def fit(self, features: Tensor) -> None:
        """Mean and standard deviation of `features` `[N, F]`; fewer than two samples leave the identity."""
        if features.shape[0] < 2:
            return
        self.center.copy_(features.mean(dim=0))
        self.scale.copy_(features.std(dim=0, correction=0).clamp(min=MIN_SCALE))

    def forward(self, features: Tensor) -> Tensor:
        return ((features - self.center) / self.scale).clamp(-FEATURE_CLIP, FEATURE_CLIP)
