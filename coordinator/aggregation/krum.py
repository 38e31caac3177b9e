"""Krum and multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS).

Each update's score is the sum of squared Euclidean distances to its n - f - 2 nearest other
updates. The m updates with the lowest scores are kept and averaged without weights (m = 1 is
Krum); the others are refused with their score and rank. Ties in score keep the earlier update.

BREAKDOWN POINT: f of n, for any f with n > 2f + 2 (just under 1/2 as n grows). The rule
refuses to run when n <= 2f + 2, since its guarantee does not hold there.

Weights are ignored, as in the paper: a claimed sample count must not let an update in.
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
)


class MultiKrum(AggregationRule):
    """Keep the `m` updates closest to their n - f - 2 neighbours; `f` is the assumed number of
    arbitrary updates."""

    def __init__(self, *, f: int = 1, m: int = 1) -> None:
        if int(f) != f or f < 0:
            raise AggregationError(f"krum: f (updates assumed arbitrary) must be a whole number >= 0, got {f!r}")
        if int(m) != m or m < 1:
            raise AggregationError(f"krum: m (updates kept) must be a whole number >= 1, got {m!r}")
        self.f, self.m = int(f), int(m)

    def fewest_updates(self) -> int:
        """n > 2f + 2, and m <= n - f: what `_combine` checks."""
        return max(2 * self.f + 3, self.m + self.f)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Krum score of each row of an (n, d) matrix."""
        n = len(rows)
        distances = np.zeros((n, n))
        for i in range(n - 1):  # direct differences: exact ties stay ties (a Gram matrix would not)
            diff = rows[i + 1 :] - rows[i]
            distances[i, i + 1 :] = distances[i + 1 :, i] = np.einsum("ij,ij->i", diff, diff)
        np.fill_diagonal(distances, np.inf)  # a row is not its own neighbour
        neighbours = n - self.f - 2
        return np.sort(distances, axis=1)[:, :neighbours].sum(axis=1)

    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        n = len(updates)
        if n <= 2 * self.f + 2:
            raise AggregationError(
                f"krum: {n} updates cannot tolerate f={self.f} arbitrary ones; Krum needs n > 2f + 2 "
                f"(at least {2 * self.f + 3} updates): lower f or wait for more silos"
            )
        if self.m > n - self.f:
            raise AggregationError(f"krum: m={self.m} would keep more than the n - f = {n - self.f} honest updates")
        rows = stack(updates)
        score = self.scores(rows)
        order = np.argsort(score, kind="stable")
        kept = sorted(int(i) for i in order[: self.m])
        refused = {
            int(i): f"multi-Krum score {score[i]:.6g} ranks {rank + 1} of {n}; only the {self.m} lowest are kept (f={self.f})"
            for rank, i in enumerate(order)
            if rank >= self.m
        }
        mean = rows[kept].mean(axis=0)
        return AggregationResult(
            update=unflatten(mean, updates[0]),
            accepted=kept,
            refused=refused,
            scores={"krum": {i: float(s) for i, s in enumerate(score)}},
        )
