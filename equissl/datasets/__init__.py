"""Datasets; importing this package registers them in ``equissl.registry.DATASETS``."""

from equissl.datasets import ie3d, shapes3d  # noqa: F401
