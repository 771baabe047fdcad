"""Objectives; importing this package registers them in ``equissl.registry.OBJECTIVES``."""

from equissl.ssl import (  # noqa: F401  # noqa: F401  # noqa: F401
    care,
    equicaps,
    essl,
    scene_flow,
    seq_jepa,
    sie,
    simclr,
    vicreg,
)
