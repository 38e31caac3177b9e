"""A study's aggregation as one object with state: its robust rule, then its server optimiser.

Centered clipping centres on the previous aggregate and the server optimisers carry moments,
so both live across rounds (one `StudyAggregation` per study at the coordinator, or at each
silo for the server step under CKKS) and across a restart: `state_bytes` / `restore` write
and read their state as an .npz of float64 arrays (no pickle), which the coordinator keeps as
a blob named in the round's outcome.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from coordinator.aggregation import AggregationError, AggregationRule, ServerOptimizer, build_rule, build_server_optimizer
from coordinator.aggregation.base import Update
from coordinator.buffer import check_buffer_fits


class StudyAggregation:
    """`rule` combines a round's deltas; `optimizer.step(model, delta)` makes the next version."""

    def __init__(self, rule: AggregationRule, optimizer: ServerOptimizer) -> None:
        self.rule = rule
        self.optimizer = optimizer

    @classmethod
    def for_spec(cls, spec: Any) -> "StudyAggregation":
        """From a StudySpec's `aggregation` section (AggregationError names what is wrong; SpecError
        when an asynchronous study's buffer is too small for the rule)."""
        a = spec.aggregation
        rule = build_rule(a.rule, dict(a.params))
        check_buffer_fits(spec, rule)
        return cls(rule, build_server_optimizer(a.server_optimizer, a.server_learning_rate, a.server_momentum))

    def step(self, model: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> Update:
        return self.optimizer.step(model, delta)

    def state_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for prefix, state in (("rule", self.rule.state_dict()), ("opt", self.optimizer.state_dict())):
            for key, value in state.items():
                if isinstance(value, list):
                    arrays.update({f"{prefix}.{key}.{i}": np.asarray(a, dtype=np.float64) for i, a in enumerate(value)})
                elif value is not None:
                    arrays[f"{prefix}.{key}"] = np.asarray(value)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def restore(self, data: bytes) -> None:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                files = {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise AggregationError(f"stored aggregation state does not load: {e}") from None
        for prefix, target in (("rule", self.rule), ("opt", self.optimizer)):
            state: dict[str, Any] = {}
            for key, current in target.state_dict().items():
                if f"{prefix}.{key}" in files:
                    state[key] = files[f"{prefix}.{key}"].item()
                    continue
                items = sorted((int(k.rsplit(".", 1)[1]), a) for k, a in files.items()
                               if k.rsplit(".", 1)[0] == f"{prefix}.{key}")
                state[key] = [a for _, a in items] or (None if current is None or isinstance(current, list) else current)
            target.load_state_dict(state)
