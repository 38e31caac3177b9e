"""The study's model as the coordinator sees it: the shared parameters' names and shapes.

The coordinator builds the same architecture as the silos from the spec (pipelines.models),
so it can create version 0 and check every update against the exact expected layout.
"""

from __future__ import annotations

import numpy as np
import torch

from coordinator.api.study import StudySpec
from coordinator.api.tensors import TensorSpec
from pipelines.models import build_model, get_shared_weights, shared_parameter_names


def initial_model(spec: StudySpec) -> tuple[list[str], list[np.ndarray]]:
    """Version 0: the spec's architecture initialised from the study seed (shared layers only)."""
    torch.manual_seed(spec.training.seed)
    model = build_model(**spec.model_arguments())
    personal = spec.model.personal_layers
    return shared_parameter_names(model, personal), get_shared_weights(model, personal)


def layout_from(names: list[str], arrays: list[np.ndarray]) -> list[TensorSpec]:
    return [TensorSpec(n, tuple(a.shape), "float32") for n, a in zip(names, arrays)]
