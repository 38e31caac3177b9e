"""The one interface every aggregation rule implements, and the checks they all share.

A rule turns the updates of one round (each an ordered list of float arrays, one per shared
parameter) and their weights (normally the silo's sample count) into one update. It also says
which updates it used and which it refused, and why, so that the coordinator can audit it.
Flower's `Strategy` is the model: one small class per rule, one method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

Update = list[np.ndarray]


class AggregationError(ValueError):
    """Updates or parameters an aggregation rule cannot use; the message says which and why."""


@dataclass(frozen=True)
class AggregationResult:
    """What a rule made of one round.

    `accepted` and `refused` hold indices into the list of updates given to `aggregate`;
    `refused` maps each left-out update to a human-readable reason for the audit log.
    `scores` holds rule-specific numbers (Krum scores, distances, norms), keyed by name.
    """

    update: Update
    accepted: list[int]
    refused: dict[int, str] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)


class AggregationRule(ABC):
    """Combine one round of updates into one. Subclasses implement `_combine` only."""

    #: fewest updates the rule can work with; subclasses that need more check in `_combine`.
    min_updates: int = 1

    def aggregate(self, updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> AggregationResult:
        """Validate the round's updates once, then apply the rule.

        Raises AggregationError when the updates disagree in count, shape or dtype kind, hold
        NaN/Inf, or a weight is not a finite positive number.
        """
        checked, w = validate_updates(updates, weights)
        if len(checked) < self.min_updates:
            raise AggregationError(
                f"{type(self).__name__} needs at least {self.min_updates} updates, got {len(checked)}"
            )
        return self._combine(checked, w)

    def fewest_updates(self) -> int:
        """The fewest updates this rule, with its parameters, can aggregate (an asynchronous study's
        buffer must hold at least this many: coordinator/buffer.py)."""
        return self.min_updates

    @abstractmethod
    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        """Apply the rule to updates already checked by `validate_updates`."""

    def state_dict(self) -> dict[str, Any]:
        """What the rule carries from one round to the next (none, unless a rule says so)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if isinstance(v, (int, float, str)))
        return f"{type(self).__name__}({params})"


# -- shared checks and helpers ------------------------------------------------------------------


def validate_updates(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> tuple[list[Update], np.ndarray]:
    """Check a round's updates against the first one; return them as lists and weights as float64."""
    if len(updates) == 0:
        raise AggregationError("no updates to aggregate: the round has no accepted silo update")
    if len(weights) != len(updates):
        raise AggregationError(f"got {len(updates)} updates but {len(weights)} weights; give one weight per update")
    try:
        w = np.asarray(weights, dtype=np.float64).reshape(len(weights))
    except (TypeError, ValueError):
        raise AggregationError(f"weights must be numbers (sample counts), got {list(weights)!r}") from None
    bad = [i for i, x in enumerate(w) if not (np.isfinite(x) and x > 0)]
    if bad:
        raise AggregationError(
            f"weight of update {bad[0]} is {weights[bad[0]]!r}; weights must be finite and > 0 (sample counts)"
        )
    reference = updates[0]
    checked = []
    for i, update in enumerate(updates):
        if isinstance(update, np.ndarray) or not isinstance(update, Sequence):
            raise AggregationError(f"update {i} is a {type(update).__name__}; expected a list of numpy arrays")
        if len(update) != len(reference):
            raise AggregationError(f"update {i} has {len(update)} arrays, update 0 has {len(reference)}")
        for j, a in enumerate(update):
            check_array(a, where=f"update {i}, array {j}", like=reference[j])
        checked.append(list(update))
    return checked, w


def check_array(a: object, *, where: str, like: object) -> None:
    """One array of one update: a finite float ndarray shaped like the reference."""
    if not isinstance(a, np.ndarray):
        raise AggregationError(f"{where} is a {type(a).__name__}; expected a numpy array")
    if a.dtype.kind != "f":
        raise AggregationError(f"{where} has dtype {a.dtype}; expected a float dtype (float32 on the wire)")
    if isinstance(like, np.ndarray) and a.shape != like.shape:
        raise AggregationError(f"{where} has shape {a.shape}, update 0 has {like.shape}; the model does not match")
    if not np.isfinite(a).all():
        raise AggregationError(f"{where} holds NaN or Inf; the silo's training diverged or the update is corrupt")


def flatten(update: Update) -> np.ndarray:
    """One float64 vector of all arrays of an update, in order."""
    if not update:
        return np.zeros(0)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in update])


def unflatten(vector: np.ndarray, like: Update) -> Update:
    """Split a flat vector back into arrays shaped and typed like `like`."""
    out, start = [], 0
    for a in like:
        out.append(vector[start : start + a.size].reshape(a.shape).astype(a.dtype))
        start += a.size
    return out


def stack(updates: list[Update]) -> np.ndarray:
    """Updates as rows of an (n, model size) float64 matrix."""
    return np.stack([flatten(u) for u in updates])


def weighted_mean(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights @ rows) / weights.sum()

