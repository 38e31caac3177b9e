"""Multimodal model for fedcare studies.

Encoders per modality (EHR MLP, MONAI 2D or 3D CNN, wearable 1D CNN or GRU) produce probabilistic
embeddings; a gated mixture-of-experts fuses them, tolerating missing modalities; a task head
named `head` predicts the study label. Imports nothing from fedcare's other rooms.
"""

from pipelines.models.errors import (
    ModelConfigError,
    ModelError,
    ModelInputError,
    WeightsMismatchError,
)
from pipelines.models.fusion import MODALITIES
from pipelines.models.gate_report import mean_gate_weights
from pipelines.models.losses import (
    cross_modal_consistency,
    kl_to_standard_normal,
    multimodal_loss,
    per_sample_loss,
)
from pipelines.models.model import MultimodalModel, MultimodalOutput, build_model
from pipelines.models.weights import (
    fedprox_term,
    get_shared_weights,
    set_shared_weights,
    shared_parameter_names,
)

__all__ = [
    "MODALITIES",
    "ModelConfigError",
    "ModelError",
    "ModelInputError",
    "MultimodalModel",
    "MultimodalOutput",
    "WeightsMismatchError",
    "build_model",
    "cross_modal_consistency",
    "fedprox_term",
    "get_shared_weights",
    "kl_to_standard_normal",
    "mean_gate_weights",
    "multimodal_loss",
    "per_sample_loss",
    "set_shared_weights",
    "shared_parameter_names",
]
