"""Backbones; importing this package registers them in ``equissl.registry.BACKBONES``."""

from equissl.backbones import resnet  # noqa: F401
from equissl.backbones import capsules  # noqa: F401
from equissl.backbones import poly_vit  # noqa: F401
from equissl.backbones import steerable  # noqa: F401
