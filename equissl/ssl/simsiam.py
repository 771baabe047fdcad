"""SimSiam (Chen & He, CVPR 2021): a predictor and a stop-gradient, no negatives and no momentum encoder.

``L = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2`` with ``D(p, z) = -cos(p, z)`` averaged over the batch
(so ``L`` is in [-1, 1], -1 when aligned); ``z = projector(backbone(x))``, ``p = predictor(z)``, and
``sg`` the stop-gradient (``detach``): the gradient reaches the encoder only through the predictor's side.

Fidelity notes (paper vs facebookresearch/simsiam):
- Projector: 3 layers ``[Linear -> BN -> ReLU] x 2 -> Linear -> BN`` (output BN without affine parameters,
  as the code's ``BatchNorm1d(dim, affine=False)``), width 2048 = the ResNet-50 feature width
  (``proj_hidden_dim=0``: the backbone's width), output 2048. The paper's CIFAR-10 variant has 2 layers
  (``proj_num_layers=2``). The code's output linear keeps a frozen bias that its BN cancels; ours has none.
- Predictor: ``Linear(2048, 512) -> BN -> ReLU -> Linear(512, 2048)`` (bottleneck, paper and code).
- Predictor learning rate: constant, without decay (the paper's predictor study finds it works slightly
  better than decaying it; the code's ``--fix-pred-lr``, used in its README's commands):
  ``fix_predictor_lr=True`` keeps the predictor's group at the base learning rate
  (:meth:`constant_lr_parameters`); False decays it with the rest.
- Each view goes through the networks separately (the code does), so BatchNorm statistics are per view.
- Backbone: the code builds its ResNet with ``zero_init_residual=True`` (the last BatchNorm of each
  residual block starts at zero); the paper-budget recipe sets ``backbone.zero_init_residual: true``.
  The shapes3d recipe does not: at 7 minutes on 2 CPU cores it gave 41.4% linear, against 45.2 and 39.0
  without (seeds 0 and 1; 2026-12-05, docs/reports/2026-12-04-equal-time-bases.md#a-third-screening-cpu).
- Optimiser (the paper-budget recipe): SGD, lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4 on
  *every* parameter (the code does not exclude biases or BN: ``optim.exclude_bias_and_norm=false``),
  cosine decay, no warmup. The shapes3d recipe trains with AdamW instead (its header gives why).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from equissl.config import ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.losses import negative_cosine_loss
from equissl.ssl.simclr import PairViews, global_pair, pair_views
from equissl.types import StepOutput, Views, ViewSpec


@dataclass
class SimSiamConfig(ObjectiveConfig):
    name: str = "simsiam"
    proj_hidden_dim: int = 0  # 0: the backbone's width (2048 for ResNet-50), as the code's prev_dim
    proj_num_layers: int = 3  # linear layers of the projector (the paper's CIFAR-10 variant: 2)
    proj_out_dim: int = 2048
    pred_hidden_dim: int = 512
    fix_predictor_lr: bool = True
    views: PairViews = "image"  # "object": two rendered views of one object (simclr.pair_views)


def simsiam_loss(p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
    """``-cos(p_a, sg(z_b)) / 2 - cos(p_b, sg(z_a)) / 2``, batch means; (N, D) each. The stop-gradient is here
    (``detach``), where the paper's Algorithm 1 puts it."""
    return (negative_cosine_loss(p_a, z_b.detach()) + negative_cosine_loss(p_b, z_a.detach())) / 2 - 1.0


class SimSiam(Objective):
    required_views = ViewSpec(source="image", num_views=2)

    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or SimSiamConfig()
        if cfg.proj_num_layers < 1:
            raise ConfigError(f"objective.proj_num_layers must be >= 1, got {cfg.proj_num_layers}")
        self.cfg = cfg
        self.required_views = pair_views(self.required_views, cfg.views)
        width = backbone.num_features
        hidden = cfg.proj_hidden_dim or width
        self.projector = projection_mlp(
            width, [hidden] * (cfg.proj_num_layers - 1), cfg.proj_out_dim, norm="bn", last_norm="bn_no_affine"
        )
        self.predictor = projection_mlp(
            cfg.proj_out_dim, [cfg.pred_hidden_dim], cfg.proj_out_dim, norm="bn", last_bias=True
        )

    def constant_lr_parameters(self) -> list[str]:
        if not self.cfg.fix_predictor_lr:
            return []
        return [f"predictor.{name}" for name, _ in self.predictor.named_parameters()]

    def forward(self, views: Views) -> StepOutput:
        x_a, x_b = global_pair(views, "SimSiam")
        h_a = self.backbone(x_a)
        z_a, z_b = self.projector(h_a), self.projector(self.backbone(x_b))
        loss = simsiam_loss(self.predictor(z_a), self.predictor(z_b), z_a, z_b)
        # the spread of the normalised outputs: 1/sqrt(D) when healthy, 0 when collapsed (paper, Fig. 2)
        spread = nn.functional.normalize(z_a.detach().float(), dim=1).std(dim=0).mean()
        metrics = {"loss/simsiam": loss.detach(), "z_std": spread}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "simsiam", SimSiamConfig, description="SimSiam (Chen & He 2021): predictor + stop-gradient, no negatives"
)
def build_simsiam(cfg: SimSiamConfig, backbone: nn.Module) -> SimSiam:
    return SimSiam(backbone, cfg)
