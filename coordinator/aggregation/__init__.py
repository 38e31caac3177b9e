"""Aggregation rules: one per file, each a small class behind `AggregationRule.aggregate`.

`build_rule(spec.aggregation.rule, spec.aggregation.params)` and
`build_server_optimizer(spec.aggregation.server_optimizer, spec.aggregation.server_learning_rate)`
turn a study's `AggregationSpec` into objects; the coordinator keeps both across rounds
(centered clipping and the adaptive optimisers carry state).
"""

from __future__ import annotations

from typing import Callable, Mapping

from coordinator.aggregation.base import AggregationError, AggregationResult, AggregationRule
from coordinator.aggregation.centered_clipping import CenteredClipping
from coordinator.aggregation.fedavg import FedAvg, StreamingFedAvg
from coordinator.aggregation.krum import MultiKrum
from coordinator.aggregation.median import CoordinateMedian
from coordinator.aggregation.norm_bounding import NormBounding
from coordinator.aggregation.server_optimizer import FedAdam, FedYogi, ServerOptimizer, ServerSGD
from coordinator.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "AggregationError",
    "AggregationResult",
    "AggregationRule",
    "CenteredClipping",
    "CoordinateMedian",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "MultiKrum",
    "NormBounding",
    "RULES",
    "ServerOptimizer",
    "ServerSGD",
    "StreamingFedAvg",
    "TrimmedMean",
    "build_rule",
    "build_server_optimizer",
]

# rule name (as in AggregationSpec.rule) -> (class, {parameter: converter}); a parameter without
# a default in the class is required.
_INT, _FLOAT = "int", "float"
RULES: dict[str, tuple[Callable[..., AggregationRule], dict[str, str]]] = {
    "fedavg": (FedAvg, {}),
    "median": (CoordinateMedian, {}),
    "trimmed_mean": (TrimmedMean, {"beta": _FLOAT}),
    "krum": (MultiKrum, {"f": _INT, "m": _INT}),
    "centered_clipping": (CenteredClipping, {"tau": _FLOAT, "iterations": _INT}),
    "norm_bounding": (NormBounding, {"bound": _FLOAT}),
}
_REQUIRED = {"centered_clipping": ("tau",), "norm_bounding": ("bound",)}


def build_rule(rule: str, params: Mapping[str, float] | None = None) -> AggregationRule:
    """The rule named in a study's `aggregation` section, with its parameters checked."""
    params = dict(params or {})
    if rule not in RULES:
        raise AggregationError(f"unknown aggregation rule {rule!r}; known rules: {', '.join(RULES)}")
    cls, known = RULES[rule]
    unknown = sorted(set(params) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise AggregationError(f"unknown parameter {unknown[0]!r} for aggregation rule {rule!r}; it takes: {allowed}")
    missing = [p for p in _REQUIRED.get(rule, ()) if p not in params]
    if missing:
        raise AggregationError(f"aggregation rule {rule!r} needs parameter {missing[0]!r} in aggregation.params")
    kwargs = {}
    for name, value in params.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise AggregationError(f"aggregation rule {rule!r}: parameter {name!r} must be a number, got {value!r}")
        if known[name] == _INT:
            if not float(value).is_integer():
                raise AggregationError(f"aggregation rule {rule!r}: parameter {name!r} must be a whole number, got {value!r}")
            value = int(value)
        kwargs[name] = value
    return cls(**kwargs)


def build_server_optimizer(name: str, lr: float) -> ServerOptimizer:
    """`none` is x + lr * delta (plain FedAvg at lr = 1); `fedadam` / `fedyogi` per Reddi 2021."""
    optimisers = {"none": ServerSGD, "fedadam": FedAdam, "fedyogi": FedYogi}
    if name not in optimisers:
        raise AggregationError(f"unknown server optimizer {name!r}; known: {', '.join(optimisers)}")
    return optimisers[name](lr=lr)
