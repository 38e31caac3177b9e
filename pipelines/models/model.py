"""The multimodal model: encoders -> probabilistic embeddings -> fusion -> task head."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .encoders import (
    EHREncoder,
    FixedFeatureEncoder,
    GRUSignalEncoder,
    ImageEncoder,
    ImageFeatureEncoder,
    SignalEncoder,
    SignalFeatureEncoder,
)
from .errors import ModelConfigError, ModelInputError
from .fusion import MODALITIES, ConcatFusion, MixtureOfExpertsFusion, drop_modalities

Architecture = Literal["multimodal", "linear", "mlp"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# "features": fixed statistics and a linear head (pipelines.models.features), sized for DP-SGD
ImageEncoderKind = Literal["cnn", "features"]
SignalEncoderKind = Literal["cnn", "gru", "features"]
IMAGE_ENCODERS: tuple[str, ...] = get_args(ImageEncoderKind)
SIGNAL_ENCODERS: tuple[str, ...] = get_args(SignalEncoderKind)


@dataclass(frozen=True)
class MultimodalOutput:
    """What `MultimodalModel.forward` returns; rows of absent modalities are to be ignored."""

    logits: Tensor  # [B] task logits
    mu: Tensor  # [B, 3, D] embedding means, modalities in MODALITIES order
    logvar: Tensor  # [B, 3, D] embedding log-variances
    gate: Tensor  # [B, 3] fusion weights, exactly 0 for absent (and dropped-out) modalities
    # [B, 3] 1.0 where the modality was given AND the model encodes it (before modality dropout);
    # lets the loss ignore a modality the data has but the study does not use. None: use the mask.
    present: Tensor | None = None


class MultimodalModel(nn.Module):
    """One encoder per study modality, a fusion and a task head named `head`.

    Modalities outside `modalities` have no encoder; their rows in `mu`/`logvar` are zero and
    they count as absent whatever the mask says. The inputs of absent modalities are replaced
    by zeros before encoding, so they cannot change the output or any gradient.
    `personal_layers` holds the parameter-name prefixes a silo keeps local (set by the silo from
    the study spec); the weight helpers take the prefixes explicitly.
    """

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        ehr_features: int,
        image_size: int,
        image_dims: Literal[2, 3],
        image_depth: int,
        signal_channels: int,
        signal_length: int,
        embed_dim: int,
        ehr_hidden: int,
        image_channels: Sequence[int],
        signal_hidden: int,
        signal_encoder: SignalEncoderKind,
        fusion: Literal["moe", "concat"],
        modality_dropout: float,
        image_encoder: ImageEncoderKind = "cnn",
    ) -> None:
        super().__init__()
        # canonical order, so parameter order (and thus the update layout) ignores spec order
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.ehr_features, self.image_size = ehr_features, image_size
        self.image_dims, self.image_depth = image_dims, image_depth
        self.signal_channels, self.signal_length = signal_channels, signal_length
        self.embed_dim = embed_dim
        self.modality_dropout = modality_dropout
        self.personal_layers: tuple[str, ...] = ()
        signal_encoders = {
            "cnn": lambda: SignalEncoder(signal_channels, signal_hidden, embed_dim),
            "gru": lambda: GRUSignalEncoder(signal_channels, signal_hidden, embed_dim),
            "features": lambda: SignalFeatureEncoder(signal_channels, embed_dim),
        }
        builders = {
            "ehr": lambda: EHREncoder(ehr_features, ehr_hidden, embed_dim),
            "image": lambda: (ImageFeatureEncoder(embed_dim) if image_encoder == "features"
                              else ImageEncoder(tuple(image_channels), embed_dim, spatial_dims=image_dims)),
            "signal": signal_encoders[signal_encoder],
        }
        self.encoders = nn.ModuleDict({m: builders[m]() for m in self.modalities})
        hidden = max(2 * embed_dim, 16)
        fusion_cls = MixtureOfExpertsFusion if fusion == "moe" else ConcatFusion
        self.fusion = fusion_cls(self.modalities, embed_dim, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("enabled", torch.tensor([m in self.modalities for m in MODALITIES]), persistent=False)

    @torch.no_grad()
    def fit_feature_scaling(self, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Standardise the fixed-statistics encoders (pipelines.models.features.FeatureScaling) on the
        (image, signal, mask) `batches` of the silo's training split, each modality over the samples
        that have it. Encoders with trained bodies (CNN, GRU) have nothing to fit."""
        fixed = {m: e for m, e in self.encoders.items() if isinstance(e, FixedFeatureEncoder)}
        if not fixed:
            return
        statistics: dict[str, list[Tensor]] = {m: [] for m in fixed}
        for image, signal, mask in batches:
            for m, inputs in (("image", image), ("signal", signal)):
                if m in fixed:
                    rows = mask[:, MODALITIES.index(m)] > 0.5
                    statistics[m].append(fixed[m].body(inputs[rows]))
        for m, encoder in fixed.items():
            if statistics[m]:
                encoder.scaling.fit(torch.cat(statistics[m]))

    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image input: `[1, S, S]` (2D slice) or `[1, D, S, S]` (3D volume)."""
        s = self.image_size
        return (1, s, s) if self.image_dims == 2 else (1, self.image_depth, s, s)

    def _check(self, ehr: Tensor, image: Tensor, signal: Tensor, mask: Tensor) -> None:
        batch = mask.shape[0] if mask.dim() == 2 else -1
        expected = {
            "ehr": (ehr, (batch, 2 * self.ehr_features)),
            "image": (image, (batch, *self.image_shape())),
            "signal": (signal, (batch, self.signal_channels, self.signal_length)),
        }
        if tuple(mask.shape) != (batch, len(MODALITIES)):
            raise ModelInputError(f"mask must have shape [B, 3] (ehr, image, signal), got {list(mask.shape)}")
        for name, (tensor, shape) in expected.items():
            if name in self.modalities and tuple(tensor.shape) != shape:
                raise ModelInputError(
                    f"{name} input must have shape {list(shape)} for this model (from the study's cohort "
                    f"section), got {list(tensor.shape)}; check cohort.image_size/image_dims/image_depth/signal_length/features"
                )
            if tensor.shape[:1] != mask.shape[:1]:
                raise ModelInputError(f"{name} batch size {tensor.shape[0]} differs from mask batch size {batch}")

    def forward(self, ehr: Tensor, image: Tensor, signal: Tensor, mask: Tensor) -> MultimodalOutput:
        self._check(ehr, image, signal, mask)
        present = (mask > 0.5) & self.enabled
        batch, dim = mask.shape[0], self.embed_dim
        inputs = {"ehr": ehr, "image": image, "signal": signal}
        mus, logvars = [], []
        for i, name in enumerate(MODALITIES):
            if name not in self.encoders:
                zeros = mask.new_zeros(batch, dim)
                mus.append(zeros)
                logvars.append(zeros)
                continue
            x = inputs[name]
            keep = present[:, i].view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(keep, x, 0.0)
            if not bool(torch.isfinite(x).all()):
                raise ModelInputError(f"{name} input of a present modality contains NaN or Inf")
            mu, logvar = self.encoders[name](x)
            mus.append(mu)
            logvars.append(logvar)
        mu, logvar = torch.stack(mus, dim=1), torch.stack(logvars, dim=1)
        encoded = present.to(mu.dtype)
        if self.training:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation trick
            present = drop_modalities(present, self.modality_dropout)
        else:
            z = mu
        fused, gate = self.fusion(z, logvar, present)
        return MultimodalOutput(self.head(fused).squeeze(-1), mu, logvar, gate, encoded)


def build_model(
    *,
    modalities: Sequence[str],
    ehr_features: int,
    image_size: int,
    signal_channels: int,
    signal_length: int,
    image_dims: Literal[2, 3] = 2,
    image_depth: int = 16,
    embed_dim: int = 16,
    ehr_hidden: int = 64,
    image_channels: Sequence[int] = (8, 16),
    signal_hidden: int = 32,
    signal_encoder: SignalEncoderKind = "cnn",
    fusion: Literal["moe", "concat"] = "moe",
    modality_dropout: float = 0.15,
    architecture: Architecture = "multimodal",
    image_encoder: ImageEncoderKind = "cnn",
) -> nn.Module:
    """Build the study model; the arguments are exactly `StudySpec.model_arguments()`.

    `architecture` "linear" / "mlp" builds a `TabularModel` (EHR only, sized for DP at small ε;
    pipelines.models.tabular) with `ehr_hidden` hidden units for the MLP; the encoder, fusion and
    image/signal arguments are then unused.
    """
    modalities = tuple(modalities)
    if architecture not in ARCHITECTURES:
        raise ModelConfigError(f"architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")
    if architecture != "multimodal":
        if modalities != ("ehr",) or not isinstance(ehr_features, int) or ehr_features < 1 or ehr_hidden < 1:
            raise ModelConfigError(f"architecture {architecture!r} is for tabular-only studies: it needs modalities "
                                   f"['ehr'] and at least one feature, got {list(modalities)}; use 'multimodal'")
        from .tabular import TabularModel  # tabular imports this module's output type

        return TabularModel(ehr_features=ehr_features, hidden=ehr_hidden if architecture == "mlp" else None)
    unknown = [m for m in modalities if m not in MODALITIES]
    if not modalities or unknown or len(set(modalities)) != len(modalities):
        raise ModelConfigError(
            f"modalities must be a non-empty subset of {list(MODALITIES)} without repeats, got {list(modalities)}"
        )
    positive = {
        "ehr_features": ehr_features, "image_size": image_size, "signal_channels": signal_channels,
        "signal_length": signal_length, "embed_dim": embed_dim, "ehr_hidden": ehr_hidden,
        "signal_hidden": signal_hidden, "image_depth": image_depth,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
    image_channels = tuple(image_channels)
    if not image_channels or any(not isinstance(c, int) or c < 1 for c in image_channels):
        raise ModelConfigError(f"image_channels must be a non-empty list of positive integers, got {list(image_channels)}")
    if image_dims not in (2, 3):
        raise ModelConfigError(f"image_dims must be 2 (slices) or 3 (volumes), got {image_dims!r}")
    if signal_encoder not in SIGNAL_ENCODERS:
        raise ModelConfigError(f"signal_encoder must be one of {list(SIGNAL_ENCODERS)}, got {signal_encoder!r}")
    if image_encoder not in IMAGE_ENCODERS:
        raise ModelConfigError(f"image_encoder must be one of {list(IMAGE_ENCODERS)}, got {image_encoder!r}")
    if fusion not in ("moe", "concat"):
        raise ModelConfigError(f"fusion must be 'moe' or 'concat', got {fusion!r}")
    if not 0.0 <= modality_dropout < 1.0:
        raise ModelConfigError(f"modality_dropout must be in [0, 1), got {modality_dropout!r}")
    return MultimodalModel(
        modalities=modalities, ehr_features=ehr_features, image_size=image_size, image_dims=image_dims,
        image_depth=image_depth, signal_channels=signal_channels, signal_length=signal_length,
        embed_dim=embed_dim, ehr_hidden=ehr_hidden, image_channels=image_channels, signal_hidden=signal_hidden,
        signal_encoder=signal_encoder, fusion=fusion, modality_dropout=modality_dropout, image_encoder=image_encoder,
    )
