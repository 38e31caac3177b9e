"""Statistical disclosure control for released statistics: small-cell suppression and DP noise.

Suppression follows the threshold rule of official statistics (Hundepool et al., *Statistical
Disclosure Control*, Wiley 2012, ch. 5): a count of 1 to k-1 people is a *primary* suppression;
when a table's total is released and only one of its cells is suppressed, that cell would be the
total minus the others, so a *complementary* cell (the smallest other one) is suppressed too.
A count of zero reveals no person and is released.

DP noise is the Gaussian mechanism (Dwork & Roth 2014, App. A) on every released count and sum,
each with noise `noise_multiplier x` its L2 sensitivity: Q such releases are accounted as Q full-batch
steps (sample rate 1) of the same mechanism DP-SGD uses, with the RDP accountant (Mironov 2017),
so they compose exactly with the training rounds in the silo's privacy ledger.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from .dp import DPStep, epsilon_spent, noise_for_target
from .errors import DPError

#: The accountant the released statistics are entered under (the ledger's composition).
DISCLOSURE_ACCOUNTANT = "rdp"


def cells_to_suppress(cells: Sequence[int | None], min_cell_count: int) -> set[int]:
    """Indices of the cells of one table (whose total is released) to suppress.

    Primary: 0 < c < min_cell_count. Complementary: if exactly one cell is primary, also the smallest
    other non-zero cell (the first one on a tie): hiding a zero would let a reader who guesses it is
    zero take the primary cell as the total minus the released ones."""
    if min_cell_count < 1:
        raise DPError(f"min_cell_count is {min_cell_count}; expected 1 or more")
    primary = {i for i, c in enumerate(cells) if c is not None and 0 < c < min_cell_count}
    if len(primary) == 1 and len(cells) > 1:
        others = [(c or 0, i) for i, c in enumerate(cells) if i not in primary]
        nonzero = [o for o in others if o[0] > 0]
        primary.add(min(nonzero or others)[1])
    return primary


def noise_multiplier_for(*, epsilon: float, delta: float, queries: int) -> float:
    """The Gaussian noise multiplier with which `queries` releases spend at most (epsilon, delta)."""
    if queries < 1:
        raise DPError(f"{queries} statistics to release; nothing to add noise to")
    return noise_for_target(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=queries,
                            accountant=DISCLOSURE_ACCOUNTANT)


def release_step(*, noise_multiplier: float, queries: int) -> DPStep:
    """The ledger's view of one release: `queries` full-batch Gaussian steps."""
    return DPStep(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=queries)


def release_epsilon(*, noise_multiplier: float, queries: int, delta: float) -> float:
    return epsilon_spent([release_step(noise_multiplier=noise_multiplier, queries=queries)], delta=delta,
                         accountant=DISCLOSURE_ACCOUNTANT)


class GaussianNoise:
    """Adds N(0, (multiplier x sensitivity)^2) to released values, drawn from a generator seeded from the
    operating system's CSPRNG (never from the study seed: the coordinator knows that)."""

    def __init__(self, noise_multiplier: float, *, rng: np.random.Generator | None = None) -> None:
        if not (np.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise DPError(f"noise multiplier {noise_multiplier!r}; expected a finite number > 0")
        self.noise_multiplier = noise_multiplier
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self.queries = 0  # releases noised so far: what the ledger is charged for

    def value(self, x: float, *, sensitivity: float) -> float:
        self.queries += 1
        return float(x + self.rng.normal(0.0, self.noise_multiplier * sensitivity))

    def count(self, c: int) -> int:
        """A noisy count, rounded and at least 0 (post-processing, free under DP)."""
        return max(0, int(round(self.value(float(c), sensitivity=1.0))))

    def histogram(self, cells: Sequence[int]) -> list[int]:
        """A histogram is one release: a patient moves one cell by one (L2 sensitivity 1)."""
        self.queries += 1
        noisy = np.asarray(cells, dtype=np.float64) + self.rng.normal(0.0, self.noise_multiplier, size=len(cells))
        return [max(0, int(round(v))) for v in noisy]
