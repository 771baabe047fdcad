"""VICReg (Bardes, Ponce, LeCun, ICLR 2022): variance-invariance-covariance regularisation.

Fidelity notes (paper vs facebookresearch/vicreg):
- Expander 8192-8192-8192 (paper and code): ``[Linear -> BN -> ReLU] x 2 -> Linear`` without bias
  on the output. The code keeps a bias on the hidden linears before BN; it is cancelled by BN, so
  we drop it. The default is the paper's; CPU recipes set smaller ``expander_dims``.
- Coefficients 25 / 25 / 1, gamma = 1, eps = 1e-4 (paper and code).
- Variance term summed over the two branches as in the paper (eq. 6, Algorithm 1); the code
  halves it: ``variance_average_branches=True``. See :func:`equissl.ssl.losses.vicreg_loss`.
- Invariance = ``F.mse_loss`` (mean over N x D), as the paper's Algorithm 1 and the code.
- Each view goes through backbone and expander separately (the code does), so BatchNorm
  statistics are per view. Variance / covariance use the global batch when distributed (the code
  gathers the expander outputs with a summing backward, as we do).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from equissl.config import ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.losses import vicreg_loss
from equissl.ssl.simclr import PairViews, global_pair, pair_views
from equissl.types import StepOutput, Views, ViewSpec


@dataclass
class VICRegConfig(ObjectiveConfig):
    name: str = "vicreg"
    expander_dims: tuple[int, ...] = (8192, 8192, 8192)  # hidden..., output
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    variance_average_branches: bool = False  # True: official code's [v(Z) + v(Z')] / 2
    views: PairViews = "image"  # "object": two rendered views of one object (simclr.pair_views)


class VICReg(Objective):
    required_views = ViewSpec(source="image", num_views=2)

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or VICRegConfig()
        if len(cfg.expander_dims) < 1:
            raise ConfigError("objective.expander_dims needs at least the output dimension")
        self.cfg = cfg
        self.required_views = pair_views(self.required_views, cfg.views)
        dims = list(cfg.expander_dims)
        self.expander = projection_mlp(
            backbone.num_features, dims[:-1], dims[-1], norm="bn", last_norm="none"
        )

    def forward(self, views: Views) -> StepOutput:
        x_a, x_b = global_pair(views, "VICReg")
        h_a = self.backbone(x_a)
        z_a, z_b = self.expander(h_a), self.expander(self.backbone(x_b))
        cfg = self.cfg
        loss, terms = vicreg_loss(
            z_a,
            z_b,
            sim=cfg.sim_coeff,
            var=cfg.std_coeff,
            cov=cfg.cov_coeff,
            average_branches=cfg.variance_average_branches,
        )
        metrics = {f"loss/{name}": value.detach() for name, value in terms.items()}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "vicreg", VICRegConfig, description="VICReg (Bardes et al. 2022): variance-invariance-covariance"
)
def build_vicreg(cfg: VICRegConfig, backbone: nn.Module) -> VICReg:
    return VICReg(backbone, cfg)
