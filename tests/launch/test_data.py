"""The run's one DataLoader: resume positions keep their meaning, the workers stay up across epochs and
follow the epoch of every index, loading leaves torch's global RNG alone, and closing ends the workers."""

from __future__ import annotations

import multiprocessing
import os

import torch
from torch.utils.data import Dataset

from equissl.config import DataConfig
from equissl.launch.data import EpochIndices, train_batches
from equissl.launch.sampler import ResumableSampler


class EpochEcho(Dataset):
    """Item i of epoch e: (e, i, the pid of the process that read it), e as set by ``set_epoch``."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([self.epoch, index, os.getpid()])


def test_epoch_indices_start_at_the_resume_position_and_run_on_over_epochs():
    sampler = ResumableSampler(10, batch_size=3, seed=4)  # 3 batches an epoch, item 9 left out
    stream = iter(EpochIndices(sampler, epoch=1, start_batch=2))
    first = [next(stream) for _ in range(3 + 9)]
    expected = [(1, i) for i in sampler.epoch_indices(1)[6:].tolist()]
    expected += [(2, i) for i in sampler.epoch_indices(2).tolist()]
    assert first == expected
    at_end = iter(EpochIndices(sampler, epoch=1, start_batch=3))  # a checkpoint after an epoch's last batch
    assert [next(at_end) for _ in range(9)] == [(2, i) for i in sampler.epoch_indices(2).tolist()]


def test_workers_stay_up_across_epochs_and_read_in_each_index_epoch():
    sampler = ResumableSampler(8, batch_size=4, seed=0)  # 2 batches an epoch
    data = DataConfig(num_workers=2, prefetch_factor=3)
    rng_before = torch.get_rng_state()
    children_before = set(multiprocessing.active_children())
    batches = train_batches(EpochEcho(8), sampler, 1, 1, data, "cpu")
    seen = [next(batches) for _ in range(5)]  # the last batch of epoch 1, then epochs 2 and 3
    assert len(set(multiprocessing.active_children()) - children_before) == 2
    batches.close()
    assert set(multiprocessing.active_children()) <= children_before  # no worker outlives the loop
    assert torch.equal(torch.get_rng_state(), rng_before)  # worker seeds from the loader's own generator
    assert [epoch for epoch, _, _, _ in seen] == [1, 2, 2, 3, 3]
    for epoch, batch, skipped, names in seen:
        assert (batch[:, 0] == epoch).all() and skipped == 0 and names == []  # read in the index's epoch
    order = [i for e in (1, 2, 3) for i in sampler.epoch_indices(e).tolist()][4:]
    assert torch.cat([batch[:, 1] for _, batch, _, _ in seen]).tolist() == order
    pids = [set(batch[:, 2].tolist()) for _, batch, _, _ in seen]
    assert pids[0] == pids[2] == pids[4] and pids[1] == pids[3] and pids[0] != pids[1]  # the same 2 workers
