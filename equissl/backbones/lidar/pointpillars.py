"""PointPillars encoder (Lang et al., CVPR 2019) with OpenPCDet's module and parameter names.

Module tree, as in OpenPCDet's ``PointPillar`` detector (``pcdet/models/detectors/pointpillar.py``), so
``state_dict()`` keys are OpenPCDet's and load into its model unchanged:

- ``vfe``: ``PillarVFE`` -- decorates every point of a pillar to ``C + 6`` features (x, y, z, features,
  offsets from the pillar's point mean, offsets from the pillar centre; +1 with the distance), then
  ``pfn_layers.i`` = ``PFNLayer`` (``linear`` without bias, ``norm`` = BatchNorm1d(eps=1e-3,
  momentum=0.01), ReLU, max over the pillar's points).
- ``map_to_bev_module``: ``PointPillarScatter`` -- pillar features onto the (B, C, ny, nx) canvas
  (no parameters).
- ``backbone_2d``: ``BaseBEVBackbone`` -- ``blocks.i`` = Sequential(ZeroPad2d(1), Conv2d(3x3, stride),
  BatchNorm2d, ReLU, then ``layer_nums[i]`` x (Conv2d 3x3, BatchNorm2d, ReLU)); ``deblocks.i`` =
  Sequential(ConvTranspose2d(k=stride, stride), BatchNorm2d, ReLU) back to a common resolution; the
  levels are concatenated: ``num_features = sum(num_upsample_filters)``.

The defaults are OpenPCDet's ``tools/cfgs/kitti_models/pointpillar.yaml`` (KITTI, 3 classes).

Backbone contract (see :mod:`equissl.backbones.base`): the input ``x`` is a padded point batch
(B, N, C) float -- x, y, z in metres in the sensor frame, then ``C - 3`` point features (intensity);
rows containing a NaN are padding -- or an already voxelized :class:`Pillars`.
``forward_features(x)`` -> the BEV map (B, num_features, ny / s, nx / s) covering exactly
``point_cloud_range`` in x/y (s = ``feature_stride``); ``forward(x)`` -> (B, num_features) mean over the
map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.backbones.lidar.voxelize import Pillars, grid_size, voxelize
from equissl.config import BackboneConfig
from equissl.errors import ConfigError
from equissl.registry import BACKBONES

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # OpenPCDet's, for every norm layer of this model


@dataclass
class PointPillarsConfig(BackboneConfig):
    """OpenPCDet's ``pointpillar.yaml`` (KITTI) by default; key names follow its ``MODEL`` section."""

    name: str = "pointpillars"
    point_cloud_range: tuple[float, ...] = (
        0.0,
        -39.68,
        -3.0,
        69.12,
        39.68,
        1.0,
    )  # DATA_CONFIG.POINT_CLOUD_RANGE
    voxel_size: tuple[float, ...] = (0.16, 0.16, 4.0)  # transform_points_to_voxels.VOXEL_SIZE
    max_points_per_voxel: int = 32  # MAX_POINTS_PER_VOXEL
    max_voxels: int = 16000  # MAX_NUMBER_OF_VOXELS (train)
    num_point_features: int = 4  # x, y, z, intensity
    use_norm: bool = True  # VFE.USE_NORM
    with_distance: bool = False  # VFE.WITH_DISTANCE
    use_absolute_xyz: bool = True  # VFE.USE_ABSLOTE_XYZ (sic, OpenPCDet's spelling)
    vfe_filters: tuple[int, ...] = (64,)  # VFE.NUM_FILTERS; the last is MAP_TO_BEV.NUM_BEV_FEATURES
    layer_nums: tuple[int, ...] = (3, 5, 5)  # BACKBONE_2D.LAYER_NUMS
    layer_strides: tuple[int, ...] = (2, 2, 2)
    num_filters: tuple[int, ...] = (64, 128, 256)
    upsample_strides: tuple[int, ...] = (1, 2, 4)
    num_upsample_filters: tuple[int, ...] = (128, 128, 128)

    @classmethod
    def tiny(cls) -> PointPillarsConfig:
        """A 32 x 32 pillar grid and a two-level slim 2D backbone, for contract tests."""
        return cls(
            point_cloud_range=(-6.4, -6.4, -3.0, 6.4, 6.4, 1.0),
            voxel_size=(0.4, 0.4, 4.0),
            max_points_per_voxel=6,
            max_voxels=500,
            vfe_filters=(8,),
            layer_nums=(1, 1),
            layer_strides=(2, 2),
            num_filters=(8, 16),
            upsample_strides=(1, 2),
            num_upsample_filters=(8, 8),
        )


class PFNLayer(nn.Module):
    """Linear + BN + ReLU on every point, max over the pillar; non-last layers concatenate the max back
    onto every point (their width is split in half between the two)."""

    def __init__(self, in_channels: int, out_channels: int, use_norm: bool = True, last_layer: bool = False):
        super().__init__()
        self.last_vfe = last_layer
        self.use_norm = use_norm
        if not last_layer:
            out_channels = out_channels // 2
        self.linear = nn.Linear(in_channels, out_channels, bias=not use_norm)
        if use_norm:
            self.norm = nn.BatchNorm1d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, inputs: Tensor) -> Tensor:
        """(P, M, C_in) -> (P, 1, C_out) for the last layer, else (P, M, C_out)."""
        x = self.linear(inputs)
        if self.use_norm:
            pillars, points, channels = x.shape
            x = self.norm(x.reshape(-1, channels)).reshape(pillars, points, channels)
        x = F.relu(x)
        x_max = x.max(dim=1, keepdim=True).values
        if self.last_vfe:
            return x_max
        return torch.cat([x, x_max.expand_as(x)], dim=2)


class PillarVFE(nn.Module):
    """Pillar feature net: 10-d point decoration (for x, y, z, intensity), PFN layers, max per pillar."""

    def __init__(self, cfg: PointPillarsConfig):
        super().__init__()
        self.use_absolute_xyz = cfg.use_absolute_xyz
        self.with_distance = cfg.with_distance
        in_channels = cfg.num_point_features + (6 if cfg.use_absolute_xyz else 3) + int(cfg.with_distance)
        widths = [in_channels, *cfg.vfe_filters]
        self.pfn_layers = nn.ModuleList(
            PFNLayer(widths[i], widths[i + 1], cfg.use_norm, last_layer=i == len(widths) - 2)
            for i in range(len(widths) - 1)
        )
        self.num_filters = tuple(cfg.vfe_filters)
        self.voxel_size = tuple(cfg.voxel_size)
        # centre of cell 0 on each axis
        self.offset = tuple(cfg.voxel_size[a] / 2 + cfg.point_cloud_range[a] for a in range(3))

    def decorate(self, pillars: Pillars) -> Tensor:
        """(P, M, C) pillar points -> (P, M, C + 6 [+1]) features, zero on padding slots."""
        voxels, num_points, coords = pillars.voxels, pillars.num_points, pillars.coords
        xyz = voxels[:, :, :3]
        mean = xyz.sum(dim=1, keepdim=True) / num_points.to(voxels.dtype).clamp(min=1).view(-1, 1, 1)
        f_cluster = xyz - mean
        # coords are (b, z, y, x): column 3 - axis is the cell index along x, y, z
        centers = torch.stack(
            [coords[:, 3 - a].to(voxels.dtype) * self.voxel_size[a] + self.offset[a] for a in range(3)], dim=1
        )
        f_center = xyz - centers.unsqueeze(1)
        features = [voxels if self.use_absolute_xyz else voxels[:, :, 3:], f_cluster, f_center]
        if self.with_distance:
            features.append(torch.linalg.vector_norm(xyz, dim=2, keepdim=True))
        features = torch.cat(features, dim=-1)
        slots = torch.arange(voxels.shape[1], device=voxels.device)
        mask = (slots.view(1, -1) < num_points.view(-1, 1)).unsqueeze(-1).to(features.dtype)
        return features * mask

    def forward(self, pillars: Pillars) -> Tensor:
        """-> (P, num_filters[-1]) pillar features."""
        features = self.decorate(pillars)
        for pfn in self.pfn_layers:
            features = pfn(features)
        return features.squeeze(1)


class PointPillarScatter(nn.Module):
    """Pillar features onto the dense (B, C, ny, nx) BEV canvas; empty cells are zero."""

    def __init__(self, num_bev_features: int, grid: tuple[int, int, int]):
        super().__init__()
        self.num_bev_features = num_bev_features
        self.nx, self.ny, self.nz = grid
        if self.nz != 1:
            raise ValueError(
                f"pillars need one voxel along z, got nz={self.nz}: set voxel_size[2] to the z extent"
            )

    def forward(self, pillar_features: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        cells = self.ny * self.nx
        canvas = pillar_features.new_zeros(batch_size * cells, self.num_bev_features)
        index = coords[:, 0] * cells + coords[:, 2] * self.nx + coords[:, 3]
        canvas = canvas.index_put((index,), pillar_features)
        return canvas.view(batch_size, self.ny, self.nx, -1).permute(0, 3, 1, 2).contiguous()


class BaseBEVBackbone(nn.Module):
    """Strided conv blocks, each upsampled back (``deblocks``) and concatenated."""

    def __init__(self, cfg: PointPillarsConfig, input_channels: int):
        super().__init__()
        lengths = {len(cfg.layer_nums), len(cfg.layer_strides), len(cfg.num_filters)}
        if len(lengths) != 1 or len(cfg.upsample_strides) != len(cfg.num_upsample_filters):
            raise ConfigError(
                "backbone.layer_nums / layer_strides / num_filters must have one entry per level, and "
                "upsample_strides / num_upsample_filters equal lengths"
            )
        c_in = [input_channels, *cfg.num_filters[:-1]]
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        for level, (layers, stride, width) in enumerate(
            zip(cfg.layer_nums, cfg.layer_strides, cfg.num_filters)
        ):
            modules: list[nn.Module] = [
                nn.ZeroPad2d(1),
                nn.Conv2d(c_in[level], width, kernel_size=3, stride=stride, padding=0, bias=False),
                nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM),
                nn.ReLU(),
            ]
            for _ in range(layers):
                modules += [
                    nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM),
                    nn.ReLU(),
                ]
            self.blocks.append(nn.Sequential(*modules))
            if cfg.upsample_strides:
                self.deblocks.append(
                    self._deblock(width, cfg.num_upsample_filters[level], cfg.upsample_strides[level])
                )
        concatenated = sum(cfg.num_upsample_filters) if cfg.upsample_strides else cfg.num_filters[-1]
        if len(cfg.upsample_strides) > len(cfg.layer_nums):
            raise ValueError("an extra final deblock (len(upsample_strides) > levels) is not supported")
        self.num_bev_features = concatenated

    @staticmethod
    def _deblock(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        if stride < 1:
            raise ValueError(
                "fractional upsample_strides (strided-conv deblocks) are not supported; use >= 1"
            )
        return nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, stride, stride=stride, bias=False),
            nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )

    def forward(self, spatial_features: Tensor) -> Tensor:
        ups = []
        x = spatial_features
        for level, block in enumerate(self.blocks):
            x = block(x)
            ups.append(self.deblocks[level](x) if len(self.deblocks) else x)
        return torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]


class PointPillars(nn.Module):
    """The PointPillars encoder up to the BEV features a detection head would read
    (OpenPCDet's ``spatial_features_2d``)."""

    def __init__(self, cfg: PointPillarsConfig):
        super().__init__()
        self.cfg = cfg
        self.grid_size = grid_size(cfg.point_cloud_range, cfg.voxel_size)
        self.feature_stride = _feature_stride(cfg, self.grid_size)
        self.vfe = PillarVFE(cfg)
        self.map_to_bev_module = PointPillarScatter(cfg.vfe_filters[-1], self.grid_size)
        self.backbone_2d = BaseBEVBackbone(cfg, cfg.vfe_filters[-1])
        self.num_features = self.backbone_2d.num_bev_features

    @property
    def point_cloud_range(self) -> tuple[float, ...]:
        return tuple(self.cfg.point_cloud_range)

    def voxelize(self, points: Tensor) -> Pillars:
        if points.shape[-1] != self.cfg.num_point_features:
            raise ValueError(
                f"points have {points.shape[-1]} values per point, the backbone expects "
                f"num_point_features={self.cfg.num_point_features} (x, y, z, features...)"
            )
        return voxelize(
            points,
            self.cfg.point_cloud_range,
            self.cfg.voxel_size,
            self.cfg.max_points_per_voxel,
            self.cfg.max_voxels,
        )

    def forward_features(self, x: Tensor | Pillars) -> Tensor:
        """Padded points (B, N, C) or Pillars -> BEV features (B, num_features, ny / s, nx / s)."""
        pillars = x if isinstance(x, Pillars) else self.voxelize(x)
        pillar_features = self.vfe(pillars)
        canvas = self.map_to_bev_module(pillar_features, pillars.coords, pillars.batch_size)
        return self.backbone_2d(canvas)

    def forward(self, x: Tensor | Pillars) -> Tensor:
        """-> (B, num_features): the BEV map averaged over all cells."""
        return self.forward_features(x).mean(dim=(2, 3))

    export_formats = ("safetensors", "openpcdet")
    export_note = ""

    def export_state_dict(self) -> dict[str, Tensor]:
        """OpenPCDet key names (``vfe.pfn_layers.0.linear.weight``, ``backbone_2d.blocks.0.1.weight``,
        ``backbone_2d.deblocks.0.0.weight``, ...), loadable by ``Detector3DTemplate.load_params_from_file``."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def example_input(
        self, batch_size: int = 2, generator: torch.Generator | None = None, num_points: int = 2048
    ) -> Tensor:
        """Random points inside the range, (B, N, C), with the last quarter of sample 0 as NaN padding."""
        low = torch.tensor(self.cfg.point_cloud_range[:3])
        high = torch.tensor(self.cfg.point_cloud_range[3:])
        xyz = low + (high - low) * torch.rand(batch_size, num_points, 3, generator=generator)
        features = torch.rand(batch_size, num_points, self.cfg.num_point_features - 3, generator=generator)
        points = torch.cat([xyz, features], dim=-1)
        points[0, num_points - num_points // 4 :] = float("nan")
        return points


def _feature_stride(cfg: PointPillarsConfig, grid: tuple[int, int, int]) -> int:
    """Stride of the output map w.r.t. the pillar grid; every level must land on the same resolution."""
    cumulative, running = [], 1
    for stride in cfg.layer_strides:
        running *= stride
        cumulative.append(running)
    nx, ny, _ = grid
    if nx % running or ny % running:
        raise ConfigError(
            f"the BEV grid {nx} x {ny} must be divisible by the total stride {running} "
            "(product of backbone.layer_strides)"
        )
    if not cfg.upsample_strides:
        return running
    resolutions = {c / u for c, u in zip(cumulative, cfg.upsample_strides)}
    if len(resolutions) != 1 or not float(next(iter(resolutions))).is_integer():
        raise ValueError(
            f"every level must be upsampled to one integer stride: cumulative strides {cumulative} "
            f"/ upsample_strides {list(cfg.upsample_strides)}"
        )
    return int(resolutions.pop())


def openpcdet_model_config(cfg: PointPillarsConfig) -> dict:
    """The OpenPCDet YAML fragment (DATA_CONFIG / MODEL keys) whose model these weights load into."""
    return {
        "DATA_CONFIG": {
            "POINT_CLOUD_RANGE": list(cfg.point_cloud_range),
            "DATA_PROCESSOR": [
                {
                    "NAME": "transform_points_to_voxels",
                    "VOXEL_SIZE": list(cfg.voxel_size),
                    "MAX_POINTS_PER_VOXEL": cfg.max_points_per_voxel,
                    "MAX_NUMBER_OF_VOXELS": {"train": cfg.max_voxels, "test": cfg.max_voxels},
                }
            ],
        },
        "MODEL": {
            "NAME": "PointPillar",
            "VFE": {
                "NAME": "PillarVFE",
                "WITH_DISTANCE": cfg.with_distance,
                "USE_ABSLOTE_XYZ": cfg.use_absolute_xyz,
                "USE_NORM": cfg.use_norm,
                "NUM_FILTERS": list(cfg.vfe_filters),
            },
            "MAP_TO_BEV": {"NAME": "PointPillarScatter", "NUM_BEV_FEATURES": cfg.vfe_filters[-1]},
            "BACKBONE_2D": {
                "NAME": "BaseBEVBackbone",
                "LAYER_NUMS": list(cfg.layer_nums),
                "LAYER_STRIDES": list(cfg.layer_strides),
                "NUM_FILTERS": list(cfg.num_filters),
                "UPSAMPLE_STRIDES": list(cfg.upsample_strides),
                "NUM_UPSAMPLE_FILTERS": list(cfg.num_upsample_filters),
            },
        },
    }


@BACKBONES.register(
    "pointpillars",
    PointPillarsConfig,
    probe="bev",
    description="PointPillars LiDAR encoder (OpenPCDet layout)",
)
def build_pointpillars(cfg: PointPillarsConfig) -> PointPillars:
    if len(cfg.point_cloud_range) != 6 or len(cfg.voxel_size) != 3:
        raise ConfigError(
            "backbone.point_cloud_range needs 6 numbers (x_min, y_min, z_min, x_max, y_max, z_max) "
            "and backbone.voxel_size 3 (dx, dy, dz)"
        )
    if cfg.num_point_features < 3 or not cfg.vfe_filters:
        raise ConfigError("backbone.num_point_features must be >= 3 and backbone.vfe_filters non-empty")
    return PointPillars(cfg)
