"""Backbones; importing this package registers them in ``equissl.registry.BACKBONES``."""

from equissl.backbones import resnet  # noqa: F401
