"""Objectives; importing this package registers them in ``equissl.registry.OBJECTIVES``."""

from equissl.ssl import (  # noqa: F401
    barlowtwins,
    byol,
    care,
    dino,
    equicaps,
    essl,
    mocov3,
    scene_flow,
    seq_jepa,
    sie,
    simclr,
    simsiam,
    vicreg,
)
