import pytest
import torch

from equissl.launch.sampler import ResumableSampler


def test_ranks_partition_the_epoch_and_resume_mid_epoch():
    full = ResumableSampler(50, batch_size=4, seed=3, rank=0, world_size=1)
    ranks = [ResumableSampler(50, batch_size=4, seed=3, rank=r, world_size=2) for r in range(2)]
    assert full.batches_per_epoch == 12 and ranks[0].batches_per_epoch == 6
    union = set(ranks[0]) | set(ranks[1])
    assert len(union) == 48  # disjoint shards of one permutation, 2 tail items dropped
    expected = list(ranks[1])[8:]
    ranks[1].set_position(0, 2)
    assert list(ranks[1]) == expected
    assert len(ranks[1]) == len(expected)


def test_epochs_differ_and_are_reproducible():
    a, b = ResumableSampler(40, 4, seed=1), ResumableSampler(40, 4, seed=1)
    b.set_position(1, 0)
    assert list(a) != list(b)
    a.set_position(1, 0)
    assert list(a) == list(b)
    assert sorted(torch.tensor(list(a)).tolist()) == list(range(40))


def test_dataset_smaller_than_a_global_batch_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(7, batch_size=4, seed=0, world_size=2)
