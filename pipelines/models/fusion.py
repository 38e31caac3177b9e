"""Fusion of per-modality embeddings into one patient representation.

`MixtureOfExpertsFusion` is the study default: one expert per modality, mixed by a gate that
sees each embedding, its confidence and the modality mask. `ConcatFusion` is the late-fusion
baseline the benchmarks compare against.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

MODALITIES: tuple[str, ...] = ("ehr", "image", "signal")


def masked_softmax(logits: Tensor, present: Tensor) -> Tensor:
    """Softmax over present entries only; absent entries get weight exactly 0.

    Absent logits are set to -inf (not merely down-weighted), so no amount of training can
    leak weight onto a missing modality. A row with nothing present gets all-zero weights
    instead of the NaNs a softmax over only -inf would give.
    """
    any_present = present.any(dim=-1, keepdim=True)
    fill = torch.where(any_present, float("-inf"), 0.0)
    weights = torch.softmax(torch.where(present, logits, fill), dim=-1)
    return weights * any_present


def drop_modalities(present: Tensor, rate: float) -> Tensor:
    """Modality dropout: hide each present modality with probability `rate`, keeping at least one.

    Trains the fusion to cope with the missing-modality patterns it will meet at other
    hospitals (Neverova et al. 2016, ModDrop). Where every present modality was dropped, one
    of them, chosen uniformly, is kept.
    """
    if rate <= 0.0:
        return present
    kept = present & (torch.rand(present.shape, device=present.device) >= rate)
    emptied = present.any(dim=-1) & ~kept.any(dim=-1)
    scores = torch.where(present, torch.rand(present.shape, device=present.device), -1.0)
    rescue = nn.functional.one_hot(scores.argmax(dim=-1), present.shape[-1]).bool() & present
    return torch.where(emptied.unsqueeze(-1), rescue, kept)


class MixtureOfExpertsFusion(nn.Module):
    """Gated mixture of modality experts (Shazeer et al. 2017, dense gating).

    The gate logit of modality m is computed from (z_m, confidence_m, mask) only, so an absent
    modality's embedding can never influence the weights of the present ones; confidence is
    the mean log-precision -mean(logvar_m), letting the gate learn to trust sharper embeddings.
    """

    def __init__(self, modalities: Sequence[str], embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.experts = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU()) for m in self.modalities}
        )
        gate_in = embed_dim + 1 + len(MODALITIES)
        self.gate = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(gate_in, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1)) for m in self.modalities}
        )
        self.out_features = hidden

    def forward(self, z: Tensor, logvar: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """z, logvar `[B, 3, D]`, present bool `[B, 3]` -> (fused `[B, hidden]`, gate `[B, 3]`)."""
        batch = z.shape[0]
        mask = present.to(z.dtype)
        logits = []
        for i, name in enumerate(MODALITIES):
            if name in self.gate:
                confidence = -logvar[:, i].mean(dim=-1, keepdim=True)
                logits.append(self.gate[name](torch.cat([z[:, i], confidence, mask], dim=-1)))
            else:
                logits.append(z.new_zeros(batch, 1))
        gate = masked_softmax(torch.cat(logits, dim=-1), present)
        # Evidence adds up across modalities (a risk seen in the labs AND the scan is more
        # certain than either): scaling the convex mixture by the number of present modalities
        # makes a uniform gate the sum of the experts, so a missing modality removes its
        # evidence instead of handing its weight to the others. The gate stays the reported share.
        scale = present.to(z.dtype).sum(dim=-1, keepdim=True)
        fused = z.new_zeros(batch, self.out_features)
        for i, name in enumerate(MODALITIES):
            if name in self.experts:
                fused = fused + (scale * gate[:, i : i + 1]) * self.experts[name](z[:, i])
        return fused, gate


class ConcatFusion(nn.Module):
    """Late-fusion baseline: concatenate the embeddings, an absent modality's slot set to zero.

    Its `gate` output is uniform over the present modalities (it has no learned weighting).
    """

    def __init__(self, modalities: Sequence[str], embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.index = [MODALITIES.index(m) for m in self.modalities]
        self.project = nn.Sequential(nn.Linear(len(self.index) * embed_dim, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, z: Tensor, logvar: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        slots = [torch.where(present[:, i : i + 1], z[:, i], 0.0) for i in self.index]
        mask = present.to(z.dtype)
        gate = mask / mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
        return self.project(torch.cat(slots, dim=-1)), gate
