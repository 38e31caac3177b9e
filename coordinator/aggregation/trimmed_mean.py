"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML).

Per coordinate, drop the k = floor(beta * n) largest and k smallest values and average the
rest. beta = 0 is the plain (unweighted) mean.

BREAKDOWN POINT: beta (per side). Up to k = floor(beta * n) arbitrary updates are trimmed
away in every coordinate; beta < 1/2 so that at least one value remains.

Weights are ignored, as in the paper: a silo's claimed sample count must not decide which
values are trimmed.
"""

from __future__ import annotations

import math

import numpy as np

from coordinator.aggregation.base import AggregationError, AggregationResult, AggregationRule, Update


class TrimmedMean(AggregationRule):
    """Mean of each coordinate after trimming a fraction `beta` of the values at each end."""

    def __init__(self, *, beta: float = 0.1) -> None:
        if not (0.0 <= beta < 0.5):
            raise AggregationError(f"trimmed_mean: beta is the fraction trimmed per side, 0 <= beta < 0.5; got {beta!r}")
        self.beta = float(beta)

    def trimmed_per_side(self, n: int) -> int:
        # The small epsilon keeps beta * n = 2.0000000000000004 style products from rounding down wrong.
        return math.floor(self.beta * n + 1e-9)

    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        n = len(updates)
        k = self.trimmed_per_side(n)
        if n - 2 * k < 1:  # cannot happen for beta < 0.5, kept as a guard for the reader
            raise AggregationError(f"trimmed_mean: trimming {k} per side leaves nothing of {n} updates")
        result = []
        for j in range(len(updates[0])):
            values = np.sort(np.stack([u[j] for u in updates]).astype(np.float64), axis=0)
            result.append(values[k : n - k].mean(axis=0).astype(updates[0][j].dtype))
        return AggregationResult(update=result, accepted=list(range(n)), scores={"trimmed_per_side": k})
