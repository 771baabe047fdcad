"""The simulated LiDAR: determinism, ground-truth flow and poses against the true surfaces, boxes, layout."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open3d as o3d
import pytest
import torch

from equissl.augmentations.points import box_corners
from equissl.datasets.lidar import (
    read_boxes,
    read_calib,
    read_flow,
    read_kitti_poses,
    read_semantic_labels,
    read_velodyne,
)
from equissl.datasets.lidar_sim import (
    SEMANTIC,
    LidarSimConfig,
    beam_directions,
    build_scene,
    default_root,
    lidar_sim_dataset,
    render_lidar_sim,
    scene_raycaster,
    sequence_rng,
    simulate_sweep,
)
from equissl.errors import UserError
from tests.conftest import tiny_sim_config


def _surface_distance(scene, time, world_points, actors=None, with_static=True) -> np.ndarray:
    raycaster, _ = scene_raycaster(scene, time, actors, with_static)
    return raycaster.compute_distance(o3d.core.Tensor(world_points.astype(np.float32))).numpy()


def _to_world(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def test_same_seed_renders_same_sweeps(tmp_path, tiny_sim):
    root, cfg = tiny_sim
    again = render_lidar_sim(tmp_path / "again", cfg, progress=False)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        if name.name == "lidar_sim.json":  # holds the render's wall time
            continue
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    other = tiny_sim_config(seed=cfg.seed + 1, num_sequences=1, val_sequences=0, frames_per_sequence=2)
    different = render_lidar_sim(tmp_path / "other", other, progress=False)
    sweep = "sequences/00/velodyne/000000.bin"
    assert (different / sweep).read_bytes() != (root / sweep).read_bytes()


def test_render_is_cached_and_refuses_foreign_folders(tmp_path, tiny_sim):
    root, cfg = tiny_sim
    stamp = (root / "lidar_sim.json").stat().st_mtime_ns
    assert render_lidar_sim(root, cfg, progress=False) == root
    assert (root / "lidar_sim.json").stat().st_mtime_ns == stamp
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        render_lidar_sim(tmp_path / "foreign", cfg, progress=False)
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "user data"
    # a simulation with other settings is refused by name, never replaced
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    refusal = f"holds a lidar_sim render with data.beams={cfg.beams}, this run asks for 16: point data.root"
    with pytest.raises(UserError, match=refusal):
        render_lidar_sim(root, dataclasses.replace(cfg, beams=16), progress=False)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_default_root_keeps_simulations_with_other_settings_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUISSL_DATA", str(tmp_path))
    assert default_root(LidarSimConfig()) == tmp_path / "lidar_sim"
    assert default_root(LidarSimConfig(max_points=100, render_workers=1)) == tmp_path / "lidar_sim"
    roots = {default_root(c) for c in (LidarSimConfig(), LidarSimConfig(beams=64), LidarSimConfig(seed=1))}
    others = roots - {tmp_path / "lidar_sim"}
    assert len(others) == 2 and all(r.parent == tmp_path and r.name.startswith("lidar_sim-") for r in others)
    assert default_root(LidarSimConfig(root=str(tmp_path / "mine"), beams=64)) == tmp_path / "mine"


def test_flow_moves_points_onto_their_object_at_the_next_sweep():
    cfg = tiny_sim_config(beams=16, azimuth_steps=360, cars=16, pedestrians=10, cyclists=4)
    rng = sequence_rng(cfg.seed, "train", 0)
    scene = build_scene(cfg, rng)
    sweep = simulate_sweep(scene, 0, cfg, rng)
    moving = np.array([a >= 0 and scene.actors[a].moving for a in sweep.actor])
    assert moving.sum() > 100, "the scene should show moving actors"
    actors = sorted(set(sweep.actor[moving].tolist()))
    points = sweep.points[moving, :3].astype(np.float64)
    carried = _to_world(sweep.sensor_pose, points + sweep.flow[moving])
    error = _surface_distance(scene, scene.times[1], carried, actors, with_static=False)
    assert np.median(error) < cfg.range_noise  # below the sensor noise
    # sharper: each carried point keeps its coordinates in its actor's own frame (a rigid motion)
    world_t = _to_world(sweep.sensor_pose, points)
    for index in actors:
        mine = sweep.actor[moving] == index
        local_t = _to_world(np.linalg.inv(scene.actors[index].matrix(scene.times[0])), world_t[mine])
        local_next = _to_world(np.linalg.inv(scene.actors[index].matrix(scene.times[1])), carried[mine])
        np.testing.assert_allclose(local_next, local_t, atol=1e-4)
    assert np.linalg.norm(sweep.flow[moving], axis=1).mean() > 0.05
    static = sweep.actor < 0
    assert np.all(sweep.flow[static] == 0)


def test_written_flow_and_poses_carry_every_point_to_the_next_surface(tiny_sim):
    root, cfg = tiny_sim
    dataset = lidar_sim_dataset(root, cfg, "train", seed=0)
    scene = build_scene(cfg, sequence_rng(cfg.seed, "train", 0))  # the scene's rng stream starts with it
    item = dataset[1]  # sequence 00, frames 1 -> 2
    assert (int(item["sequence"]), int(item["frame"])) == (0, 1)
    assert bool(item["flow_is_ground_truth"])
    p = item["points"][:, :3].double()
    q = (p + item["flow"].double()) @ item["relative_pose"][:3, :3].double().T + item["relative_pose"][
        :3, 3
    ].double()
    sensor_next = scene.ego.matrix(scene.times[2], cfg.sensor_height)
    error = _surface_distance(scene, scene.times[2], _to_world(sensor_next, q.numpy()))
    assert np.median(error) < cfg.range_noise
    assert np.quantile(error, 0.9) < 3 * cfg.range_noise


def test_boxes_hold_their_points_and_labels_follow_semantic_kitti(tiny_sim):
    root, _ = tiny_sim
    seq = root / "sequences" / "00"
    points = read_velodyne(seq / "velodyne" / "000000.bin")
    semantic, instance = read_semantic_labels(seq / "labels" / "000000.label")
    assert len(semantic) == len(points) == len(read_flow(seq / "flow" / "000000.bin"))
    lines = [line.split() for line in (seq / "boxes" / "000000.txt").read_text().splitlines()]
    assert lines and all(len(parts) == 10 for parts in lines)
    actor_ids = {
        SEMANTIC[k] for k in ("car", "person", "bicyclist", "moving-car", "moving-person", "moving-bicyclist")
    }
    assert set(semantic[instance > 0].tolist()) <= actor_ids
    assert SEMANTIC["road"] in set(semantic[instance == 0].tolist())
    checked = 0
    for parts in lines:
        track, count = int(parts[8]), int(parts[9])
        mine = points[instance == track + 1, :3]
        assert len(mine) == count
        if count == 0:
            continue
        box = torch.tensor([float(v) for v in parts[1:8]], dtype=torch.float64)
        grown = box.clone()
        grown[3:6] += 0.2  # range noise and the box's float rounding
        local = torch.from_numpy(mine).double() - grown[:3]
        cos, sin = torch.cos(grown[6]), torch.sin(grown[6])
        along, across = local[:, 0] * cos + local[:, 1] * sin, -local[:, 0] * sin + local[:, 1] * cos
        inside = (
            (along.abs() <= grown[3] / 2)
            & (across.abs() <= grown[4] / 2)
            & (local[:, 2].abs() <= grown[5] / 2)
        )
        assert inside.all(), parts[0]
        checked += 1
    assert checked >= 3
    boxes, _ = read_boxes(seq / "boxes" / "000000.txt", min_points=1)
    assert len(boxes) == sum(int(p[9]) >= 1 for p in lines) and box_corners(torch.from_numpy(boxes)).shape[
        1:
    ] == (8, 3)


def test_kitti_layout_poses_calib_and_splits(tiny_sim):
    root, cfg = tiny_sim
    splits = json.loads((root / "splits.json").read_text())
    assert splits == {"train": ["00", "01"], "val": ["02"]}
    seq = root / "sequences" / "00"
    assert sorted(p.name for p in (seq / "velodyne").iterdir()) == ["000000.bin", "000001.bin", "000002.bin"]
    camera = read_kitti_poses(seq / "poses.txt")
    np.testing.assert_allclose(camera[0], np.eye(4), atol=1e-9)  # KITTI poses start at the identity
    tr = read_calib(seq / "calib.txt")["Tr"]
    velodyne = np.linalg.inv(tr) @ camera @ tr
    scene = build_scene(cfg, sequence_rng(cfg.seed, "train", 0))
    first = scene.ego.matrix(0.0, cfg.sensor_height)
    expected = np.linalg.inv(first) @ scene.ego.matrix(scene.times[2], cfg.sensor_height)
    np.testing.assert_allclose(velodyne[2], expected, atol=1e-6)
    assert velodyne[2][0, 3] > 0.3  # the ego drove forward
    directions = beam_directions(cfg)
    assert directions.shape == (cfg.beams * cfg.azimuth_steps, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
