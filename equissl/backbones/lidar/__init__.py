"""LiDAR backbones; importing this package registers ``pointpillars`` in ``equissl.registry.BACKBONES``."""

from equissl.backbones.lidar import pointpillars  # noqa: F401
