"""The global sample order depends on the seed alone, so any world size continues it."""

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
