"""Backbones; importing this package registers them in ``equissl.registry.BACKBONES``."""

from equissl.backbones import (
    capsules,  # noqa: F401
    custom,  # noqa: F401
    lidar,  # noqa: F401
    poly_vit,  # noqa: F401
    resnet,  # noqa: F401
    steerable,  # noqa: F401
    timm_backbone,  # noqa: F401
    torchvision_backbone,  # noqa: F401
)
