"""Objectives; importing this package registers them in ``equissl.registry.OBJECTIVES``."""

from equissl.ssl import essl, simclr, vicreg  # noqa: F401
from equissl.ssl import seq_jepa, equicaps  # noqa: F401
from equissl.ssl import care, sie  # noqa: F401
