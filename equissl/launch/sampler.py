"""A distributed sampler that can start in the middle of an epoch, for exact resumes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from equissl.errors import ConfigError


class ResumableSampler(Sampler[int]):
    """Shuffles ``num_items`` with a generator seeded by (seed, epoch), shards it over ranks and
    yields this rank's indices from batch ``start_batch`` of the epoch on.

    Each rank gets ``batches_per_epoch * batch_size`` indices (the tail that would not fill a batch on
    every rank is dropped), so all ranks take the same number of steps.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_epoch = num_items // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"dataset of {num_items} items is smaller than one global batch "
                f"({world_size} processes x trainer.batch_size={batch_size})"
            )
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=generator)
        used = order[: self.batches_per_epoch * self.batch_size * self.world_size]
        return used[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices(self.epoch)[self.start_batch * self.batch_size :]
        return iter(indices.tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
