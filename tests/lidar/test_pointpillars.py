"""PointPillars: OpenPCDet's key names and shapes, voxelization against a plain reference, the pillar
feature net's decoration, scatter placement and the backbone contract."""

from __future__ import annotations

import math

import pytest
import torch

from equissl.backbones.lidar.pointpillars import PointPillars, PointPillarsConfig, build_pointpillars
from equissl.backbones.lidar.voxelize import Pillars, grid_size, voxelize


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


# OpenPCDet tools/cfgs/kitti_models/pointpillar.yaml, MODEL section:
#   VFE: PillarVFE, USE_ABSLOTE_XYZ: True, WITH_DISTANCE: False, USE_NORM: True, NUM_FILTERS: [64]
#     -> 4 point features (x, y, z, intensity) + 6 decorations = 10 inputs, one last PFN layer of 64
#   BACKBONE_2D: LAYER_NUMS [3, 5, 5], LAYER_STRIDES [2, 2, 2], NUM_FILTERS [64, 128, 256],
#     UPSAMPLE_STRIDES [1, 2, 4], NUM_UPSAMPLE_FILTERS [128, 128, 128]
#   blocks.i = ZeroPad2d(0), Conv2d(1), BN(2), ReLU(3), then (Conv, BN, ReLU) x LAYER_NUMS[i] at 4, 7, 10, ...
#   deblocks.i = ConvTranspose2d(0) (in, out, k=stride, k), BN(1), ReLU(2)
OPENPCDET_POINTPILLAR_KITTI = {
    "vfe.pfn_layers.0.linear.weight": (64, 10),
    **_bn("vfe.pfn_layers.0.norm", 64),
    "backbone_2d.blocks.0.1.weight": (64, 64, 3, 3),
    **_bn("backbone_2d.blocks.0.2", 64),
    "backbone_2d.blocks.0.4.weight": (64, 64, 3, 3),
    **_bn("backbone_2d.blocks.0.5", 64),
    "backbone_2d.blocks.0.7.weight": (64, 64, 3, 3),
    **_bn("backbone_2d.blocks.0.8", 64),
    "backbone_2d.blocks.0.10.weight": (64, 64, 3, 3),
    **_bn("backbone_2d.blocks.0.11", 64),
    "backbone_2d.blocks.1.1.weight": (128, 64, 3, 3),
    **_bn("backbone_2d.blocks.1.2", 128),
    "backbone_2d.blocks.1.4.weight": (128, 128, 3, 3),
    **_bn("backbone_2d.blocks.1.5", 128),
    "backbone_2d.blocks.1.7.weight": (128, 128, 3, 3),
    **_bn("backbone_2d.blocks.1.8", 128),
    "backbone_2d.blocks.1.10.weight": (128, 128, 3, 3),
    **_bn("backbone_2d.blocks.1.11", 128),
    "backbone_2d.blocks.1.13.weight": (128, 128, 3, 3),
    **_bn("backbone_2d.blocks.1.14", 128),
    "backbone_2d.blocks.1.16.weight": (128, 128, 3, 3),
    **_bn("backbone_2d.blocks.1.17", 128),
    "backbone_2d.blocks.2.1.weight": (256, 128, 3, 3),
    **_bn("backbone_2d.blocks.2.2", 256),
    "backbone_2d.blocks.2.4.weight": (256, 256, 3, 3),
    **_bn("backbone_2d.blocks.2.5", 256),
    "backbone_2d.blocks.2.7.weight": (256, 256, 3, 3),
    **_bn("backbone_2d.blocks.2.8", 256),
    "backbone_2d.blocks.2.10.weight": (256, 256, 3, 3),
    **_bn("backbone_2d.blocks.2.11", 256),
    "backbone_2d.blocks.2.13.weight": (256, 256, 3, 3),
    **_bn("backbone_2d.blocks.2.14", 256),
    "backbone_2d.blocks.2.16.weight": (256, 256, 3, 3),
    **_bn("backbone_2d.blocks.2.17", 256),
    "backbone_2d.deblocks.0.0.weight": (64, 128, 1, 1),
    **_bn("backbone_2d.deblocks.0.1", 128),
    "backbone_2d.deblocks.1.0.weight": (128, 128, 2, 2),
    **_bn("backbone_2d.deblocks.1.1", 128),
    "backbone_2d.deblocks.2.0.weight": (256, 128, 4, 4),
    **_bn("backbone_2d.deblocks.2.1", 128),
}

TINY = PointPillarsConfig.tiny()


def test_default_model_has_openpcdet_pointpillar_keys_and_shapes():
    model = build_pointpillars(PointPillarsConfig())
    state = model.export_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == OPENPCDET_POINTPILLAR_KITTI
    assert model.num_features == 384 and model.feature_stride == 2  # spatial_features_2d: 384 ch at stride 2
    assert model.grid_size == (432, 496, 1)


def _reference_voxelize(points, pc_range, size, max_points, max_voxels):
    """Plain Python: per sample, pillars in order of first point, first max_points points each."""
    nx, ny, nz = grid_size(pc_range, size)
    out = []
    for b in range(points.shape[0]):
        pillars: dict[tuple, list] = {}
        for row in points[b]:
            if not torch.isfinite(row).all():
                continue
            cell = [math.floor((float(row[a]) - pc_range[a]) / size[a]) for a in range(3)]
            if not all(0 <= c < n for c, n in zip(cell, (nx, ny, nz))):
                continue
            key = (b, cell[2], cell[1], cell[0])
            if key not in pillars and len(pillars) >= max_voxels:
                continue
            pillars.setdefault(key, []).append(row)
        for key, rows in pillars.items():
            out.append((key, torch.stack(rows[:max_points]), min(len(rows), max_points)))
    return out


def test_voxelize_matches_a_plain_reference():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat(
        [
            torch.rand(3, 300, 2, generator=generator) * 16 - 8,  # some outside +-6.4
            torch.rand(3, 300, 1, generator=generator) * 5 - 3.5,
            torch.rand(3, 300, 1, generator=generator),
        ],
        dim=-1,
    )
    points[:, :40, :2] = points[:, :1, :2] + 0.01 * torch.rand(
        3, 40, 2, generator=generator
    )  # a crowded pillar
    points[1, 250:] = float("nan")
    points[2] = float("nan")  # an empty sample
    pc_range, size = TINY.point_cloud_range, TINY.voxel_size
    pillars = voxelize(points, pc_range, size, max_points_per_voxel=6, max_voxels=60)
    expected = _reference_voxelize(points, pc_range, size, 6, 60)
    assert pillars.batch_size == 3 and len(pillars.coords) == len(expected)
    for i, (key, rows, count) in enumerate(expected):
        assert tuple(pillars.coords[i].tolist()) == key
        assert int(pillars.num_points[i]) == count
        assert torch.equal(pillars.voxels[i, :count], rows) and (pillars.voxels[i, count:] == 0).all()
    assert (pillars.coords[:, 0] == 0).sum() == 60  # capped at max_voxels
    assert (pillars.coords[:, 0] == 2).sum() == 0


def test_pillar_decoration_follows_openpcdet():
    cfg = TINY
    model = PointPillars(cfg)
    voxels = torch.zeros(1, cfg.max_points_per_voxel, 4)
    voxels[0, :2] = torch.tensor([[0.1, -0.3, -1.0, 0.5], [0.3, -0.1, 0.0, 0.7]])
    coords = torch.tensor(
        [[0, 0, 15, 16]]
    )  # (b, z, y, x): centre x = 16 * 0.4 + 0.2 - 6.4, y = 15 * 0.4 + 0.2 - 6.4
    features = model.vfe.decorate(Pillars(voxels, torch.tensor([2]), coords, 1))
    mean = torch.tensor([0.2, -0.2, -0.5])
    centre = torch.tensor([0.2, -0.2, -1.0])  # z: 0 * 4 + 2 - 3
    for k in range(2):
        expected = torch.cat([voxels[0, k], voxels[0, k, :3] - mean, voxels[0, k, :3] - centre])
        assert torch.allclose(features[0, k], expected, atol=1e-6)
    assert (features[0, 2:] == 0).all()  # padding slots masked
    assert features.shape[-1] == model.vfe.pfn_layers[0].linear.in_features == 10


def test_scatter_puts_each_pillar_at_its_cell():
    model = PointPillars(TINY)
    features = torch.arange(3 * 8, dtype=torch.float32).view(3, 8)
    coords = torch.tensor([[0, 0, 2, 5], [1, 0, 0, 0], [1, 0, 31, 7]])
    canvas = model.map_to_bev_module(features, coords, batch_size=3)
    assert canvas.shape == (3, 8, 32, 32)
    assert torch.equal(canvas[0, :, 2, 5], features[0]) and torch.equal(canvas[1, :, 31, 7], features[2])
    assert canvas.abs().sum() == features.abs().sum()


@pytest.mark.parametrize("train", [True, False])
def test_backbone_contract_forward_backward_and_empty_samples(train):
    torch.manual_seed(0)
    model = PointPillars(TINY).train(train)
    x = model.example_input(3, torch.Generator().manual_seed(1), num_points=400)
    x[2] = float("nan")  # an empty sweep
    bev = model.forward_features(x)
    assert bev.shape == (3, model.num_features, 16, 16) and torch.isfinite(bev).all()
    assert torch.allclose(model(x), bev.mean(dim=(2, 3)))
    if train:
        model(x).square().sum().backward()
        missing = [
            n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
        ]
        assert not missing
    with pytest.raises(ValueError, match="num_point_features"):
        model.forward_features(x[..., :3])


def test_config_errors():
    with pytest.raises(ValueError, match="whole number of voxels"):
        PointPillars(PointPillarsConfig(voxel_size=(0.17, 0.16, 4.0)))
    with pytest.raises(ValueError, match="divisible"):
        PointPillars(
            PointPillarsConfig(point_cloud_range=(0, -4.8, -3, 4.8, 4.8, 1), voxel_size=(0.4, 0.4, 4.0))
        )
    with pytest.raises(ValueError, match="one voxel along z"):
        PointPillars(PointPillarsConfig(voxel_size=(0.16, 0.16, 2.0)))
