"""Shared vs personal weights, and the FedProx proximal term.

An update on the wire is an ordered list of float32 arrays, one per *shared* parameter, in
`named_parameters()` order (docs/internals.md). Personal layers (Li et al. 2021, FedBN-style
personalisation; here by parameter-name prefix such as "head") never leave the silo.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ModelConfigError, WeightsMismatchError


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside an Opacus `GradSampleModule` (whose names gain `_module.`)."""
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


def _is_personal(name: str, prefixes: Sequence[str]) -> bool:
    # match at a dot boundary: "head" keeps "head.0.weight" local but not "header.weight"
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def shared_parameters(model: nn.Module, personal_layers: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs of the shared parameters, in `named_parameters()` order.

    Raises ModelConfigError for a prefix that matches no parameter: a typo there would
    silently send layers the study meant to keep at the hospital.
    """
    if isinstance(personal_layers, str):
        raise ModelConfigError(f"personal_layers must be a list of prefixes, got the string {personal_layers!r}")
    named = list(unwrap(model).named_parameters())
    for prefix in personal_layers:
        if not any(_is_personal(name, (prefix,)) for name, _ in named):
            top = sorted({name.split(".")[0] for name, _ in named})
            raise ModelConfigError(
                f"personal layer prefix {prefix!r} matches no parameter of the model; "
                f"use a parameter-name prefix such as one of {top}"
            )
    return [(name, p) for name, p in named if not _is_personal(name, personal_layers)]


def shared_parameter_names(model: nn.Module, personal_layers: Sequence[str]) -> list[str]:
    """Names of the shared parameters, in `named_parameters()` order (the update's layout)."""
    return [name for name, _ in shared_parameters(model, personal_layers)]


def get_shared_weights(model: nn.Module, personal_layers: Sequence[str]) -> list[np.ndarray]:
    """Float32 copies of the shared parameters, in `shared_parameter_names` order."""
    return [p.detach().cpu().numpy().astype(np.float32, copy=True) for _, p in shared_parameters(model, personal_layers)]


def set_shared_weights(model: nn.Module, personal_layers: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    """Load shared weights in place; personal layers are left as they are.

    Everything is checked before anything is written, so a bad update leaves the model intact.
    """
    params = shared_parameters(model, personal_layers)
    arrays = list(arrays)
    if len(arrays) != len(params):
        raise WeightsMismatchError(
            f"expected {len(params)} shared weight arrays, got {len(arrays)}; the update was made for a "
            f"different model or different personal_layers (here {list(personal_layers)})"
        )
    for (name, p), array in zip(params, arrays):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(p.shape):
            raise WeightsMismatchError(
                f"shared weight {name!r} must have shape {list(p.shape)}, got {list(array.shape)}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsMismatchError(f"shared weight {name!r} must be floating point, got dtype {array.dtype}")
        if not np.isfinite(array).all():
            raise WeightsMismatchError(f"shared weight {name!r} contains NaN or Inf; refusing to load it")
    with torch.no_grad():
        for (_, p), array in zip(params, arrays):
            p.copy_(torch.as_tensor(np.asarray(array), dtype=p.dtype, device=p.device))


def fedprox_term(model: nn.Module, global_weights: Mapping[str, Tensor], mu: float) -> Tensor:
    """FedProx proximal term μ/2·Σ‖w − w_global‖² over the parameters named in `global_weights`.

    `global_weights` maps shared parameter names to the round's global values (personal layers
    are simply absent). Li et al. 2020, "Federated Optimization in Heterogeneous Networks".
    Under Opacus the optimizer replaces `p.grad` with the clipped, noised per-sample gradients,
    so this term's gradient is lost if it is only added to the loss; a DP trainer should add
    μ·(w − w_global) to `p.grad` after the privacy step instead (it touches no patient data).
    """
    params = dict(unwrap(model).named_parameters())
    first = next(iter(params.values()))
    total = first.new_zeros(())
    for name, target in global_weights.items():
        if name not in params:
            raise WeightsMismatchError(f"global weight {name!r} is not a parameter of this model")
        p = params[name]
        if tuple(target.shape) != tuple(p.shape):
            raise WeightsMismatchError(f"global weight {name!r} must have shape {list(p.shape)}, got {list(target.shape)}")
        total = total + (p - target.to(device=p.device, dtype=p.dtype)).pow(2).sum()
    return 0.5 * mu * total
