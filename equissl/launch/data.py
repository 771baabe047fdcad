"""The training data: one DataLoader for the whole run, its fault accounting, and device decoding.

:func:`train_batches` builds one DataLoader for the run (not one per epoch): its sampler,
:class:`EpochIndices`, yields ``(epoch, index)`` pairs from the resume position on, epoch after epoch, so
the workers start once, stay up across epochs and keep ``data.prefetch_factor`` batches each in flight
over the epoch boundaries. A worker holds its own copy of the dataset, so the epoch travels with every
index: :class:`GuardedDataset` calls the copy's ``set_epoch(epoch)`` whenever the epoch of the index
differs from the last one it read. This is sound for every dataset whose item depends only on (seed,
epoch, index) once ``set_epoch`` was called, which is the contract of the datasets here (their random
draws are seeded by those numbers, never by the worker's RNG): no dataset needs a fresh loader per epoch.
Data loading never draws from torch's global RNG (the loader's worker seeds come from a generator of its
own), so a model that does (dropout) resumes exactly.

The loop ends the workers itself (:func:`shut_down_workers`): they ignore the stop signals (their
``worker_init_fn``), so the training process must end them. With ``data.decode=device`` the dataset's
``finish_batch`` (:class:`~equissl.augmentations.crops.DeviceDecodedViews`) decodes each collated batch in
the training process, on its device.

Fault accounting: per-item counts of skipped unreadable files, and named item failures.

Datasets that skip unreadable files (``equissl.datasets.ie3d``) keep per-process counters
(``skipped_reads``, ``bad_files``). DataLoader workers hold their own copies of the dataset, so the
main process cannot read those counters; instead :class:`GuardedDataset` measures, inside whichever
process reads the item, how many skips producing that item took, and :class:`GuardedCollate` sums
them per batch. The trainer then sums over micro-batches and ranks.

An exception a dataset does not handle is re-raised as :class:`DataItemError` naming the item index
and its file (``dataset.describe_item(index)`` where the dataset has one); DataLoader carries that
message from the worker to the main process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from equissl.config import DataConfig
from equissl.errors import DataItemError
from equissl.launch.sampler import ResumableSampler
from equissl.launch.signals import ignore_stop_signals


def _skips(dataset: Any) -> tuple[int, int]:
    """(skips so far, number of distinct bad files so far) of this process's dataset copy."""
    bad_files = getattr(dataset, "bad_files", ())
    return int(getattr(dataset, "skipped_reads", len(bad_files))), len(bad_files)


class EpochIndices(Sampler[tuple[int, int]]):
    """``(epoch, index)`` of every item ``sampler`` serves, from batch ``start_batch`` of ``epoch`` on, then
    every later epoch whole, without end. The order is :meth:`ResumableSampler.epoch_indices`'s; a start at
    the end of an epoch (``start_batch == batches_per_epoch``) starts the next one."""

    def __init__(self, sampler: ResumableSampler, epoch: int, start_batch: int) -> None:
        self.sampler, self.epoch, self.start_batch = sampler, epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, first = self.epoch, self.start_batch * self.sampler.batch_size
        while True:
            for index in self.sampler.epoch_indices(epoch)[first:].tolist():
                yield epoch, index
            epoch, first = epoch + 1, 0


class GuardedDataset(Dataset):
    """Wraps a dataset: item ``i`` becomes ``(item, skipped_reads, new_bad_file_names, epoch)``.

    A key may be ``(epoch, index)`` (:class:`EpochIndices`): the dataset's ``set_epoch(epoch)``, where it
    has one, is called first whenever the epoch changes (this process's copy); a plain index reads in
    whatever epoch the dataset is (epoch -1 in the result)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: int | None = None  # the epoch this process's copy was last set to

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int, list[str], int]:
        epoch, index = key if isinstance(key, tuple) else (-1, key)
        if epoch >= 0 and epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            self._epoch = epoch
        skips_before, names_before = _skips(self.dataset)
        try:
            item = self.dataset[index]
        except Exception as error:  # re-raised below with the file named
            describe = getattr(self.dataset, "describe_item", None)
            where = describe(index) if describe is not None else "no file name available"
            raise DataItemError(
                f"reading data item {index} ({where}) failed: {type(error).__name__}: {error}"
            ) from error
        skips_after, _ = _skips(self.dataset)
        new_names = list(getattr(self.dataset, "bad_files", ())[names_before:])
        return item, skips_after - skips_before, new_names, epoch


class GuardedCollate:
    """Collate ``GuardedDataset`` items into ``(batch, skipped_reads, bad_file_names, epoch)`` (picklable,
    so it also works with the ``spawn`` start method). A batch never spans two epochs: each rank's epoch
    is a whole number of batches (:class:`ResumableSampler`)."""

    def __init__(self, collate_fn=None) -> None:
        self.inner = collate_fn or default_collate

    def __call__(self, items: list[tuple[Any, int, list[str], int]]) -> tuple[Any, int, list[str], int]:
        batch = self.inner([item for item, _, _, _ in items])
        skipped = sum(count for _, count, _, _ in items)
        return batch, skipped, [name for _, _, names, _ in items for name in names], items[0][3]


def shut_down_workers(batches) -> None:
    """End a DataLoader iterator's worker processes now.

    Workers ignore the stop signals (:func:`ignore_stop_signals`), so one left alive (its iterator kept by
    a traceback, say) would also ignore the SIGTERM with which ``multiprocessing`` ends daemonic children
    at interpreter exit, and the exit would wait for it forever. torch has no public call for this.
    """
    shut_down = getattr(batches, "_shutdown_workers", None)
    if shut_down is not None:
        shut_down()


def train_loader(
    dataset: Dataset, sampler: ResumableSampler, epoch: int, start_batch: int, data: DataConfig, device
) -> DataLoader:
    """The run's DataLoader from (``epoch``, ``start_batch``) on (module docstring): ``sampler.batch_size``
    items a batch, ``data.num_workers`` workers with ``data.prefetch_factor`` batches each in flight,
    pinned memory on CUDA."""
    workers = data.num_workers
    return DataLoader(
        GuardedDataset(dataset),
        batch_size=sampler.batch_size,
        sampler=EpochIndices(sampler, epoch, start_batch),
        drop_last=True,
        num_workers=workers,
        prefetch_factor=data.prefetch_factor if workers > 0 else None,
        collate_fn=GuardedCollate(getattr(dataset, "collate_fn", None)),
        pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=ignore_stop_signals,  # a group signal stops the run, not its workers
        # the workers' seeds (unused by the datasets) come from here, not from torch's global RNG
        generator=torch.Generator().manual_seed(sampler.seed),
    )


def train_batches(
    dataset: Dataset, sampler: ResumableSampler, epoch: int, start_batch: int, data: DataConfig, device
) -> Iterator[tuple[int, Any, int, list[str]]]:
    """``(epoch, batch, unreadable files skipped, their names)`` from (``epoch``, ``start_batch``) on,
    without end, read by :func:`train_loader`; a dataset with ``finish_batch`` (``data.decode=device``)
    finishes each batch here, on ``device``, and the files it skips are counted with the workers'. The
    workers end when the generator is closed or raises."""
    finish = getattr(dataset, "finish_batch", None)
    batches = iter(train_loader(dataset, sampler, epoch, start_batch, data, device))
    try:
        for batch, skipped, names, batch_epoch in batches:
            if finish is not None:
                skips_before, names_before = _skips(dataset)
                batch = finish(batch, device)
                skipped += _skips(dataset)[0] - skips_before
                names = [*names, *getattr(dataset, "bad_files", ())[names_before:]]
            yield batch_epoch, batch, skipped, names
    finally:
        shut_down_workers(batches)
