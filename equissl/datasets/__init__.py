"""Datasets; importing this package registers them in ``equissl.registry.DATASETS``."""

from equissl.datasets import folders, ie3d, images, lidar, lidar_sim, shapes3d  # noqa: F401
