"""Small-cell suppression (with complementary cells) and the Gaussian mechanism's accounting."""

import numpy as np
import pytest

from privacy.disclosure import (GaussianNoise, cells_to_suppress, noise_multiplier_for, release_epsilon)
from privacy.errors import DPError


def test_a_single_small_cell_takes_the_smallest_other_cell_with_it() -> None:
    # 3 is below 10; alone it would be the total minus the others, so 12 (the smallest other) goes too.
    assert cells_to_suppress([40, 3, 12, 25], 10) == {1, 2}


def test_the_complementary_cell_is_never_a_zero() -> None:
    assert cells_to_suppress([40, 3, 0, 25], 10) == {1, 3}


def test_two_small_cells_protect_each_other_and_zero_is_released() -> None:
    assert cells_to_suppress([40, 3, 0, 4], 10) == {1, 3}
    assert cells_to_suppress([40, 0, 25], 10) == set()


def test_a_two_cell_table_loses_both_cells() -> None:
    assert cells_to_suppress([195, 5], 10) == {0, 1}


def test_no_suppressed_cell_is_the_total_minus_the_released_ones() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        cells = list(rng.integers(0, 30, size=rng.integers(2, 8)))
        hidden = cells_to_suppress(cells, 10)
        assert len(hidden) != 1, (cells, hidden)


def test_the_release_spends_what_was_asked_and_noise_has_the_stated_scale() -> None:
    z = noise_multiplier_for(epsilon=1.0, delta=1e-6, queries=30)
    assert release_epsilon(noise_multiplier=z, queries=30, delta=1e-6) == pytest.approx(1.0, abs=0.02)
    assert release_epsilon(noise_multiplier=z, queries=60, delta=1e-6) > 1.2  # more statistics, more ε
    noise = GaussianNoise(2.0, rng=np.random.default_rng(0))
    draws = np.array([noise.value(0.0, sensitivity=3.0) for _ in range(4000)])
    assert draws.std() == pytest.approx(6.0, rel=0.05) and noise.queries == 4000
    assert min(noise.count(1) for _ in range(100)) >= 0


def test_refusals_name_the_problem() -> None:
    with pytest.raises(DPError, match="min_cell_count"):
        cells_to_suppress([1, 2], 0)
    with pytest.raises(DPError, match="noise multiplier"):
        GaussianNoise(0.0)
