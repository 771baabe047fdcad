"""Errors the training loop raises on purpose (importable without loading the loop)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops instead of training on garbage."""
