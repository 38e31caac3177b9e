"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML).

BREAKDOWN POINT: 1/2. With n updates, any f < n/2 arbitrary updates leave every coordinate
of the result between values sent by honest silos.

Weights are ignored: a weighted median would let one silo claiming a large sample count
decide the result alone. With an even number of updates a coordinate is the mean of its two
middle values.
"""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import AggregationResult, AggregationRule, Update


class CoordinateMedian(AggregationRule):
    """Per coordinate, the median of the updates' values (weights ignored)."""

    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        result = [
            np.median(np.stack([u[j] for u in updates]), axis=0).astype(updates[0][j].dtype)
            for j in range(len(updates[0]))
        ]
        return AggregationResult(update=result, accepted=list(range(len(updates))))
