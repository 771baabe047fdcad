"""Loss functions of the objectives: pure functions of embeddings, shapes in the docstrings, one module
per family, each tested against an independent reference (``tests/ssl/test_losses.py``).

- :mod:`~equissl.ssl.losses.contrastive`: NT-Xent (SimCLR);
- :mod:`~equissl.ssl.losses.vicreg`: invariance, variance, covariance (VICReg, SIE, EquiCaps);
- :mod:`~equissl.ssl.losses.cosine`: negative cosine and BYOL's ``2 - 2 cos``;
- :mod:`~equissl.ssl.losses.classification`: rotation prediction (E-SSL);
- :mod:`~equissl.ssl.losses.precision`: losses run in float32 whatever the autocast dtype.

Batch statistics span the *global* batch when a process group is initialised
(:func:`equissl.distributed.gather_with_grad`). Losses that only one method uses live in its file.
"""

from equissl.ssl.losses.classification import rotation_loss
from equissl.ssl.losses.contrastive import nt_xent
from equissl.ssl.losses.cosine import byol_loss, negative_cosine_loss
from equissl.ssl.losses.precision import check_pair, full_precision, upcast
from equissl.ssl.losses.vicreg import covariance_loss, invariance_loss, variance_loss, vicreg_loss

__all__ = [
    "byol_loss",
    "check_pair",
    "covariance_loss",
    "full_precision",
    "invariance_loss",
    "negative_cosine_loss",
    "nt_xent",
    "rotation_loss",
    "upcast",
    "variance_loss",
    "vicreg_loss",
]
