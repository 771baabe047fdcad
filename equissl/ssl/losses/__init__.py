"""Loss functions of the objectives: pure functions of embeddings, shapes in the docstrings, one module
per family, each tested against an independent reference (``tests/ssl/test_losses.py``).

- :mod:`~equissl.ssl.losses.contrastive`: NT-Xent (SimCLR), MoCo v3's momentum InfoNCE;
- :mod:`~equissl.ssl.losses.vicreg`: invariance, variance, covariance (VICReg, SIE, EquiCaps);
- :mod:`~equissl.ssl.losses.cosine`: negative cosine and BYOL's ``2 - 2 cos``;
- :mod:`~equissl.ssl.losses.redundancy`: Barlow Twins' cross-correlation loss;
- :mod:`~equissl.ssl.losses.distillation`: DINO's centred, sharpened cross entropy and its centre;
- :mod:`~equissl.ssl.losses.classification`: rotation prediction (E-SSL);
- :mod:`~equissl.ssl.losses.precision`: losses run in float32 whatever the autocast dtype.

Batch statistics span the *global* batch when a process group is initialised
(:func:`equissl.distributed.gather_with_grad`). Losses that only one method uses live in its file.
"""

from equissl.ssl.losses.classification import rotation_loss
from equissl.ssl.losses.contrastive import momentum_infonce, nt_xent
from equissl.ssl.losses.cosine import byol_loss, negative_cosine_loss
from equissl.ssl.losses.distillation import dino_center_update, dino_loss
from equissl.ssl.losses.precision import check_pair, full_precision, upcast
from equissl.ssl.losses.redundancy import barlow_twins_loss, standardise
from equissl.ssl.losses.vicreg import covariance_loss, invariance_loss, variance_loss, vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "check_pair",
    "covariance_loss",
    "dino_center_update",
    "dino_loss",
    "full_precision",
    "invariance_loss",
    "momentum_infonce",
    "negative_cosine_loss",
    "nt_xent",
    "rotation_loss",
    "standardise",
    "upcast",
    "variance_loss",
    "vicreg_loss",
]
