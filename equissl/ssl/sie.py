"""SIE (Garrido, Najman, LeCun, ICML 2023): Split Invariant-Equivariant representations.

The backbone's representation is split in two: the first ``num_features - equi_dim`` features are the
invariant part, the last ``equi_dim`` the equivariant part (the official code's order). Each part has its
own projector. For two rendered views of an object related by the rotation ``R1^-1 R2``:

- invariance: ``MSE(z_inv, z'_inv)``;
- equivariance: ``MSE(p(z_equi, g), z'_equi)`` with ``p`` the hypernetwork predictor
  (:class:`equissl.heads.hypernet.HyperNetPredictor`) and ``g`` the relative-rotation quaternion
  (``action="rotation"``) or the quaternion followed by the floor-hue and light-hue deltas
  (``action="rotation_colour"``, the paper's "SIE rotation + colour");
- VICReg variance and covariance on the concatenation ``[z_inv, z_equi]`` of each view (so that the two
  parts do not duplicate information) and, SIE's addition, the variance term on the predictor output.

``loss = sim * inv + w_equi * equi + std * (v(Z) + v(Z') + v(P)) + cov * (c(Z) + c(Z'))``.

Fidelity notes (paper vs facebookresearch/SIE, class ``SIE`` of ``src/models.py``):

- Equivariance weight: the official code multiplies ``equi_factor`` by ``sim_coeff``
  (``equi_factor * sim_coeff * repr_loss_equi``) and its README trains with ``--sim-coeff 10
  --equi-factor 0.45``: an effective weight of 4.5 on the equivariance MSE. (Its argparse default
  ``--equi-factor 4.5`` would give 45.) ``equi_factor_scales_sim=True`` (default) reproduces the code's
  parametrisation, ``w_equi = sim_coeff * equi_factor`` = 10 x 0.45 = 4.5; ``False`` makes
  ``equi_factor`` a free weight ``lambda_equi`` on the equivariance term, as a loss written with one
  coefficient per term reads (set it to 4.5 for the same loss; 0.45 would be ten times weaker).
- Variance term: the code halves it, ``mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``, and
  halves the predictor's too (``mean(relu(1 - std_pred)) / 2``); as for VICReg we follow the paper's sum
  of the terms by default and offer the halving as ``variance_average_branches=True``.
- ``predictor_variance=False`` drops the predictor-output variance term (the official ``SIENoVar``).
- Predictor initialisation: the official hypernetwork keeps torch's default ``Linear`` init, with which
  ``W(g)`` multiplies a 1024-d embedding by ~9 at the start (the paper is silent). That is the default
  here; ``predictor_init="unit_gain"`` draws the generated weights so that ``W(g) z`` keeps z's scale,
  which removes the early phase where the equivariance term only shrinks the predictor (short budgets).
- Projectors: ``[Linear -> BN -> ReLU] x 2 -> Linear`` without output bias, each part's widths the
  backbone's widths scaled by its share (official ``--mlp 2048-2048-2048`` -> 1024-1024-1024 each for
  ResNet-18 256/256); the code's bias on hidden linears before BN is cancelled by BN, so dropped.
- Predictor: linear hypernetwork without biases producing one ``1024 x 1024`` matrix (official
  ``--hypernetwork linear``, no ``--bias-pred`` / ``--bias-hypernet`` / ``--predictor-relu``).
- Quaternion sign: the code feeds scipy's ``(R1.inv() * R2).as_quat()``, whose sign is whatever the
  composition yields, so one relative rotation can reach the (linear) hypernetwork as ``q`` or ``-q``
  (``W(-q) = -W(q)``). We feed the canonical quaternion (w >= 0), a function of the rotation alone; the
  paper is silent.
- Colour deltas: raw differences ``latent_2 - latent_1`` of floor hue and light hue (indices 3 and 6), as
  the official ``Dataset3DIEBenchRotColor``; hues are not wrapped around the circle.
- The two views go through the backbone separately (BatchNorm statistics per view), as in the code.
- Distributed: the MSE terms are this rank's means; variance / covariance are statistics of the global
  batch (embeddings gathered with gradient), as the official ``FullGatherLayer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from equissl.config import ObjectiveConfig
from equissl.distributed import gather_with_grad
from equissl.errors import ConfigError
from equissl.heads.hypernet import HyperNetPredictor
from equissl.heads.mlp import projection_mlp
from equissl.latents import ACTION_DIMS, RelativeAction, relative_action
from equissl.registry import OBJECTIVES
from equissl.ssl.base import EquivariantObjective
from equissl.ssl.losses import covariance_loss, invariance_loss, upcast, variance_loss
from equissl.types import StepOutput, Views, ViewSpec


def sie_loss(
    inv_a: Tensor,
    inv_b: Tensor,
    equi_a: Tensor,
    equi_b: Tensor,
    equi_pred: Tensor,
    sim_coeff: float = 10.0,
    equi_coeff: float = 4.5,
    std_coeff: float = 10.0,
    cov_coeff: float = 1.0,
    predictor_variance: bool = True,
    average_branches: bool = False,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SIE's loss from the projected embeddings of two views; see the module docstring.

    inv_a, inv_b: (N, Di) invariant embeddings of views 1 and 2; equi_a, equi_b: (N, De) equivariant
    embeddings; equi_pred: (N, De) the predictor's estimate of ``equi_b`` from ``equi_a`` and the action.
    equi_coeff: the weight of the equivariance MSE itself (``sim_coeff * equi_factor`` in the official code).
    Returns ``(total, terms)`` with the unweighted terms ``inv``, ``equi``, ``var`` (``v(Z) + v(Z')``, halved
    with ``average_branches``), ``pred_var`` (``v(P)``, halved likewise; 0 without ``predictor_variance``)
    and ``cov`` (``c(Z) + c(Z')``), where ``Z = [inv_a, equi_a]`` and ``Z' = [inv_b, equi_b]``.
    Variance / covariance span the global batch when a process group is initialised.
    """
    if not (inv_a.shape == inv_b.shape and equi_a.shape == equi_b.shape == equi_pred.shape):
        raise ValueError(
            f"sie_loss: mismatched shapes {tuple(inv_a.shape)}, {tuple(inv_b.shape)}, "
            f"{tuple(equi_a.shape)}, {tuple(equi_b.shape)}, {tuple(equi_pred.shape)}"
        )
    if inv_a.shape[0] != equi_a.shape[0]:
        raise ValueError("sie_loss: the invariant and equivariant embeddings differ in batch size")
    with torch.autocast(device_type=inv_a.device.type, enabled=False):
        inv = invariance_loss(inv_a, inv_b)
        equi = invariance_loss(equi_pred, equi_b)
        full_a = gather_with_grad(upcast(torch.cat([inv_a, equi_a], dim=1)))
        full_b = gather_with_grad(upcast(torch.cat([inv_b, equi_b], dim=1)))
        if full_a.shape[0] < 2:
            raise ValueError("sie_loss: the variance and covariance need a global batch of at least 2")
        halve = 0.5 if average_branches else 1.0
        var = halve * (variance_loss(full_a, gamma, eps) + variance_loss(full_b, gamma, eps))
        if predictor_variance:
            pred_var = halve * variance_loss(gather_with_grad(upcast(equi_pred)), gamma, eps)
        else:
            pred_var = torch.zeros((), device=inv_a.device)
        cov = covariance_loss(full_a) + covariance_loss(full_b)
        total = sim_coeff * inv + equi_coeff * equi + std_coeff * (var + pred_var) + cov_coeff * cov
    return total, {"inv": inv, "equi": equi, "var": var, "pred_var": pred_var, "cov": cov}


@dataclass
class SIEConfig(ObjectiveConfig):
    name: str = "sie"
    equi_dim: int = 256  # equivariant part: the last equi_dim backbone features (ResNet-18: 256 of 512)
    inv_proj_dims: tuple[int, ...] = (1024, 1024, 1024)  # hidden..., output of the invariant projector
    equi_proj_dims: tuple[int, ...] = (1024, 1024, 1024)  # hidden..., output of the equivariant projector
    predictor_hidden_dims: tuple[int, ...] = ()  # () : one equi_dim x equi_dim matrix W(g)
    hypernetwork: Literal["linear", "deep"] = "linear"
    hypernetwork_bias: bool = False
    predictor_bias: bool = False
    predictor_relu: bool = False
    # "torch": the official default init of the hypernetwork (W(g) scales embeddings ~9x at the start);
    # "unit_gain": W(g) z keeps z's scale (HyperNetPredictor._unit_gain_init), for short budgets
    predictor_init: Literal["torch", "unit_gain"] = "torch"
    action: RelativeAction = "rotation"  # "rotation_colour": quaternion + floor/light hue deltas
    sim_coeff: float = 10.0
    equi_factor: float = 0.45
    equi_factor_scales_sim: bool = True  # weight sim_coeff * equi_factor (official code); False: equi_factor
    std_coeff: float = 10.0
    cov_coeff: float = 1.0
    predictor_variance: bool = True  # False: official SIENoVar
    variance_average_branches: bool = False  # True: official code's halved variance terms


class SIE(EquivariantObjective):
    required_views = ViewSpec(source="object", num_views=2)

    def __init__(self, backbone: nn.Module, cfg: SIEConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or SIEConfig()
        width = backbone.num_features
        if not 0 < cfg.equi_dim < width:
            raise ConfigError(
                f"objective.equi_dim must be in (0, {width}) for this backbone, got {cfg.equi_dim}"
            )
        if not cfg.inv_proj_dims or not cfg.equi_proj_dims:
            raise ConfigError(
                "objective.inv_proj_dims and objective.equi_proj_dims need at least the output width"
            )
        if cfg.action not in ACTION_DIMS:
            raise ConfigError(f"objective.action must be one of {sorted(ACTION_DIMS)}, got {cfg.action!r}")
        self.cfg = cfg
        self.inv_dim = width - cfg.equi_dim
        inv_dims, equi_dims = list(cfg.inv_proj_dims), list(cfg.equi_proj_dims)
        self.projector_inv = projection_mlp(
            self.inv_dim, inv_dims[:-1], inv_dims[-1], norm="bn", last_norm="none"
        )
        self.projector_equi = projection_mlp(
            cfg.equi_dim, equi_dims[:-1], equi_dims[-1], norm="bn", last_norm="none"
        )
        self.predictor = HyperNetPredictor(
            equi_dims[-1],
            ACTION_DIMS[cfg.action],
            cfg.predictor_hidden_dims,
            cfg.hypernetwork,
            cfg.hypernetwork_bias,
            cfg.predictor_bias,
            cfg.predictor_relu,
            cfg.predictor_init,
        )

    @property
    def equi_coeff(self) -> float:
        cfg = self.cfg
        return cfg.sim_coeff * cfg.equi_factor if cfg.equi_factor_scales_sim else cfg.equi_factor

    # -- the interface the equivariance evaluation uses -------------------------------------------
    def split(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, num_features) -> invariant (B, inv_dim) and equivariant (B, equi_dim) parts."""
        return features[:, : self.inv_dim], features[:, self.inv_dim :]

    def representations(self, images: Tensor) -> dict[str, Tensor]:
        """Normalised images (B, 3, H, W) -> ``inv`` (B, inv_dim), ``equi`` (B, equi_dim), ``full``
        (B, num_features) backbone representations and ``equi_embedding`` (B, E), the equivariant
        projector's output: the space the predictor acts on."""
        full = self.backbone(images)
        inv, equi = self.split(full)
        return {"inv": inv, "equi": equi, "full": full, "equi_embedding": self.projector_equi(equi)}

    def action_from_latents(self, latents_1: Tensor, latents_2: Tensor) -> Tensor:
        """(B, 7), (B, 7) latents of source and target views -> (B, A) predictor action."""
        return relative_action(latents_1, latents_2, self.cfg.action)

    def predict_equivariant(self, equi_embedding: Tensor, action: Tensor) -> Tensor:
        """(B, E) source ``equi_embedding``, (B, A) action -> (B, E) predicted target ``equi_embedding``."""
        return self.predictor(equi_embedding, action)

    # -- training ---------------------------------------------------------------------------------
    def forward(self, views: Views) -> StepOutput:
        if len(views.images) < 2 or views.latents is None or len(views.latents) < 2:
            raise ValueError(
                "SIE needs 2 rendered views of each object with their latents "
                "(ViewSpec source='object', e.g. the 3diebench or shapes3d datasets)"
            )
        h_a, h_b = self.backbone(views.images[0]), self.backbone(views.images[1])
        inv_a, equi_a = self.split(h_a)
        inv_b, equi_b = self.split(h_b)
        z_inv_a, z_inv_b = self.projector_inv(inv_a), self.projector_inv(inv_b)
        z_equi_a, z_equi_b = self.projector_equi(equi_a), self.projector_equi(equi_b)
        action = self.action_from_latents(views.latents[0], views.latents[1]).to(z_equi_a.device)
        z_pred = self.predictor(z_equi_a, action)
        cfg = self.cfg
        loss, terms = sie_loss(
            z_inv_a,
            z_inv_b,
            z_equi_a,
            z_equi_b,
            z_pred,
            sim_coeff=cfg.sim_coeff,
            equi_coeff=self.equi_coeff,
            std_coeff=cfg.std_coeff,
            cov_coeff=cfg.cov_coeff,
            predictor_variance=cfg.predictor_variance,
            average_branches=cfg.variance_average_branches,
        )
        metrics = {f"loss/{name}": value.detach() for name, value in terms.items()}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "sie",
    SIEConfig,
    description="SIE (Garrido et al. 2023): split invariant / equivariant parts, hypernetwork",
)
def build_sie(cfg: SIEConfig, backbone: nn.Module) -> SIE:
    return SIE(backbone, cfg)
