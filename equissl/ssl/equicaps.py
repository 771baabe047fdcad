"""EquiCaps (Konstantinou, Leontidis, Thota & Durrant, 2025): predictor-free pose-aware capsules.

Two distinct views ``x_1``, ``x_2`` of one object (``ViewSpec(source="object", num_views=2)``) and the
relative rotation ``R = R_1^-1 R_2`` from their Euler latents
(:func:`equissl.rotations.relative_rotation_matrix`).
A self-routing capsule layer (Hahn et al., NeurIPS 2019, no routing iterations;
:class:`equissl.backbones.capsules.SelfRoutingCapsules`) over the backbone's spatial map gives, per view,
32 capsule activations ``a`` (B, 32) -- a distribution over capsules: they sum to 1 -- and poses ``P``
(B, 32, d, d), d = 3 (or 4). The loss, with ``n(M) = M / ||M||_F`` per capsule::

    L =  0.1 * H(a_2, a_1)                              invariance: cross-entropy, -sum_j a_2j log a_1j
       + 5   * MSE( n(P_1 R), n(P_2) )                  equivariance: each pose right-multiplied by R
       + 10  * [v(Z_1) + v(Z_2)] / 2                    VICReg std on Z_i = [a_i, n(P_1 R) | n(P_2)]
       + 1   * [c(Z_1) + c(Z_2)]                        VICReg covariance on the same Z_i
       + 1   * [MEMAX(a_1) + MEMAX(a_2)]                 MEMAX(a) = log J - H(mean_batch a)

The pose term needs no predictor: if the capsules encode pose, the pose of view 2 is that of view 1
composed with the rotation, ``P_2 = P_1 R`` (:func:`pose_equivariance_loss`, zero then). Batch statistics
(std, covariance, the MEMAX batch mean) span the global batch when distributed.

Representations (:meth:`EquiCaps.representations`, the interface of :class:`equissl.ssl.sie.SIE`):
invariant = capsule activations, equivariant = Frobenius-normalised poses (flattened), full = the
backbone's pooled features (the representation the paper probes). The "predictor" for retrieval
metrics is the group action itself: :meth:`EquiCaps.predict_equivariant` right-multiplies each
normalised pose by R.

Fidelity notes (paper vs AberdeenML/EquiCaps: ``src/models.py`` ``EquiCaps_3x3``/``_4x4``,
``src/sr_capsnet.py``, ``main.py``, README):

- Coefficients (``main.py`` defaults and the README's command): ``sim_coeff`` 0.1 multiplies the
  cross-entropy invariance term, ``equi_factor`` 5 the pose MSE, ``std_coeff`` 10 the std term,
  ``cov_coeff`` 1 the covariance; MEMAX enters with weight 1 (``memax_coeff``).
- Invariance: the code computes ``log(a_1 ** (-a_2))`` summed over capsules, averaged over the batch
  (view 1 predicts view 2; no stop-gradient); we compute ``-a_2 * log(clamp(a_1, eps))``, the same value
  with a finite log where an activation underflows to 0. MEMAX likewise uses clamped logs.
- Equivariance: ``matmul(P_1, R)`` (right multiplication), both sides divided by their Frobenius norm,
  ``F.mse_loss`` over all B x J x d x d entries, as in the code. With 4x4 poses the code uses the
  homogeneous rigid motion of 3DIEBench-T; for rotations only we use ``[[R, 0], [0, 1]]``.
- VICReg terms on the concatenation ``[a, n(P_1 R)]`` / ``[a_2, n(P_2)]`` (the code regularises the
  *transformed* first view), std averaged over the two branches (``/ 2``) as in the code
  (``variance_average_branches=False`` sums them as VICReg's paper does), covariance summed, both over
  the gathered global batch (the code gathers with gradient; MEMAX's batch mean is all-reduced).
- Capsule layer: primary capsules from 3x3 convolutions with BatchNorm (sigmoid activations), then one
  self-routing layer whose kernel covers the whole map (``capsule_map_size`` = map side gives the code's
  per-position weights; 0 shares them over positions). The code's votes are a learned linear map of the
  flattened pose, ``W_ij vec(P_i)``; our shared module votes with ``T_ij P_i`` (matrix product), which
  keeps a right action on the poses a right action on the votes.
- Views: each view through backbone and capsules separately (BatchNorm statistics per view), as in the
  code. If the backbone is a :class:`~equissl.backbones.capsules.CapsNetResNet`, its own capsule layer
  is used (so the trained capsules are part of the exported backbone); otherwise the objective owns one.
- Optimiser of the code: Adam, lr 1e-3, weight decay 1e-6, constant lr, 2000 epochs, batch 1024 (the
  README's command uses 256), ResNet-18 with zero-initialised residuals at 256 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.config import NonNegativeFloat, ObjectiveConfig
from equissl.distributed import gather_with_grad
from equissl.errors import ConfigError
from equissl.heads.capsules import SelfRoutingCapsules
from equissl.latents import relative_action, relative_rotation
from equissl.registry import OBJECTIVES
from equissl.rotations import quat_to_matrix
from equissl.ssl.base import EquivariantObjective
from equissl.ssl.losses import covariance_loss, full_precision, upcast, variance_loss
from equissl.types import StepOutput, Views, ViewSpec


@dataclass
class EquiCapsConfig(ObjectiveConfig):
    name: str = "equicaps"
    num_capsules: int = 32
    pose_dim: int = 3  # 3: 3x3 poses acted on by R; 4: 4x4 poses acted on by [[R, 0], [0, 1]]
    num_primary: int = 32  # primary capsule types per position (the code: = num_capsules)
    capsule_map_size: int = 0  # s > 0: per-position routing weights over an s x s map (the code); 0: shared
    inv_coeff: float = 0.1  # cross-entropy between the views' activations (the code's sim_coeff)
    equi_coeff: float = 5.0  # pose MSE (equi_factor)
    std_coeff: float = 10.0
    cov_coeff: float = 1.0
    memax_coeff: float = 1.0
    variance_average_branches: bool = True  # the code's [v(Z_1) + v(Z_2)] / 2
    log_eps: float = 1e-8  # logs of activations are taken of clamp(a, log_eps)
    # std of the vote transformations of the objective's own capsule layer; 0: the official code's,
    # sqrt(2 / (num_capsules pose_dim^4)) = 0.028 (equissl/heads/capsules.py)
    vote_init_std: NonNegativeFloat = 0.0


# ----------------------------------------------------------------------------------------------------
# Pure functions.


def frobenius_normalise(poses: Tensor, eps: float = 1e-12) -> Tensor:
    """(..., d, d) matrices divided by their Frobenius norms (clamped at ``eps``)."""
    return poses / torch.linalg.matrix_norm(poses).clamp_min(eps)[..., None, None]


def transform_poses(poses: Tensor, action: Tensor) -> Tensor:
    """Right action: (N, J, d, d) poses times (N, d, d) per-sample matrices, ``P_nj @ A_n``."""
    if (
        poses.ndim != 4
        or action.ndim != 3
        or poses.shape[-1] != action.shape[-2]
        or poses.shape[0] != action.shape[0]
    ):
        raise ValueError(
            f"expected poses (N, J, d, d) and actions (N, d, d), got {tuple(poses.shape)} "
            f"and {tuple(action.shape)}"
        )
    return poses @ action[:, None]


def pose_action(rotation: Tensor, pose_dim: int) -> Tensor:
    """(N, 3, 3) rotations -> the (N, d, d) matrices acting on d x d poses: R, or ``[[R, 0], [0, 1]]``."""
    if pose_dim == 3:
        return rotation
    if pose_dim == 4:
        action = torch.zeros(*rotation.shape[:-2], 4, 4, dtype=rotation.dtype, device=rotation.device)
        action[..., :3, :3] = rotation
        action[..., 3, 3] = 1.0
        return action
    raise ValueError(f"EquiCaps acts on 3x3 or 4x4 poses, got pose_dim={pose_dim}")


@full_precision
def pose_equivariance_loss(poses_1: Tensor, poses_2: Tensor, action: Tensor) -> Tensor:
    """EquiCaps' equivariance term: ``mean( (n(P_1 A) - n(P_2)) ** 2 )`` over N x J x d x d entries.

    poses_1, poses_2: (N, J, d, d) capsule poses of views 1 and 2; action: (N, d, d), the relative
    rotation ``R_1^-1 R_2`` (or its 4x4 embedding). Zero when ``P_2 = c P_1 A`` for any c > 0.
    """
    if poses_1.shape != poses_2.shape:
        raise ValueError(f"pose shapes differ: {tuple(poses_1.shape)} vs {tuple(poses_2.shape)}")
    transformed = frobenius_normalise(transform_poses(upcast(poses_1), upcast(action)))
    return F.mse_loss(transformed, frobenius_normalise(upcast(poses_2)))


@full_precision
def activation_cross_entropy(predicted: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """``mean_n sum_j -target_nj log(clamp(predicted_nj, eps))`` for (N, J) capsule activations.

    EquiCaps' invariance term with view 1 ``predicted`` and view 2 ``target``; gradients reach both.
    """
    if predicted.ndim != 2 or predicted.shape != target.shape:
        raise ValueError(
            f"expected two (N, J) activations of one shape, got {tuple(predicted.shape)} "
            f"and {tuple(target.shape)}"
        )
    log_predicted = torch.log(upcast(predicted).clamp_min(eps))
    return -(upcast(target) * log_predicted).sum(dim=1).mean()


@full_precision
def memax_loss(activations: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean-entropy maximisation: ``log J - H(p)``, ``p = mean_n activations_n`` over the global batch.

    activations: (N, J), rows summing to 1. ``H(p) = -sum_j p_j log(clamp(p_j, eps))``. Zero when the
    batch uses every capsule equally, ``log J`` when it uses one. Distributed: ``p`` is the mean over the
    gathered batch (every rank gets the same value; gradients reach every rank's rows).
    """
    if activations.ndim != 2:
        raise ValueError(f"expected (N, J) activations, got {tuple(activations.shape)}")
    mean = gather_with_grad(upcast(activations)).mean(dim=0)
    entropy = -(mean * torch.log(mean.clamp_min(eps))).sum()
    return math.log(mean.shape[0]) - entropy


@full_precision
def equicaps_loss(
    activations_1: Tensor,
    activations_2: Tensor,
    poses_1: Tensor,
    poses_2: Tensor,
    action: Tensor,
    inv: float = 0.1,
    equi: float = 5.0,
    std: float = 10.0,
    cov: float = 1.0,
    memax: float = 1.0,
    average_branches: bool = True,
    eps: float = 1e-8,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The EquiCaps loss (module docstring); returns ``(total, unweighted terms)``.

    activations_i: (N, J); poses_i: (N, J, d, d); action: (N, d, d) acting on view 1's poses from the
    right (``R_1^-1 R_2`` or its 4x4 embedding). Terms: ``inv``, ``equi``, ``std`` (``[v(Z_1) + v(Z_2)]``,
    halved if ``average_branches``), ``cov``, ``memax`` (both views summed).
    """
    a_1, a_2 = upcast(activations_1), upcast(activations_2)
    transformed = frobenius_normalise(transform_poses(upcast(poses_1), upcast(action)))
    target = frobenius_normalise(upcast(poses_2))
    terms = {
        "inv": activation_cross_entropy(a_1, a_2, eps),
        "equi": F.mse_loss(transformed, target),
    }
    z_1 = gather_with_grad(torch.cat([a_1, transformed.flatten(1)], dim=1))
    z_2 = gather_with_grad(torch.cat([a_2, target.flatten(1)], dim=1))
    if z_1.shape[0] < 2:
        raise ValueError("equicaps_loss: the std and covariance terms need a global batch of at least 2")
    variance = variance_loss(z_1) + variance_loss(z_2)
    terms["std"] = variance / 2 if average_branches else variance
    terms["cov"] = covariance_loss(z_1) + covariance_loss(z_2)
    terms["memax"] = memax_loss(a_1, eps) + memax_loss(a_2, eps)
    weights = {"inv": inv, "equi": equi, "std": std, "cov": cov, "memax": memax}
    total = sum(weights[name] * value for name, value in terms.items())
    return total, terms


# ----------------------------------------------------------------------------------------------------
# The objective.


class EquiCaps(EquivariantObjective):
    """EquiCaps over any backbone whose ``forward_features`` is a spatial map (B, C, h, w)."""

    required_views = ViewSpec(source="object", num_views=2)

    def __init__(self, backbone: nn.Module, cfg: EquiCapsConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or EquiCapsConfig()
        _validate(cfg)
        self.cfg = cfg
        own = getattr(backbone, "capsules", None)
        if isinstance(own, SelfRoutingCapsules):
            if (own.num_capsules, own.pose_dim) != (cfg.num_capsules, cfg.pose_dim):
                raise ValueError(
                    f"the backbone's capsules have {own.num_capsules} capsules with "
                    f"{own.pose_dim}x{own.pose_dim} poses; objective asks for "
                    f"{cfg.num_capsules} with {cfg.pose_dim}x{cfg.pose_dim}"
                )
            self.capsules = own  # shared module: trained here, exported with the backbone
        else:
            self.capsules = SelfRoutingCapsules(
                _map_channels(backbone),
                cfg.num_capsules,
                cfg.pose_dim,
                cfg.num_primary,
                cfg.capsule_map_size or None,
                vote_init_std=cfg.vote_init_std,
            )

    def capsules_of(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3, H, W) -> backbone map (B, C, h, w), activations (B, J), poses (B, J, d, d)."""
        fmap = self.backbone.forward_features(images)
        if fmap.ndim != 4:
            raise ValueError(
                f"EquiCaps needs a backbone whose forward_features is (B, C, h, w), got {tuple(fmap.shape)}"
            )
        activations, poses = self.capsules(fmap)
        return fmap, activations, poses

    def pooled(self, images: Tensor, fmap: Tensor) -> Tensor:
        """The backbone's pooled features: the map's average when that is the backbone's width (ResNets),
        else ``backbone(images)`` (e.g. a capsule backbone whose readout adds capsule features)."""
        backbone_capsules = getattr(self.backbone, "capsules", None)
        if fmap.shape[1] == self.backbone.num_features and self.capsules is not backbone_capsules:
            return fmap.mean(dim=(2, 3))
        return self.backbone(images)

    def forward(self, views: Views) -> StepOutput:
        if len(views.images) < 2 or views.latents is None or len(views.latents) < 2:
            raise ValueError(
                "EquiCaps needs 2 views of an object with their latents (source='object', a "
                "3DIEBench-format dataset such as shapes3d)"
            )
        fmap_1, a_1, p_1 = self.capsules_of(views.images[0])
        _, a_2, p_2 = self.capsules_of(views.images[1])
        rotation = relative_rotation(views.latents[0], views.latents[1])
        cfg = self.cfg
        loss, terms = equicaps_loss(
            a_1,
            a_2,
            p_1,
            p_2,
            pose_action(rotation, cfg.pose_dim),
            inv=cfg.inv_coeff,
            equi=cfg.equi_coeff,
            std=cfg.std_coeff,
            cov=cfg.cov_coeff,
            memax=cfg.memax_coeff,
            average_branches=cfg.variance_average_branches,
            eps=cfg.log_eps,
        )
        metrics = {f"loss/{name}": value.detach() for name, value in terms.items()}
        with torch.no_grad():
            features = self.pooled(views.images[0], fmap_1.detach())
        return StepOutput(loss=loss, metrics=metrics, features=features.detach())

    # -- evaluation interface (the same as SIE's) --------------------------------------------------
    def representations(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> ``inv`` (B, J), ``equi`` (B, J*d*d), ``full`` (B, num_features) and
        ``equi_embedding`` (B, J*d*d).

        inv: capsule activations; equi: Frobenius-normalised poses, flattened capsule-major (the space of
        the pose loss); full: the backbone's pooled features (what the paper probes); equi_embedding:
        ``equi`` again, the space :meth:`predict_equivariant` acts on.
        """
        fmap, activations, poses = self.capsules_of(images)
        equi = frobenius_normalise(poses).flatten(1)
        return {"inv": activations, "equi": equi, "full": self.pooled(images, fmap), "equi_embedding": equi}

    def action_from_latents(self, latents_1: Tensor, latents_2: Tensor) -> Tensor:
        """(B, 7), (B, 7) latents of source and target views -> (B, 4) canonical quaternion (x, y, z, w)
        of ``R1^-1 R2``."""
        return relative_action(latents_1, latents_2, "rotation")

    def predict_equivariant(self, equi_embedding: Tensor, action: Tensor) -> Tensor:
        """(B, J*d*d) normalised poses and the relative rotation ``R1^-1 R2`` to the other view -- a
        (B, 4) quaternion (x, y, z, w) or a (B, 3, 3) matrix -- -> (B, J*d*d) predicted normalised poses
        ``n(P R)``: EquiCaps has no predictor, the prediction is the group action itself."""
        rotation = quat_to_matrix(action) if action.ndim == 2 and action.shape[-1] == 4 else action
        if rotation.shape[-2:] != (3, 3):
            raise ValueError(f"expected (B, 4) quaternions or (B, 3, 3) rotations, got {tuple(action.shape)}")
        d = self.cfg.pose_dim
        poses = equi_embedding.reshape(equi_embedding.shape[0], -1, d, d)
        moved = transform_poses(poses, pose_action(rotation.to(equi_embedding.dtype), d))
        return frobenius_normalise(moved).flatten(1)


def _map_channels(backbone: nn.Module, size: int = 64) -> int:
    """Channels of ``backbone.forward_features`` (a dry run on one ``size`` x ``size`` image, eval mode)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            fmap = backbone.forward_features(torch.zeros(1, 3, size, size))
    finally:
        backbone.train(was_training)
    if fmap.ndim != 4:
        raise ValueError(
            f"EquiCaps needs a backbone whose forward_features is a spatial map (B, C, h, w); "
            f"{type(backbone).__name__} gives {tuple(fmap.shape)}"
        )
    return int(fmap.shape[1])


def _validate(cfg: EquiCapsConfig) -> None:
    if cfg.pose_dim not in (3, 4):
        raise ConfigError(f"objective.pose_dim must be 3 or 4, got {cfg.pose_dim}")
    if cfg.num_capsules < 2 or cfg.num_primary < 1:
        raise ConfigError("objective.num_capsules must be >= 2 and num_primary >= 1")
    if cfg.capsule_map_size < 0:
        raise ConfigError(f"objective.capsule_map_size must be >= 0, got {cfg.capsule_map_size}")
    if min(cfg.inv_coeff, cfg.equi_coeff, cfg.std_coeff, cfg.cov_coeff, cfg.memax_coeff) < 0:
        raise ValueError("EquiCaps loss coefficients must be >= 0")
    if not 0.0 < cfg.log_eps < 1.0:
        raise ConfigError(f"objective.log_eps must be in (0, 1), got {cfg.log_eps}")


@OBJECTIVES.register(
    "equicaps",
    EquiCapsConfig,
    description="EquiCaps (Konstantinou et al. 2025): pose-aware capsules, no predictor",
)
def build_equicaps(cfg: EquiCapsConfig, backbone: nn.Module) -> EquiCaps:
    return EquiCaps(backbone, cfg)
