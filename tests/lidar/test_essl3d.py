"""E-SSL3D: its loss functions against independent computations, feature sampling on the BEV grid, the
EMA target, switchable terms, a short training that lowers the loss, and one trainer run end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equissl.augmentations.points import LidarPairViewMaker, PointAugmentConfig
from equissl.backbones.lidar.pointpillars import PointPillars, PointPillarsConfig
from equissl.datasets.lidar_sim import lidar_sim_dataset
from equissl.ssl.ema import ema_momentum
from equissl.ssl.losses import byol_loss
from equissl.ssl.scene_flow import (
    ESSL3D,
    ESSL3DConfig,
    point_info_nce,
    rotation_labels,
    sample_bev,
)
from tests.conftest import tiny_sim_overrides

SMALL = PointPillarsConfig(
    point_cloud_range=(-12.8, -12.8, -3.0, 12.8, 12.8, 1.0),
    voxel_size=(0.4, 0.4, 4.0),
    max_points_per_voxel=6,
    max_voxels=3000,
    vfe_filters=(16,),
    layer_nums=(1, 1),
    layer_strides=(2, 2),
    num_filters=(16, 32),
    upsample_strides=(1, 2),
    num_upsample_filters=(16, 16),
)


def _reference_info_nce(z_a, z_b, temperature, exclude=None):
    """Row by row: -log softmax of the matching pair, both directions averaged."""
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    total = 0.0
    for first, second in ((z_a, z_b), (z_b, z_a)):
        for i in range(len(first)):
            terms = []
            for j in range(len(second)):
                if exclude is not None and j != i and exclude[i, j]:
                    continue
                terms.append(float(first[i] @ second[j]) / temperature)
            positive = float(first[i] @ second[i]) / temperature
            total += -(positive - math.log(sum(math.exp(t) for t in terms)))
    return total / (2 * len(z_a))


def test_point_info_nce_matches_reference_and_properties():
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = (
        torch.randn(6, 5, generator=generator).double(),
        torch.randn(6, 5, generator=generator).double(),
    )
    loss, _ = point_info_nce(z_a, z_b, 0.2)
    assert math.isclose(float(loss), _reference_info_nce(z_a, z_b, 0.2), rel_tol=1e-9)
    exclude = torch.zeros(6, 6, dtype=torch.bool)
    exclude[0, 3] = exclude[3, 0] = exclude[2, 5] = exclude[5, 2] = True  # symmetric, as same-cell masks are
    masked, _ = point_info_nce(z_a, z_b, 0.2, exclude)
    assert math.isclose(float(masked), _reference_info_nce(z_a, z_b, 0.2, exclude), rel_tol=1e-9)
    assert math.isclose(float(point_info_nce(z_b, z_a, 0.2)[0]), float(loss), rel_tol=1e-9)  # symmetric
    order = torch.randperm(6, generator=generator)
    assert math.isclose(float(point_info_nce(z_a[order], z_b[order], 0.2)[0]), float(loss), rel_tol=1e-9)
    identical, accuracy = point_info_nce(torch.eye(6), torch.eye(6) * 3, 0.01)  # scale-free, perfect matches
    assert float(identical) < 1e-6 and float(accuracy) == 1.0
    with pytest.raises(ValueError, match=r"\(M, D\)"):
        point_info_nce(z_a, z_b[:3], 0.2)


def test_byol_loss_closed_forms_and_rotation_labels():
    z = torch.randn(4, 8)
    assert float(byol_loss(z, 2 * z)) < 1e-6
    assert math.isclose(float(byol_loss(z, -z)), 4.0, rel_tol=1e-6)
    orthogonal = byol_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert math.isclose(float(orthogonal), 2.0, rel_tol=1e-6)
    angles = torch.tensor([0.0, math.pi / 2, -math.pi, -math.pi / 2, 2 * math.pi])
    assert rotation_labels(angles, 4).tolist() == [0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="rotation_bins"):
        rotation_labels(torch.tensor([0.3]), 4)
    assert ema_momentum(0, 100, 0.99) == pytest.approx(0.99) and ema_momentum(
        100, 100, 0.99
    ) == pytest.approx(1.0)


def test_sample_bev_reads_the_cell_a_point_falls_in():
    pc_range = (-4.0, -2.0, -3.0, 4.0, 2.0, 1.0)  # 8 m x 4 m over a 4 x 8 map: 1 m cells
    feature_map = torch.arange(32, dtype=torch.float64).view(1, 1, 4, 8)
    centres = torch.tensor([[[-3.5, -1.5, 0.0], [0.5, 0.5, 0.0], [3.5, 1.5, 0.0]]], dtype=torch.float64)
    values = sample_bev(feature_map, centres, pc_range)[0, :, 0]
    assert values.tolist() == [0.0, 2 * 8 + 4, 3 * 8 + 7]  # row = y cell, column = x cell
    halfway = sample_bev(feature_map, torch.tensor([[[0.0, 0.5, 0.0]]], dtype=torch.float64), pc_range)
    assert float(halfway) == (2 * 8 + 3 + 2 * 8 + 4) / 2  # bilinear between neighbouring x cells


@pytest.fixture(scope="module")
def views(tiny_sim):
    root, cfg = tiny_sim
    dataset = lidar_sim_dataset(root, cfg, "train", seed=0)
    batch = dataset.collate_fn([dataset[0], dataset[3]])
    spec = ESSL3D(ESSL3DConfig(), PointPillars(SMALL)).required_views
    maker = LidarPairViewMaker(PointAugmentConfig(rotation_bins=4), spec)
    return maker(batch, torch.Generator().manual_seed(0))


def _objective(**overrides) -> ESSL3D:
    torch.manual_seed(0)
    cfg = ESSL3DConfig(matches_per_scene=64, hidden_dim=32, proj_dim=16, **overrides)
    return ESSL3D(cfg, PointPillars(SMALL))


def test_terms_switch_off_and_every_trainable_parameter_learns(views):
    full = _objective()
    torch.manual_seed(1)
    out = full(views)
    assert {"loss/rotation", "loss/contrastive", "loss/flow"} <= set(out.metrics)
    assert out.features.shape == (2, full.backbone.num_features)
    out.loss.backward()
    frozen = {n for n, p in full.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("target_backbone.", "target_projector.")) for n in frozen)
    missing = [n for n, p in full.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    only_flow = _objective(rotation_weight=0.0, contrastive_weight=0.0)
    out = only_flow(views)
    assert "loss/rotation" not in out.metrics and "loss/contrastive" not in out.metrics
    assert torch.isclose(out.loss, out.metrics["loss/flow"])
    weighted = _objective(rotation_weight=2.5, contrastive_weight=0.0, flow_weight=0.0)
    out = weighted(views)
    assert torch.isclose(out.loss, 2.5 * out.metrics["loss/rotation"])
    with pytest.raises(ValueError, match="num_views >= 2"):
        _objective(num_views=1)
    from torchvision.models import resnet18

    image_backbone = resnet18()
    image_backbone.num_features = 512
    with pytest.raises(ValueError, match="BEV backbone"):
        ESSL3D(ESSL3DConfig(), image_backbone)(views)


def test_ema_target_follows_the_online_network(views):
    objective = _objective()
    with torch.no_grad():
        for p in objective.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in objective.target_backbone.parameters()]
    objective.on_step_end(1, 10)  # after the first optimizer step: tau = base momentum 0.99
    for old, new, online in zip(
        before, objective.target_backbone.parameters(), objective.backbone.parameters()
    ):
        assert torch.allclose(new, 0.99 * old + 0.01 * online, atol=1e-6)
    held = [p.clone() for p in objective.target_backbone.parameters()]
    objective.on_step_end(11, 10)  # past the schedule's end tau = 1: the target stays
    assert all(torch.equal(a, b) for a, b in zip(held, objective.target_backbone.parameters()))


def test_short_training_lowers_the_loss(views):
    objective = _objective()
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(step % 2)  # the same correspondences every other step
        out = objective(views)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        objective.on_step_end(step + 1, 12)
        losses.append(float(out.loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_pretrains_through_the_trainer(tiny_sim, tmp_path):
    from equissl.config import build_config
    from equissl.launch.trainer import pretrain

    root, cfg = tiny_sim
    data = tiny_sim_overrides(root, cfg)
    backbone = [
        "backbone.point_cloud_range=[-12.8,-12.8,-3.0,12.8,12.8,1.0]",
        "backbone.vfe_filters=[8]",
        "backbone.layer_nums=[1,1]",
        "backbone.layer_strides=[2,2]",
        "backbone.num_filters=[8,16]",
        "backbone.upsample_strides=[1,2]",
        "backbone.num_upsample_filters=[8,8]",
        "backbone.max_points_per_voxel=4",
    ]
    config = build_config(
        "essl3d_pointpillars_lidarsim",
        [
            *data,
            *backbone,
            "objective.matches_per_scene=32",
            "objective.hidden_dim=16",
            "objective.proj_dim=8",
            "trainer.max_steps=2",
            "trainer.batch_size=2",
            "trainer.progress=false",
            "trainer.device=cpu",
            f"trainer.run_dir={tmp_path}/run",
            "trainer.log_every=1",
            "optim.warmup_steps=0",
        ],
    )
    result = pretrain(config)
    assert result.status == "finished" and result.step == 2
    assert math.isfinite(result.last_metrics["loss"]) and "loss/flow" in result.last_metrics
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
    # The CLI probes a LiDAR run with the BEV probe (no class labels), refuses kNN, exports for OpenPCDet.
    from equissl.cli import main

    run = str(tmp_path / "run")
    assert main(["probe", "--run", run]) == 0
    assert (tmp_path / "run" / "eval" / "bev_probe.json").is_file()
    assert main(["knn", "--run", run]) == 2
    assert main(["export", "--run", run, "--format", "openpcdet", "--out", str(tmp_path / "pp")]) == 0
    assert (tmp_path / "pp.pth").is_file()
