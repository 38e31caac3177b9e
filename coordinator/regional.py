"""Hierarchical aggregation: a regional aggregator (e.g. one per hospital network) combines its
silos' updates and forwards ONE update upstream, weighted by its silos' summed weight.

    region = RegionalAggregate(rule="fedavg")            # in the clear
    region.add(update, weight) ...; update, weight = region.forward()
    # upstream: an ordinary update of weight = Σ region weights

    region = EncryptedRegionalAggregate(public_ctx, n_values, "exact", weight_unit=1.0)
    region.add(ciphertext_update, weight) ...; partial_sum, weight = region.forward()
    # upstream: EncryptedSum(..., weight_unit=1.0).add_sum(partial_sum): no decryption anywhere

Equivalence with flat aggregation: FedAvg is Σ nᵢΔᵢ / Σ nᵢ, and forwarding a region's average
with weight Σ_region nᵢ makes the upstream FedAvg exactly the flat one (float rounding
aside); under CKKS the partial sums add ciphertext by ciphertext. Robust rules (median,
Krum, ...) run inside each region and the upstream combines the regions' results: that is
a two-level rule, robust within regions, NOT equal to the flat robust rule; its breakdown
point is the rule's within each region (a region's forwarded update is trusted upstream).

Upstream, a partial sum travels as an ordinary update whose weight is the total it holds:
`EncryptedSum.add` recognises it and adds it as it is (weight units that differ by a power of
two are reconciled there), so the central coordinator needs no regional code path.

The network process around these classes (`fedcare coordinator regional --upstream ...`) is
coordinator/regional_node/. Under CKKS the study's key holder may be one of the region's silos
or any other participant: the secret is wrapped for each of the region's silos, never for the
region (coordinator/key_recipients.py), so the region holds nothing that decrypts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from coordinator.aggregation import AggregationError, StreamingFedAvg, build_rule
from coordinator.api.protocol import Rule
from privacy.he import EncryptedSum


class RegionalAggregate:
    """Plaintext regional aggregation with any of the study's rules."""

    def __init__(self, rule: str = "fedavg", params: dict[str, float] | None = None) -> None:
        self.rule, self.params = rule, dict(params or {})
        self._updates: list[list[np.ndarray]] = []
        self._weights: list[float] = []
        self._stream = StreamingFedAvg() if rule == Rule.FEDAVG else None

    def add(self, update: Sequence[np.ndarray], weight: float) -> None:
        if self._stream is not None:
            self._stream.add(update, weight)
        else:
            self._updates.append([np.asarray(a) for a in update])
        self._weights.append(float(weight))

    def forward(self) -> tuple[list[np.ndarray], float]:
        """The region's update and the weight to send it upstream with (Σ accepted weights)."""
        if not self._weights:
            raise AggregationError("the region received no update this round")
        if self._stream is not None:
            result = self._stream.result()
        else:
            result = build_rule(self.rule, self.params).aggregate(self._updates, self._weights)
        return result.update, float(sum(self._weights[i] for i in result.accepted))


class EncryptedRegionalAggregate:
    """CKKS regional aggregation: sums its silos' ciphertexts with the public context only."""

    def __init__(self, public_ctx: bytes, n_values: int, mode: str, *, weight_unit: float | None = None) -> None:
        self._sum = EncryptedSum(public_ctx, n_values, mode, weight_unit=weight_unit)  # type: ignore[arg-type]

    def add(self, update_bytes: bytes, weight: float) -> None:
        self._sum.add(update_bytes, weight)

    def forward(self) -> tuple[bytes, float]:
        """The partial encrypted sum (for `EncryptedSum.add_sum` upstream) and its total weight."""
        return self._sum.result(), self._sum.total_weight
