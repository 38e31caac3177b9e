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
from coordinator.aggregation.trimmed_mean import TrimmedMean
from coordinator.api.protocol import ProtocolError, Rule, rule_arguments
from coordinator.api.server_step import (
    FedAdam,
    FedYogi,
    ServerMomentum,
    ServerOptimizer,
    ServerSGD,
    ServerStepError,
)
from coordinator.api.server_step import build_server_optimizer as _build_server_optimizer

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
    "ServerMomentum",
    "ServerOptimizer",
    "ServerSGD",
    "StreamingFedAvg",
    "TrimmedMean",
    "build_rule",
    "build_server_optimizer",
]

RULES: dict[Rule, Callable[..., AggregationRule]] = {
    Rule.FEDAVG: FedAvg,
    Rule.MEDIAN: CoordinateMedian,
    Rule.TRIMMED_MEAN: TrimmedMean,
    Rule.KRUM: MultiKrum,
    Rule.CENTERED_CLIPPING: CenteredClipping,
    Rule.NORM_BOUNDING: NormBounding,
}


def build_rule(rule: str, params: Mapping[str, float] | None = None) -> AggregationRule:
    """The rule named in a study's `aggregation` section, its parameters checked against the
    protocol's schema (coordinator.api.protocol.RULE_PARAMETERS) and by the rule itself."""
    try:
        name = Rule(rule)
    except ValueError:
        raise AggregationError(f"unknown aggregation rule {rule!r}; known rules: {', '.join(RULES)}") from None
    try:
        kwargs = rule_arguments(name, dict(params or {}))
    except ProtocolError as e:
        raise AggregationError(str(e)) from None
    return RULES[name](**kwargs)


def build_server_optimizer(name: str, lr: float, momentum: float = 0.9) -> ServerOptimizer:
    """The study's server optimiser (coordinator.api.server_step), errors as AggregationError."""
    try:
        return _build_server_optimizer(name, lr, momentum)
    except ServerStepError as e:
        raise AggregationError(str(e)) from None
