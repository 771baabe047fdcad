"""Errors the training loop raises on purpose (importable without loading the loop)."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stops instead of training on garbage."""


class BadDataError(RuntimeError):
    """More than ``data.max_bad_fraction`` of the items read so far were unreadable."""


class DataItemError(RuntimeError):
    """Reading one dataset item failed in a way the dataset does not handle; names the item's file."""
