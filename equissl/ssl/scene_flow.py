"""E-SSL3D (Hegde et al., ECCV 2024, "Equivariant Spatio-Temporal Self-Supervision for LiDAR Object
Detection"): spatial equivariance of BEV features to global transforms, and temporal equivariance to
scene flow between consecutive sweeps, with a BYOL-style EMA target.

Views (``ViewSpec(source="lidar_pair", num_views=k)``, see
:class:`equissl.augmentations.points.LidarPairViewMaker`): k augmentations of sweep t whose rows are the
same physical points, one augmentation of sweep t+1, and ``extras["flow_target"]``: where each sweep-t
point lies in the t+1 view. Three terms, each weighted and switched off by a zero weight:

- ``rotation`` -- equivariance by classification: a small conv head on the BEV map of every view of
  sweep t predicts the view's rotation about z among ``rotation_bins`` discrete angles (cross-entropy);
- ``contrastive`` -- translation, scaling and flip by a point-level contrastive loss (PointContrast's
  PointInfoNCE): BEV features of views 0 and 1 bilinearly sampled at the two positions of the same point
  (known through the transforms) are positives, other sampled points negatives, except those that fall in
  the same BEV cell of view 0 (not told apart by the map);
- ``flow`` -- scene-flow equivariance: online features of sweep t at a point, through a projector and a
  predictor, must match the EMA target's features of sweep t+1 where the flow carries that point
  (``2 - 2 cos``, BYOL); symmetrised over (t -> t+1, t+1 -> t). ``moving_fraction`` of the sampled
  correspondences are drawn among moving points when there are any.

The target (``target_backbone`` + ``target_projector``) follows the online network by EMA with BYOL's
cosine schedule of the momentum, updated in :meth:`ESSL3D.on_step_end`.

Departures from the paper: it pretrains the voxel backbones of SECOND and Voxel R-CNN; equissl's encoder is
PointPillars. Only simulated sweeps (``lidar_sim``) carry per-point flow; the KITTI readers give zero flow
(static world), so on real KITTI the flow term sees the ego motion alone (docs/lidar.md, "E-SSL3D").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.backbones.lidar.voxelize import bev_grid_coordinates, inside_bev
from equissl.config import ObjectiveConfig
from equissl.errors import ConfigError, UserError
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.ema import ema_momentum, ema_update, frozen_copy
from equissl.ssl.losses import byol_loss
from equissl.types import StepOutput, Views, ViewSpec


@dataclass
class ESSL3DConfig(ObjectiveConfig):
    name: str = "essl3d"
    num_views: int = 2  # augmented views of sweep t (>= 2 for the contrastive term); +1 view of sweep t+1
    rotation_weight: float = 1.0
    rotation_bins: int = 4  # must equal data.point_augment.rotation_bins
    contrastive_weight: float = 1.0
    temperature: float = 0.1
    flow_weight: float = 1.0
    flow_symmetric: bool = True
    matches_per_scene: int = 256  # correspondences sampled per sample, for the contrastive and flow terms
    moving_fraction: float = 0.5  # of the flow correspondences drawn among moving points, when present
    moving_threshold: float = 0.05  # metres between sweeps: a point that moves more is "moving"
    hidden_dim: int = 128
    proj_dim: int = 64
    ema_momentum: float = 0.99  # BYOL's base momentum, raised to 1 by a cosine schedule

    def check(self, config) -> None:
        """The rotation head classifies the view maker's discrete rotations: the two counts must agree."""
        point_augment = getattr(config.data, "point_augment", None)
        if point_augment is not None and point_augment.rotation_bins != self.rotation_bins:
            raise ConfigError(
                f"objective.rotation_bins={self.rotation_bins} differs from data.point_augment.rotation_bins="
                f"{point_augment.rotation_bins}: the rotation head classifies the views' rotations; set both alike"
            )


# ----------------------------------------------------------------------------------------------------
# Loss functions (pure).


def point_info_nce(
    z_a: Tensor, z_b: Tensor, temperature: float, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """PointInfoNCE between matched rows, symmetrised.

    z_a, z_b: (M, D) features of the same M points in two views (row i matches row i); normalised here.
    exclude: optional (M, M) bool, True where an off-diagonal pair must not count as a negative.
    Returns (loss, top-1 matching accuracy of a -> b), both scalars.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"z_a and z_b must both be (M, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    logits = z_a @ z_b.T / temperature
    if exclude is not None:
        exclude = exclude & ~torch.eye(len(z_a), dtype=torch.bool, device=z_a.device)
        logits = logits.masked_fill(exclude, float("-inf"))
    target = torch.arange(len(z_a), device=z_a.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    accuracy = (logits.argmax(1) == target).float().mean()
    return loss, accuracy


def rotation_labels(angle: Tensor, bins: int, tolerance: float = 1e-3) -> Tensor:
    """(B,) radians that are multiples of 2 pi / bins -> (B,) int64 class k in [0, bins)."""
    step = 2 * math.pi / bins
    index = torch.round(angle / step)
    off = torch.remainder(angle - index * step + math.pi, 2 * math.pi) - math.pi
    if bool((off.abs() > tolerance).any()):
        raise ConfigError(
            f"view rotations are not multiples of 2 pi / {bins}: set data.point_augment.rotation_bins "
            f"to objective.rotation_bins ({bins})"
        )
    return torch.remainder(index.long(), bins)


# ----------------------------------------------------------------------------------------------------
# Sampling features at points.


def sample_bev(feature_map: Tensor, xyz: Tensor, point_cloud_range) -> Tensor:
    """Bilinear BEV features at points: (B, C, H, W) map over the range, (B, K, >=2) metres -> (B, K, C).
    Points must be finite (mask them before)."""
    grid = bev_grid_coordinates(xyz, point_cloud_range).to(feature_map.dtype).unsqueeze(1)  # (B, 1, K, 2)
    sampled = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.squeeze(2).transpose(1, 2)


def pick(
    valid: Tensor, count: int, preferred: Tensor | None = None, fraction: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Draw up to ``count`` random rows per sample among ``valid`` (B, N) (global RNG), ``fraction`` of them
    among ``preferred`` when there are enough. Returns (index (B, K), ok (B, K)) with K = min(count, N)."""
    count = min(count, valid.shape[1])
    score = torch.rand(valid.shape, device=valid.device)
    if preferred is not None and fraction > 0:
        favoured = round(count * fraction)
        # the first `favoured` picks go to preferred rows; the rest to any valid row
        boost = (preferred & valid).float() * 2.0
        first = torch.where(valid, score + boost, torch.full_like(score, -1.0)).topk(favoured, dim=1)
        rest_score = torch.where(valid, score, torch.full_like(score, -1.0))
        rest_score.scatter_(1, first.indices, -1.0)
        rest = rest_score.topk(count - favoured, dim=1)
        index = torch.cat([first.indices, rest.indices], dim=1)
        ok = torch.cat([first.values >= 0, rest.values >= 0], dim=1)
        return index, ok
    top = torch.where(valid, score, torch.full_like(score, -1.0)).topk(count, dim=1)
    return top.indices, top.values >= 0


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """(B, N, D) rows at (B, K) -> (B, K, D)."""
    return torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


# ----------------------------------------------------------------------------------------------------
# The objective.


class ESSL3D(Objective):
    def __init__(self, cfg: ESSL3DConfig, backbone: nn.Module):
        super().__init__(backbone)
        if cfg.contrastive_weight > 0 and cfg.num_views < 2:
            raise ConfigError("objective.contrastive_weight > 0 needs objective.num_views >= 2")
        if cfg.rotation_bins < 2 or cfg.matches_per_scene < 2 or cfg.temperature <= 0:
            raise ConfigError("objective.rotation_bins and matches_per_scene must be >= 2, temperature > 0")
        self.cfg = cfg
        self.required_views = ViewSpec(source="lidar_pair", num_views=cfg.num_views)
        width = backbone.num_features
        self.rotation_head = nn.Sequential(  # pooled 2x first: the angle is a global property, keep it cheap
            nn.AvgPool2d(2),
            nn.Conv2d(width, cfg.hidden_dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cfg.hidden_dim),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(cfg.hidden_dim, cfg.rotation_bins),
        )
        self.contrast_head = _mlp(width, cfg.hidden_dim, cfg.proj_dim)
        self.projector = _mlp(width, cfg.hidden_dim, cfg.proj_dim)
        self.predictor = _mlp(cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    @property
    def point_cloud_range(self):
        return self.backbone.point_cloud_range

    # -- terms -----------------------------------------------------------------------------------
    def rotation_loss(self, maps: dict[int, Tensor], views: Views) -> tuple[Tensor, Tensor]:
        logits = torch.cat([self.rotation_head(maps[i]) for i in sorted(maps)])
        labels = torch.cat(
            [rotation_labels(views.params[i]["angle"], self.cfg.rotation_bins) for i in sorted(maps)]
        )
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()

    def contrastive_loss(self, maps: dict[int, Tensor], views: Views) -> tuple[Tensor, Tensor, int]:
        xyz_a, xyz_b = views.points[0][..., :3], views.points[1][..., :3]
        valid = inside_bev(xyz_a, self.point_cloud_range) & inside_bev(xyz_b, self.point_cloud_range)
        index, ok = pick(valid, self.cfg.matches_per_scene)
        pos_a, pos_b = _gather(xyz_a, index), _gather(xyz_b, index)
        feats_a = sample_bev(maps[0], torch.where(ok.unsqueeze(-1), pos_a, 0), self.point_cloud_range)[ok]
        feats_b = sample_bev(maps[1], torch.where(ok.unsqueeze(-1), pos_b, 0), self.point_cloud_range)[ok]
        if len(feats_a) < 2:
            return maps[0].sum() * 0, torch.zeros((), device=maps[0].device), 0
        cells = self._cell_keys(pos_a, maps[0])[ok]
        exclude = cells.unsqueeze(0) == cells.unsqueeze(1)
        loss, accuracy = point_info_nce(
            self.contrast_head(feats_a), self.contrast_head(feats_b), self.cfg.temperature, exclude
        )
        return loss, accuracy, len(feats_a)

    def _cell_keys(self, xyz: Tensor, feature_map: Tensor) -> Tensor:
        """(B, K, 3) -> (B, K) int64 id of the feature-map cell (and sample) each point falls in."""
        height, width = feature_map.shape[-2:]
        grid = (bev_grid_coordinates(xyz, self.point_cloud_range) + 1) / 2  # [0, 1]
        column = (grid[..., 0] * width).long().clamp(0, width - 1)
        row = (grid[..., 1] * height).long().clamp(0, height - 1)
        sample = torch.arange(xyz.shape[0], device=xyz.device).view(-1, 1)
        return (sample * height + row) * width + column

    def flow_loss(self, maps: dict[int, Tensor], views: Views) -> tuple[Tensor, int]:
        next_index = views.extras["next_view"]
        source, target_pos = views.points[0][..., :3], views.extras["flow_target"]
        valid = inside_bev(source, self.point_cloud_range) & inside_bev(target_pos, self.point_cloud_range)
        moving = (
            torch.linalg.vector_norm(torch.nan_to_num(views.extras["flow"].float()), dim=-1)
            > self.cfg.moving_threshold
        )
        index, ok = pick(valid, self.cfg.matches_per_scene, moving, self.cfg.moving_fraction)
        if int(ok.sum()) < 2:
            return maps[0].sum() * 0, 0
        pos_t = torch.where(ok.unsqueeze(-1), _gather(source, index), 0)
        pos_next = torch.where(ok.unsqueeze(-1), _gather(target_pos, index), 0)
        pairs = [(0, pos_t, next_index, pos_next)]
        if self.cfg.flow_symmetric:
            pairs.append((next_index, pos_next, 0, pos_t))
        losses = []
        for online_view, online_pos, target_view, target_pos_ in pairs:
            online = self.predictor(
                self.projector(sample_bev(maps[online_view], online_pos, self.point_cloud_range)[ok])
            )
            with torch.no_grad():
                target_map = self.target_backbone.forward_features(views.points[target_view])
                target = self.target_projector(
                    sample_bev(target_map, target_pos_, self.point_cloud_range)[ok]
                )
            losses.append(byol_loss(online, target))
        return sum(losses) / len(losses), int(ok.sum())

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, views: Views) -> StepOutput:
        cfg = self.cfg
        if not hasattr(self.backbone, "point_cloud_range"):
            raise ConfigError(
                "essl3d needs a BEV backbone with a point_cloud_range (backbone.name=pointpillars), got "
                f"{type(self.backbone).__name__}"
            )
        if "next_view" not in views.extras:
            raise UserError(
                "essl3d needs views from the 'lidar_pair' view maker (extras['next_view'] missing)"
            )
        next_index = views.extras["next_view"]
        needed = set()
        if cfg.rotation_weight > 0:
            needed |= set(range(cfg.num_views))
        if cfg.contrastive_weight > 0:
            needed |= {0, 1}
        if cfg.flow_weight > 0:
            needed |= {0} | ({next_index} if cfg.flow_symmetric else set())
        needed |= {0}
        maps = {i: self.backbone.forward_features(views.points[i]) for i in sorted(needed)}
        loss = maps[0].sum() * 0
        metrics: dict[str, Tensor | float] = {}
        if cfg.rotation_weight > 0:
            rotation_maps = {i: maps[i] for i in range(cfg.num_views)}
            term, accuracy = self.rotation_loss(rotation_maps, views)
            loss = loss + cfg.rotation_weight * term
            metrics.update({"loss/rotation": term.detach(), "rotation_acc": accuracy})
        if cfg.contrastive_weight > 0:
            term, accuracy, matches = self.contrastive_loss(maps, views)
            loss = loss + cfg.contrastive_weight * term
            metrics.update(
                {"loss/contrastive": term.detach(), "contrastive_acc": accuracy, "matches": float(matches)}
            )
        if cfg.flow_weight > 0:
            term, matches = self.flow_loss(maps, views)
            loss = loss + cfg.flow_weight * term
            metrics.update({"loss/flow": term.detach(), "flow_matches": float(matches)})
        features = maps[0].detach().mean(dim=(2, 3))
        return StepOutput(loss=loss, metrics=metrics, features=features)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        # step counts the optimizer steps done (1-based); BYOL's first update uses the base momentum.
        tau = ema_momentum(step - 1, total_steps, self.cfg.ema_momentum)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)


@OBJECTIVES.register(
    "essl3d",
    ESSL3DConfig,
    description="E-SSL3D (Hegde et al. 2024): LiDAR rotation, point contrast and scene flow",
)
def build_essl3d(cfg: ESSL3DConfig, backbone: nn.Module) -> ESSL3D:
    return ESSL3D(cfg, backbone)
