"""Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine Robust
Optimization", ICML).

Starting from a centre v, repeat `iterations` times:
    v <- v + (1/n) * sum_i clip(x_i - v, tau),   clip(z, tau) = z * min(1, tau / ||z||)
The centre is the previous round's aggregate when this rule object has one (the paper's
momentum-like history; the coordinator keeps the object across rounds, or restores `centre`),
otherwise the coordinate-wise median of this round's updates.

BREAKDOWN POINT: the paper proves convergence for a Byzantine fraction delta up to 0.1 (with
momentum at the silos). Independently of any assumption, one update moves the centre by at most
tau / n per iteration, so f arbitrary updates move it at most iterations * f * tau / n.

Weights are ignored, as in the paper, so that the bound above holds per silo.
"""

from __future__ import annotations

import numpy as np

from coordinator.aggregation.base import (
    AggregationError,
    AggregationResult,
    AggregationRule,
    Update,
    flatten,
    stack,
    unflatten,
)


class CenteredClipping(AggregationRule):
    """Clip each update's distance to a centre to `tau`, average, repeat `iterations` times."""

    def __init__(self, *, tau: float, iterations: int = 1, centre: Update | None = None) -> None:
        if not (np.isfinite(tau) and tau > 0):
            raise AggregationError(f"centered_clipping: tau (clipping radius, L2) must be finite and > 0, got {tau!r}")
        if int(iterations) != iterations or iterations < 1:
            raise AggregationError(f"centered_clipping: iterations must be a whole number >= 1, got {iterations!r}")
        self.tau, self.iterations = float(tau), int(iterations)
        self.centre: Update | None = None if centre is None else [np.array(a, dtype=np.float64) for a in centre]

    def state_dict(self) -> dict:
        return {"centre": self.centre}

    def load_state_dict(self, state: dict) -> None:
        centre = state.get("centre")
        self.centre = None if centre is None else [np.array(a, dtype=np.float64) for a in centre]

    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        rows = stack(updates)
        if self.centre is None:
            v, start = np.median(rows, axis=0), "median"
        else:
            v, start = flatten(self.centre), "previous aggregate"
            if v.shape != rows.shape[1:]:
                raise AggregationError(
                    f"centered_clipping: the previous aggregate has {v.size} values, this round's updates "
                    f"{rows.shape[1]}; the model changed, so reset the rule (centre=None)"
                )
        for _ in range(self.iterations):
            diff = rows - v
            norms = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            factor = np.ones_like(norms)
            far = norms > self.tau
            factor[far] = self.tau / norms[far]
            v = v + (factor @ diff) / len(rows)
        clipped = [int(i) for i in np.flatnonzero(norms > self.tau)]
        result = unflatten(v, updates[0])
        self.centre = unflatten(v, [a.astype(np.float64) for a in updates[0]])
        return AggregationResult(
            update=result,
            accepted=list(range(len(updates))),
            scores={"start": start, "distance_to_centre": {i: float(d) for i, d in enumerate(norms)}, "clipped_last_iteration": clipped},
        )
