"""Datasets; importing this package registers them in ``equissl.registry.DATASETS``."""
