"""Weighted federated averaging (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS).

BREAKDOWN POINT: 0. A single arbitrary update moves the average arbitrarily far; use FedAvg
only when every silo is trusted, or behind norm bounding / a robust rule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from coordinator.aggregation.base import (
    AggregationError,
    AggregationResult,
    AggregationRule,
    Update,
    check_array,
)


class FedAvg(AggregationRule):
    """Mean of the updates weighted by `weights` (the silos' sample counts)."""

    def _combine(self, updates: list[Update], weights: np.ndarray) -> AggregationResult:
        stream = StreamingFedAvg()
        for update, w in zip(updates, weights):
            stream.add(update, float(w))
        return stream.result()


_BLOCK = 1 << 20


class StreamingFedAvg:
    """Weighted FedAvg accumulated as updates arrive, so the coordinator never holds a round.

    Memory is one float64 accumulator the size of the model plus a float64 scratch block of at
    most 1M values; `add` allocates nothing per update. An update that fails its
    checks raises AggregationError and leaves the running sum untouched.
    """

    def __init__(self) -> None:
        self._sums: list[np.ndarray] | None = None
        self._like: list[np.ndarray] = []  # zero-size arrays keeping shape and dtype of update 0
        self._scratch = np.zeros(0)
        self._total_weight = 0.0
        self._count = 0
        self._released = False

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: Sequence[np.ndarray], weight: float) -> None:
        where = f"update {self._count}"
        if self._released:
            raise AggregationError("this running average was released when its round closed; start a new one")
        if not (isinstance(weight, (int, float, np.number)) and np.isfinite(weight) and weight > 0):
            raise AggregationError(f"weight of {where} is {weight!r}; weights must be finite and > 0 (sample counts)")
        if isinstance(update, np.ndarray) or not isinstance(update, Sequence):
            raise AggregationError(f"{where} is a {type(update).__name__}; expected a list of numpy arrays")
        if self._sums is None:
            for j, a in enumerate(update):
                check_array(a, where=f"{where}, array {j}", like=None)
            self._sums = [np.zeros(a.shape, dtype=np.float64) for a in update]
            self._like = [np.empty((0,), dtype=a.dtype) for a in update]
            self._scratch = np.empty(min(_BLOCK, max((a.size for a in update), default=0)), dtype=np.float64)
        if len(update) != len(self._sums):
            raise AggregationError(f"{where} has {len(update)} arrays, update 0 has {len(self._sums)}")
        for j, (a, s) in enumerate(zip(update, self._sums)):
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.shape != s.shape:
                check_array(a, where=f"{where}, array {j}", like=s)
        # Check every array before touching the sums, so a bad update is refused whole. A
        # NaN/Inf makes the float64 sum non-finite, which spares a boolean mask per array.
        for j, a in enumerate(update):
            if not np.isfinite(np.sum(a, dtype=np.float64)):
                raise AggregationError(f"{where}, array {j} holds NaN or Inf; update refused")
        for a, s in zip(update, self._sums):
            flat_a, flat_s = a.reshape(-1), s.reshape(-1)
            for start in range(0, a.size, _BLOCK):  # blockwise: the scratch stays small whatever the model
                stop = min(start + _BLOCK, a.size)
                part = np.multiply(flat_a[start:stop], weight, out=self._scratch[: stop - start], dtype=np.float64)
                flat_s[start:stop] += part
        self._total_weight += float(weight)
        self._count += 1

    def result(self, *, release: bool = False) -> AggregationResult:
        """The weighted average, divided block by block into arrays of the updates' dtype.

        `release=True` frees the float64 sums afterwards (the coordinator's round is closed),
        so the next model version is built without the accumulator still resident.
        """
        if self._sums is None:
            if self._released:
                raise AggregationError("this running average was already released")
            raise AggregationError("no updates to aggregate: add at least one update before asking for the result")
        update = []
        for s, like in zip(self._sums, self._like):
            out = np.empty(s.shape, dtype=like.dtype)
            flat_s, flat_out = s.reshape(-1), out.reshape(-1)
            for start in range(0, s.size, _BLOCK):
                stop = min(start + _BLOCK, s.size)
                np.divide(flat_s[start:stop], self._total_weight, out=flat_out[start:stop], casting="same_kind")
            if not np.isfinite(np.sum(out, dtype=np.float64)):
                raise AggregationError("the weighted sum overflowed; check the weights (sample counts) for absurd values")
            update.append(out)
        if release:
            self._sums, self._scratch, self._released = None, np.zeros(0), True
        return AggregationResult(
            update=update,
            accepted=list(range(self._count)),
            scores={"total_weight": self._total_weight},
        )
