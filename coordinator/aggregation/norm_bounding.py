"""Norm bounding (Sun, Kairouz, Suresh, McMahan 2019, "Can You Really Backdoor Federated
Learning?", arXiv:1911.07963).

Every update whose L2 norm (over all its arrays) exceeds `bound` is scaled down to norm
`bound`; the result is the weighted mean.

BREAKDOWN POINT: 0 in the classical sense: an arbitrary update still moves the mean, but by at
most w_i * bound / sum(w). It limits damage (e.g. model replacement), it does not remove it;
combine with a robust rule or DP noise where that matters.
"""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import (
    AggregationError,
    AggregationResult,
    AggregationRule,
    Update,
    stack,
    unflatten,
    weighted_mean,
)


class NormBounding(AggregationRule):
    """Scale updates with L2 norm above `bound` down to it, then take the weighted mean."""

    def __init__(self, *, bound: float) -> None:
        if not (np.isfinite(bound) and bound > 0):
            raise AggregationError(f"norm_bounding: bound (largest L2 norm kept) must be finite and > 0, got {bound!r}")
        self.bound = float(bound)

    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        rows = stack(updates)
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        factor = np.ones_like(norms)
        far = norms > self.bound
        factor[far] = self.bound / norms[far]
        mean = weighted_mean(rows * factor[:, None], weights)
        return AggregationResult(
            update=unflatten(mean, updates[0]),
            accepted=list(range(len(updates))),
            scores={"norm": {i: float(x) for i, x in enumerate(norms)}, "scaled": [int(i) for i in np.flatnonzero(factor < 1)]},
        )
