"""Modality encoders, each mapping one modality to a probabilistic embedding N(mu, diag(exp(logvar))).

Every encoder is built from layers Opacus computes per-sample gradients for (Linear, Conv,
GroupNorm); there is no BatchNorm anywhere, because batch statistics mix patients and break
record-level DP-SGD. The convolutional stacks are MONAI `Convolution` blocks with GroupNorm.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

# Log-variances are squashed into (-LOGVAR_BOUND, LOGVAR_BOUND) with a tanh, a soft clamp that
# keeps exp(logvar) finite without killing the gradient the way a hard clamp does.
LOGVAR_BOUND = 8.0
INITIAL_LOGVAR = -4.0


def _groups(channels: int) -> int:
    """GroupNorm group count: up to 4 groups, always dividing the channel count."""
    return math.gcd(channels, 4)


class GaussianHead(nn.Module):
    """Linear map from features to (mu, logvar) of a diagonal Gaussian embedding."""

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.linear = nn.Linear(in_features, 2 * embed_dim)
        # start confident (sigma ~ 0.14): with unit variance the sampling noise would swamp the
        # task signal at initialisation and the embeddings collapse onto the prior
        with torch.no_grad():
            self.linear.bias[embed_dim:].fill_(INITIAL_LOGVAR)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw_logvar = self.linear(features).chunk(2, dim=-1)
        return mu, LOGVAR_BOUND * torch.tanh(raw_logvar / LOGVAR_BOUND)


class EHREncoder(nn.Module):
    """MLP over F feature values followed by F missing indicators (input `[B, 2F]`).

    The indicators are inputs in their own right: "not measured" is often informative in EHR
    data (a test is ordered because a clinician suspected something).
    """

    def __init__(self, features: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(2 * features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.embedding = GaussianHead(hidden, embed_dim)

    def forward(self, ehr: Tensor) -> tuple[Tensor, Tensor]:
        return self.embedding(self.body(ehr))


def _conv_stack(spatial_dims: int, in_channels: int, channels: Sequence[int], kernel_size: int) -> nn.Sequential:
    """Strided MONAI Convolution blocks (conv -> GroupNorm -> ReLU), each halving the resolution."""
    layers = []
    for i, out in enumerate(channels):
        layers.append(
            Convolution(
                spatial_dims=spatial_dims,
                in_channels=in_channels if i == 0 else channels[i - 1],
                out_channels=out,
                strides=2,
                kernel_size=kernel_size,
                act="relu",
                norm=("group", {"num_groups": _groups(out)}),
            )
        )
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """2D CNN over one-channel images `[B, 1, S, S]`.

    Adaptive pooling to a fixed 2x2 grid makes the parameter count independent of S (a
    flatten-then-linear head, as in MONAI's `Regressor`, grows with S² and would dominate the
    size of every federated update at S = 512) while keeping coarse spatial layout.
    """

    POOLED = 2

    def __init__(self, channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_stack(2, 1, channels, kernel_size=3),
            nn.AdaptiveAvgPool2d(self.POOLED),
            nn.Flatten(),
        )
        self.embedding = GaussianHead(channels[-1] * self.POOLED**2, embed_dim)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.embedding(self.body(image))


class SignalEncoder(nn.Module):
    """1D CNN over wearable windows `[B, C, L]` (two strided Conv1d + GroupNorm blocks)."""

    POOLED = 4

    def __init__(self, channels: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_stack(1, channels, (hidden, hidden), kernel_size=5),
            nn.AdaptiveAvgPool1d(self.POOLED),
            nn.Flatten(),
        )
        self.embedding = GaussianHead(hidden * self.POOLED, embed_dim)

    def forward(self, signal: Tensor) -> tuple[Tensor, Tensor]:
        return self.embedding(self.body(signal))
