"""Data-side fault accounting: per-item counts of skipped unreadable files, and named item failures.

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

from typing import Any

from torch.utils.data import Dataset, default_collate

from equissl.errors import DataItemError


def _skips(dataset: Any) -> tuple[int, int]:
    """(skips so far, number of distinct bad files so far) of this process's dataset copy."""
    bad_files = getattr(dataset, "bad_files", ())
    return int(getattr(dataset, "skipped_reads", len(bad_files))), len(bad_files)


class GuardedDataset(Dataset):
    """Wraps a dataset: item ``i`` becomes ``(item, skipped_reads, new_bad_file_names)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, list[str]]:
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
        return item, skips_after - skips_before, new_names


class GuardedCollate:
    """Collate ``GuardedDataset`` items into ``(batch, skipped_reads, bad_file_names)`` (picklable,
    so it also works with the ``spawn`` start method)."""

    def __init__(self, collate_fn=None) -> None:
        self.inner = collate_fn or default_collate

    def __call__(self, items: list[tuple[Any, int, list[str]]]) -> tuple[Any, int, list[str]]:
        batch = self.inner([item for item, _, _ in items])
        return batch, sum(count for _, count, _ in items), [name for _, _, names in items for name in names]
