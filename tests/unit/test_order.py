"""The global sample order depends on the seed alone, so any world size continues it; it is a
well-mixed permutation per epoch, computed per position without an index of the whole order."""

import math
import tracemalloc
from statistics import NormalDist

import numpy as np
import pytest

from dist_llm.data.order import GlobalOrder


def test_each_epoch_is_a_permutation_and_epochs_differ():
    order = GlobalOrder(50, seed=3)
    first, second = order.sample_ids(0, 50), order.sample_ids(50, 50)
    assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
    assert first != second


def test_reads_across_epoch_boundary_match_whole_epochs():
    order = GlobalOrder(17, seed=1)
    whole = order.sample_ids(0, 34)
    assert GlobalOrder(17, seed=1).sample_ids(10, 15) == whole[10:25]


def test_same_seed_same_order_other_seed_differs():
    assert GlobalOrder(100, 7).sample_ids(0, 100) == GlobalOrder(100, 7).sample_ids(0, 100)
    assert GlobalOrder(100, 7).sample_ids(0, 100) != GlobalOrder(100, 8).sample_ids(0, 100)


@pytest.mark.parametrize("n", [1, 2, 3, 999_983, 10**6, 2**20])
def test_whole_epoch_is_a_permutation(n):
    """Exhaustive: no repeats and no gaps, for powers of two, odd bit counts and tiny orders."""
    ids = GlobalOrder(n, seed=11).permute(np.arange(n), epoch=0)
    assert np.array_equal(np.sort(ids), np.arange(n))


def test_random_positions_of_a_billion_are_in_range_and_distinct():
    n = 10**9
    positions = np.unique(np.random.default_rng(0).integers(0, n, size=10**6))
    ids = GlobalOrder(n, seed=5).permute(positions, epoch=3)
    assert ids.min() >= 0 and ids.max() < n
    assert len(np.unique(ids)) == len(positions)


def _chi_square_critical(dof: int, p: float) -> float:
    """Upper-p critical value of chi-square (Wilson-Hilferty: within 0.1% at 99 dof)."""
    z = NormalDist().inv_cdf(1 - p)
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("n", [10**6, 999_983])
def test_first_percent_of_ids_spread_uniformly_over_positions(n):
    ids = GlobalOrder(n, seed=2).permute(np.arange(n), epoch=0)
    positions = np.empty(n, dtype=np.int64)
    positions[ids] = np.arange(n)
    bins = 100
    counts = np.bincount(positions[: n // 100] * bins // n, minlength=bins)
    expected = (n // 100) / bins
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < _chi_square_critical(bins - 1, p=0.01)


def test_epochs_are_different_permutations():
    n = 10**6
    order = GlobalOrder(n, seed=4)
    first, second = order.permute(np.arange(n), 0), order.permute(np.arange(n), 1)
    # Two independent random permutations agree on about one position.
    assert np.count_nonzero(first == second) < 10


def test_lookup_at_ten_trillion_tokens_needs_no_index():
    """2.4e9 samples (10T tokens at seq 4096): a global batch near the end of the third epoch
    allocates kilobytes, where a stored permutation would be 19 GB."""
    n = 2_400_000_000
    order = GlobalOrder(n, seed=9)
    tracemalloc.start()
    try:
        ids = order.sample_ids(3 * n - 1000, 4096)  # crosses into the fourth epoch
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert len(set(ids[:1000])) == 1000 and all(0 <= i < n for i in ids)
