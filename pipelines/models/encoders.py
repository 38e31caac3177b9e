"""Modality encoders, each mapping one modality to a probabilistic embedding N(mu, diag(exp(logvar))).

The "features" encoders put a trained linear head on fixed statistics (pipelines.models.features):
the DP-friendly choice for a few hundred patients per hospital. Every encoder is built from layers
Opacus computes per-sample gradients for (Linear, Conv, GroupNorm, Opacus' DPGRU); there is no
BatchNorm anywhere, because batch statistics mix patients and break record-level DP-SGD. The convolutional stacks are MONAI `Convolution` blocks with GroupNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from opacus.layers import DPGRU
from torch import Tensor, nn

from .features import (
    IMAGE_FEATURES,
    SIGNAL_STATISTICS,
    FeatureScaling,
    ImageStatistics,
    SignalStatistics,
)

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


class AvgMaxPool(nn.Module):
    """Average and max pooling to a fixed grid, concatenated and flattened: `[B, C, ...] -> [B, 2·C·grid^dims]`.

    The average keeps how much of a pattern there is, the max whether a small one is there at
    all: a lesion a few pixels wide is diluted away by averaging alone (it covers ~1/50 of a
    pooling cell), and a short arrhythmia episode in a wearable window likewise.
    """

    def __init__(self, spatial_dims: int, grid: int) -> None:
        super().__init__()
        avg = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims]
        mx = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[spatial_dims]
        self.avg, self.max = avg(grid), mx(grid)
        self.cells = grid**spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.avg(x).flatten(1), self.max(x).flatten(1)], dim=1)


class ImageEncoder(nn.Module):
    """MONAI CNN over one-channel slices `[B, 1, S, S]` (spatial_dims=2) or volumes `[B, 1, D, S, S]` (3).

    Pooling to a fixed grid (2 per axis) makes the parameter count independent of the input
    size (a flatten-then-linear head, as in MONAI's `Regressor`, grows with S² or D·S² and
    would dominate the size of every federated update at S = 512) while keeping coarse spatial
    layout. GroupNorm, not InstanceNorm or BatchNorm: it normalises each sample on its own and
    Opacus computes its per-sample gradients.
    """

    POOLED = 2

    def __init__(self, channels: Sequence[int], embed_dim: int, *, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        pool = AvgMaxPool(spatial_dims, self.POOLED)
        self.body = nn.Sequential(_conv_stack(spatial_dims, 1, channels, kernel_size=3), pool)
        self.embedding = GaussianHead(2 * channels[-1] * pool.cells, embed_dim)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.embedding(self.body(image))


class SignalEncoder(nn.Module):
    """1D CNN over wearable windows `[B, C, L]` (two strided Conv1d + GroupNorm blocks)."""

    POOLED = 4

    def __init__(self, channels: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        pool = AvgMaxPool(1, self.POOLED)
        self.body = nn.Sequential(_conv_stack(1, channels, (hidden, hidden), kernel_size=5), pool)
        self.embedding = GaussianHead(2 * hidden * pool.cells, embed_dim)

    def forward(self, signal: Tensor) -> tuple[Tensor, Tensor]:
        return self.embedding(self.body(signal))


class GRUSignalEncoder(nn.Module):
    """Strided Conv1d front end, then a GRU over the shortened window `[B, C, L]`.

    The GRU is Opacus' `DPGRU` (same maths as `nn.GRU`, built from linear layers), because
    Opacus cannot compute per-sample gradients of cuDNN's fused `nn.GRU`. The front end halves
    L so the recurrent loop is half as long. Features: last hidden state and the mean over time.
    """

    def __init__(self, channels: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.front = _conv_stack(1, channels, (hidden,), kernel_size=5)
        self.gru = DPGRU(hidden, hidden, num_layers=1, batch_first=True)
        self.embedding = GaussianHead(2 * hidden, embed_dim)

    def forward(self, signal: Tensor) -> tuple[Tensor, Tensor]:
        steps = self.front(signal).transpose(1, 2)  # [B, L/2, hidden]
        if steps.shape[0] == 0:  # Poisson sampling can draw an empty batch; DPGRU cannot run on one
            return self.embedding(steps.new_zeros(0, self.embedding.linear.in_features))
        out, last = self.gru(steps)
        return self.embedding(torch.cat([last[-1], out.mean(dim=1)], dim=-1))


class FixedFeatureEncoder(nn.Module):
    """Fixed statistics (`body`, no parameters), standardised on the silo's training samples, then a
    linear Gaussian head: the only trained part."""

    def __init__(self, body: nn.Module, features: int, embed_dim: int) -> None:
        super().__init__()
        self.body = body
        self.scaling = FeatureScaling(features)
        self.embedding = GaussianHead(features, embed_dim)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.embedding(self.scaling(self.body(inputs)))


class ImageFeatureEncoder(FixedFeatureEncoder):
    """Fixed first-order radiomics statistics of a slice or volume."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__(ImageStatistics(), IMAGE_FEATURES, embed_dim)


class SignalFeatureEncoder(FixedFeatureEncoder):
    """Fixed per-channel time-domain statistics (HRV's RMSSD among them)."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__(SignalStatistics(), SIGNAL_STATISTICS * channels, embed_dim)
