"""Errors raised by pipelines.models: one hierarchy, messages that say what to do."""

from __future__ import annotations


class ModelError(Exception):
    """Base class for every error raised by pipelines.models."""


class ModelConfigError(ModelError, ValueError):
    """The model cannot be built from these arguments (bad study spec `model` section)."""


class ModelInputError(ModelError, ValueError):
    """A batch given to the model or the loss has the wrong shape, dtype or values."""


class WeightsMismatchError(ModelError, ValueError):
    """Shared weights (an update or a global model) do not fit this model's parameters."""
