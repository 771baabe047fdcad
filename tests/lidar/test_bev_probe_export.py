"""BEV probe targets and metric, a probe run on tiny data, and the OpenPCDet export."""

from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from equissl.backbones.lidar.pointpillars import PointPillars, PointPillarsConfig
from equissl.datasets.lidar_sim import lidar_sim_dataset
from equissl.eval.bev_probe import BEVProbeConfig, average_precision, bev_probe, occupancy_targets
from equissl.export.openpcdet import write_openpcdet
from tests.lidar.test_essl3d import SMALL
from tests.lidar.test_pointpillars import OPENPCDET_POINTPILLAR_KITTI


def test_occupancy_targets_of_axis_aligned_and_rotated_boxes():
    pc_range = (0.0, 0.0, -3.0, 8.0, 4.0, 1.0)  # a 4 x 8 map of 1 m cells
    boxes = torch.tensor(
        [
            [
                [2.0, 1.0, 0.0, 2.0, 0.8, 1.0, 0.0],
                [6.0, 2.0, 0.0, 2.0, 0.8, 1.0, math.pi / 2],
                [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
            ]
        ]
    )
    labels = torch.tensor([[0, 1, -1]])  # the third is padding
    occupied = occupancy_targets(boxes, labels, pc_range, 4, 8, num_classes=2, subsamples=3)
    cars = torch.zeros(4, 8, dtype=torch.bool)
    cars[0:2, 1:3] = True  # x in [1, 3], y in [0.6, 1.4]: cells x 1..2, y 0..1
    assert torch.equal(occupied[0, 0], cars)
    walkers = torch.zeros(4, 8, dtype=torch.bool)
    walkers[1:3, 5:7] = True  # turned 90 degrees: x in [5.6, 6.4], y in [1, 3]
    assert torch.equal(occupied[0, 1], walkers)


def test_average_precision_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert math.isclose(average_precision(scores, torch.tensor([1, 0, 1, 0])), (1 + 2 / 3) / 2, rel_tol=1e-6)
    assert average_precision(scores, torch.tensor([1, 1, 0, 0])) == 1.0
    assert math.isnan(average_precision(scores, torch.zeros(4)))


def test_bev_probe_runs_on_held_out_drives(tiny_sim):
    root, cfg = tiny_sim
    train, val = lidar_sim_dataset(root, cfg, "train", 0), lidar_sim_dataset(root, cfg, "val", 0)
    torch.manual_seed(0)
    result = bev_probe(PointPillars(SMALL), train, val, BEVProbeConfig(epochs=3, batch_size=2))
    assert set(result["AP"]) == {"Car", "Pedestrian", "Cyclist"}
    assert result["val_positive_cells"]["Car"] > 0 and 0 <= result["AP"]["Car"] <= 100
    assert 0 <= result["mAP"] <= 100 and result["train_cells"] > 0


def test_openpcdet_export_loads_like_load_params_from_file(tmp_path):
    backbone = PointPillars(PointPillarsConfig())
    paths = write_openpcdet(backbone, tmp_path / "pp_essl3d.pth", {"objective": "essl3d"})
    checkpoint = torch.load(paths["pth"], map_location="cpu", weights_only=True)
    state = checkpoint["model_state"]
    assert {k: tuple(v.shape) for k, v in state.items()} == OPENPCDET_POINTPILLAR_KITTI
    # OpenPCDet's Detector3DTemplate.load_params_from_file keeps the keys whose name and shape match
    detector = {
        **{k: torch.zeros(s) for k, s in OPENPCDET_POINTPILLAR_KITTI.items()},
        "dense_head.conv_cls.weight": torch.zeros(18, 384, 1, 1),
        "global_step": torch.zeros(1),
    }
    loaded = {k for k, v in state.items() if k in detector and detector[k].shape == v.shape}
    assert loaded == set(OPENPCDET_POINTPILLAR_KITTI)
    assert torch.equal(state["backbone_2d.blocks.2.16.weight"], backbone.backbone_2d.blocks[2][16].weight)
    tensors = load_file(str(paths["safetensors"]))
    assert tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state)
    metadata = json.loads(paths["json"].read_text())
    assert metadata["openpcdet_config"]["MODEL"]["BACKBONE_2D"]["LAYER_NUMS"] == [3, 5, 5]
    assert metadata["objective"] == "essl3d"
