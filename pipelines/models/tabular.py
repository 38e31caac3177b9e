"""A model sized to tabular-only studies: logistic regression or a one-hidden-layer MLP on the EHR.

Under DP-SGD the noise added to every step has the same scale in every coordinate, so its
norm grows with √(number of parameters) while the clipped signal does not (Abadi et al. 2016;
Tramèr & Boneh 2021, "Differentially Private Learning Needs Better Features (or Much More
Data)": linear models on good features beat deep ones at small ε). A study of a few hundred
patients per hospital and a dozen features is such a case: the multimodal model's 31k
parameters drown in noise where 21 (linear) or ~700 (MLP, 32 hidden) do not.

The output is a `MultimodalOutput` like the multimodal model's (zero embeddings, the whole
gate on `ehr`), so losses, trainers and the weight helpers need not know which one they hold.
The final layer is named `head`, so `personal_layers = ["head"]` keeps it at the silo.
"""

from __future__ import annotations

from torch import Tensor, nn

from .errors import ModelInputError
from .fusion import MODALITIES
from .model import MultimodalOutput

EHR = MODALITIES.index("ehr")


class TabularModel(nn.Module):
    """logit = head(body(ehr)); `hidden` None: body is the identity (logistic regression)."""

    def __init__(self, *, ehr_features: int, hidden: int | None) -> None:
        super().__init__()
        self.modalities = ("ehr",)
        self.ehr_features = ehr_features
        width = 2 * ehr_features  # values, then missing indicators
        self.body = nn.Sequential(nn.Linear(width, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.head = nn.Linear(hidden or width, 1)

    def forward(self, ehr: Tensor, image: Tensor, signal: Tensor, mask: Tensor) -> MultimodalOutput:
        if ehr.dim() != 2 or ehr.shape[1] != 2 * self.ehr_features or mask.shape != (ehr.shape[0], len(MODALITIES)):
            raise ModelInputError(f"ehr must be [B, {2 * self.ehr_features}] and mask [B, 3], got {list(ehr.shape)} "
                                  f"and {list(mask.shape)}; check the cohort's features")
        batch = ehr.shape[0]
        present = mask.new_zeros(batch, len(MODALITIES))
        present[:, EHR] = 1.0
        zeros = ehr.new_zeros(batch, len(MODALITIES), 1)
        return MultimodalOutput(self.head(self.body(ehr)).squeeze(-1), zeros, zeros, present, present)
