"""Norm bounding and multi-Krum on decrypted scalars, for updates the coordinator cannot read.

Under CKKS (`ckks-screen`) the coordinator computes encrypted squared norms (norm bounding) or
pairwise squared distances (multi-Krum) with `privacy.he.screening.Screener`; a silo decrypts
those scalars only. This module turns the scalars into the SAME decisions the plaintext rules
(`NormBounding`, `MultiKrum`) make on the same updates: which updates are summed, and with
which factor. The coordinator then adds each accepted ciphertext with weight
`decision.sum_weights[i]` into an `EncryptedSum`; the silo that decrypts the sum multiplies
the average by `decision.post_scale` (the sum divides by the weights it was given, the plaintext
rule by its own denominator). `encrypted_aggregate` does both steps for the coordinator.

The decisions follow from the scalars by the plaintext rules' own formulas (scale =
min(1, bound / norm); Krum score = sum of the n - f - 2 smallest squared distances, lowest m
kept, ties to the earlier update), so they differ only where the CKKS error (~1e-9 relative,
see privacy/he/screening.py) flips a comparison that is a tie to that precision. Breakdown
points are the plaintext rules' (see norm_bounding.py and krum.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from coordinator.aggregation.base import AggregationError
from coordinator.aggregation.krum import MultiKrum
from coordinator.aggregation.norm_bounding import NormBounding


@dataclass(frozen=True)
class ScreenedDecision:
    """What to sum: `sum_weights[i]` for each accepted update i; `post_scale` for the average."""

    accepted: list[int]
    factors: dict[int, float]  # norm factor on each accepted update (1.0: unchanged)
    sum_weights: dict[int, float]  # weight to pass to EncryptedSum.add, per accepted update
    divisor: float  # the plaintext rule's denominator (sum of weights, or m for multi-Krum)
    refused: dict[int, str] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def post_scale(self) -> float:
        """Multiply the decrypted EncryptedSum average by this to get the rule's result."""
        return sum(self.sum_weights.values()) / self.divisor


def scalars_needed(rule: NormBounding | MultiKrum, n: int) -> dict[str, list]:
    """Which scalars to compute and decrypt for `n` updates: norms and/or index pairs."""
    if isinstance(rule, NormBounding):
        return {"sq_norms": list(range(n)), "sq_distances": []}
    if isinstance(rule, MultiKrum):
        return {"sq_norms": [], "sq_distances": [(i, j) for i in range(n) for j in range(i + 1, n)]}
    raise AggregationError(f"{type(rule).__name__} cannot run under encryption; use norm_bounding or krum "
                           "(or encryption = 'none')")


def decide(rule: NormBounding | MultiKrum, weights: Sequence[float], *, sq_norms: Sequence[float] | None = None,
           sq_distances: Mapping[tuple[int, int], float] | np.ndarray | None = None) -> ScreenedDecision:
    """The plaintext rule's decision, from decrypted squared norms or pairwise squared distances."""
    w = _weights(weights)
    if isinstance(rule, NormBounding):
        if sq_norms is None or len(sq_norms) != len(w):
            raise AggregationError(f"norm_bounding under encryption needs {len(w)} squared norms, got "
                                   f"{None if sq_norms is None else len(sq_norms)}")
        return _norm_bounding(rule, w, _finite_nonnegative(sq_norms, "squared norm"))
    if isinstance(rule, MultiKrum):
        if sq_distances is None:
            raise AggregationError("krum under encryption needs the pairwise squared distances")
        return _multi_krum(rule, _distance_matrix(sq_distances, len(w)))
    raise AggregationError(f"{type(rule).__name__} cannot run under encryption; use norm_bounding or krum")


def _norm_bounding(rule: NormBounding, w: np.ndarray, sq_norms: np.ndarray) -> ScreenedDecision:
    norms = np.sqrt(sq_norms)
    factor = np.ones_like(norms)
    far = norms > rule.bound
    factor[far] = rule.bound / norms[far]
    n = len(w)
    return ScreenedDecision(
        accepted=list(range(n)),
        factors={i: float(factor[i]) for i in range(n)},
        sum_weights={i: float(w[i] * factor[i]) for i in range(n)},
        divisor=float(w.sum()),
        scores={"norm": {i: float(x) for i, x in enumerate(norms)}, "scaled": [int(i) for i in np.flatnonzero(far)]},
    )


def _multi_krum(rule: MultiKrum, distances: np.ndarray) -> ScreenedDecision:
    n = len(distances)
    if n <= 2 * rule.f + 2:
        raise AggregationError(f"krum: {n} updates cannot tolerate f={rule.f} arbitrary ones; Krum needs n > 2f + 2 "
                               f"(at least {2 * rule.f + 3} updates): lower f or wait for more silos")
    if rule.m > n - rule.f:
        raise AggregationError(f"krum: m={rule.m} would keep more than the n - f = {n - rule.f} honest updates")
    d = distances.copy()
    np.fill_diagonal(d, np.inf)
    score = np.sort(d, axis=1)[:, : n - rule.f - 2].sum(axis=1)
    order = np.argsort(score, kind="stable")
    kept = sorted(int(i) for i in order[: rule.m])
    refused = {int(i): f"multi-Krum score {score[i]:.6g} ranks {rank + 1} of {n}; only the {rule.m} lowest are kept "
                       f"(f={rule.f}); computed under encryption"
               for rank, i in enumerate(order) if rank >= rule.m}
    return ScreenedDecision(accepted=kept, factors={i: 1.0 for i in kept}, sum_weights={i: 1.0 for i in kept},
                            divisor=float(rule.m), refused=refused,
                            scores={"krum": {i: float(s) for i, s in enumerate(score)}})


def encrypted_aggregate(public_ctx: bytes, updates: Sequence[bytes], decision: ScreenedDecision, *, n_values: int,
                        mode: str = "screen") -> tuple[bytes, float, float]:
    """Sum the accepted ciphertexts with their decided weights (coordinator, public context).

    Returns (encrypted sum, total weight to pass to `decrypt_average`, post_scale). The weight
    resolution is fixed from the largest possible total, so small norm factors cannot exhaust
    the sum's headroom.
    """
    from privacy.he import EncryptedSum
    from privacy.he.params import mode_params

    p = mode_params(mode)
    total = sum(decision.sum_weights.values())
    unit = 2.0 ** (math.floor(math.log2(total)) - p.weight_bits)
    agg = EncryptedSum(public_ctx, n_values, mode, weight_unit=unit)
    for i in decision.accepted:
        agg.add(updates[i], decision.sum_weights[i])
    return agg.result(), total, decision.post_scale


# -- checks --------------------------------------------------------------------------------------


def _weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) == 0:
        raise AggregationError("no updates to screen")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise AggregationError(f"weights must be finite and > 0 (sample counts), got {list(weights)!r}")
    return w


def _finite_nonnegative(values: Sequence[float], what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(v) | (v < 0))
    if len(bad):
        raise AggregationError(f"{what} of update {bad[0]} is {v[bad[0]]!r}; a decrypted {what} is finite and >= 0 "
                               "(wrong key or corrupted scalar)")
    return v


def _distance_matrix(sq_distances: Mapping[tuple[int, int], float] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(sq_distances, np.ndarray):
        d = np.asarray(sq_distances, dtype=np.float64)
        if d.shape != (n, n) or not np.allclose(d, d.T, rtol=0, atol=0):
            raise AggregationError(f"squared distances must be a symmetric {n}x{n} matrix, got shape {d.shape}")
    else:
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                if (i, j) not in sq_distances:
                    raise AggregationError(f"squared distance between updates {i} and {j} is missing")
                d[i, j] = d[j, i] = sq_distances[(i, j)]
    _finite_nonnegative(d.ravel(), "squared distance")
    return d
