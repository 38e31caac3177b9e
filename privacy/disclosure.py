"""Statistical disclosure control for released statistics: small-cell suppression and DP noise.

Suppression follows the threshold rule of official statistics (Hundepool et al., *Statistical
Disclosure Control*, Wiley 2012, ch. 5): a count of 1 to k-1 people is a *primary* suppression;
when a table's total is released and only one of its cells is suppressed, that cell would be the
total minus the others, so a *complementary* cell (the smallest other one) is suppressed too.
A count of zero reveals no person and is released.

DP noise goes on every released count and sum. Gaussian (Dwork & Roth 2014, App. A): each with noise
`noise_multiplier x` its L2 sensitivity, Q such releases accounted as Q full-batch steps (sample rate 1)
of the same mechanism DP-SGD uses, with the RDP accountant (Mironov 2017), so they compose exactly with
the training rounds in the silo's privacy ledger. Laplace: pure ε-DP, entered in the ledger as its
zCDP-equivalent Gaussian step (`LaplaceNoise`).
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


class ReleaseNoise:
    """DP noise on released values, drawn from a generator seeded from the operating system's CSPRNG
    (never from the study seed: the coordinator knows that). `queries` counts the releases noised,
    what the ledger is charged for; `step(queries)` is the ledger's (RDP) view of them."""

    mechanism = ""

    def __init__(self, *, rng: np.random.Generator | None = None) -> None:
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self.queries = 0

    def _draw(self, scale: float, size: int | None = None) -> np.ndarray | float:  # scale: per unit of sensitivity
        raise NotImplementedError

    def step(self, queries: int) -> DPStep:
        raise NotImplementedError

    def epsilon(self, queries: int, *, delta: float) -> float:
        raise NotImplementedError

    @property
    def unit_scale(self) -> float:
        """The noise's scale for a sensitivity of 1 (σ for Gaussian, b for Laplace)."""
        raise NotImplementedError

    def value(self, x: float, *, sensitivity: float) -> float:
        self.queries += 1
        return float(x + self._draw(self.unit_scale * sensitivity))

    def count(self, c: int) -> int:
        """A noisy count, rounded and at least 0 (post-processing, free under DP)."""
        return max(0, int(round(self.value(float(c), sensitivity=1.0))))

    def histogram(self, cells: Sequence[int]) -> list[int]:
        """A histogram is one release: a patient moves one cell by one (L1 and L2 sensitivity 1)."""
        self.queries += 1
        noisy = np.asarray(cells, dtype=np.float64) + self._draw(self.unit_scale, len(cells))
        return [max(0, int(round(v))) for v in noisy]


class GaussianNoise(ReleaseNoise):
    """N(0, (multiplier x sensitivity)^2) on each release; Q releases are Q full-batch Gaussian steps."""

    mechanism = "gaussian"

    def __init__(self, noise_multiplier: float, *, rng: np.random.Generator | None = None) -> None:
        if not (np.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise DPError(f"noise multiplier {noise_multiplier!r}; expected a finite number > 0")
        super().__init__(rng=rng)
        self.noise_multiplier = noise_multiplier

    @property
    def unit_scale(self) -> float:
        return self.noise_multiplier

    def _draw(self, scale: float, size: int | None = None) -> np.ndarray | float:
        return self.rng.normal(0.0, scale, size=size)

    def step(self, queries: int) -> DPStep:
        return release_step(noise_multiplier=self.noise_multiplier, queries=queries)

    def epsilon(self, queries: int, *, delta: float) -> float:
        return release_epsilon(noise_multiplier=self.noise_multiplier, queries=queries, delta=delta)


class LaplaceNoise(ReleaseNoise):
    """Laplace(sensitivity / epsilon_per_query) on each release (Dwork, McSherry, Nissim & Smith 2006): Q
    releases are (Q x epsilon_per_query)-DP by sequential composition, with δ = 0.

    In the ledger, whose accountant composes Gaussian steps with RDP, the release is entered as one
    full-batch Gaussian step of multiplier 1/ε: an ε-DP mechanism is (ε²/2)-zCDP (Bun & Steinke 2016,
    Prop. 1.4), whose RDP curve ε²α/2 is exactly that Gaussian step's, so the composition with
    training rounds on the same dataset stays an upper bound."""

    mechanism = "laplace"

    def __init__(self, epsilon_per_query: float, *, rng: np.random.Generator | None = None) -> None:
        if not (np.isfinite(epsilon_per_query) and epsilon_per_query > 0):
            raise DPError(f"ε per statistic {epsilon_per_query!r}; expected a finite number > 0")
        super().__init__(rng=rng)
        self.epsilon_per_query = epsilon_per_query

    @property
    def unit_scale(self) -> float:
        return 1.0 / self.epsilon_per_query

    def _draw(self, scale: float, size: int | None = None) -> np.ndarray | float:
        return self.rng.laplace(0.0, scale, size=size)

    def step(self, queries: int) -> DPStep:
        return DPStep(noise_multiplier=1.0 / self.epsilon(queries, delta=0.0), sample_rate=1.0, steps=1)

    def epsilon(self, queries: int, *, delta: float) -> float:
        return queries * self.epsilon_per_query
