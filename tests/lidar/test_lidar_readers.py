"""Readers of the KITTI odometry, SemanticKITTI and KITTI-360 layouts, on files written here in those
formats, and the pair dataset's handling of damaged sweeps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equissl.datasets.lidar import (
    KittiOdometryConfig,
    LidarPairDataset,
    build_kitti_odometry,
    kitti360_sequence,
    kitti_sequence,
    read_semantic_labels,
    write_calib,
    write_kitti_poses,
    write_semantic_labels,
    write_velodyne,
)

VELO_TO_CAM = np.array(
    [
        [7.533745e-03, -9.999714e-01, -6.166020e-04, -4.069766e-03],  # KITTI sequence 00's Tr
        [1.480249e-02, 7.280733e-04, -9.998902e-01, -7.631618e-02],
        [9.998621e-01, 7.523790e-03, 1.480755e-02, -2.717806e-01],
        [0, 0, 0, 1],
    ]
)


def _pose(yaw: float, xyz) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("z", yaw).as_matrix()
    matrix[:3, 3] = xyz
    return matrix


def _drive(frames: int) -> np.ndarray:
    return np.stack([_pose(0.05 * k, (1.2 * k, 0.1 * k, 0.01 * k)) for k in range(frames)])


def _cloud(rng, count: int) -> np.ndarray:
    return np.concatenate([rng.uniform(-20, 20, (count, 3)), rng.uniform(0, 1, (count, 1))], 1).astype(
        np.float32
    )


def test_kitti_odometry_reader_converts_camera_poses_to_velodyne(tmp_path):
    rng = np.random.default_rng(0)
    velodyne_poses = _drive(4)
    for k in range(4):
        write_velodyne(tmp_path / "sequences" / "05" / "velodyne" / f"{k:06d}.bin", _cloud(rng, 50 + k))
    write_calib(tmp_path / "sequences" / "05" / "calib.txt", VELO_TO_CAM)
    # the odometry devkit keeps ground-truth poses (of camera 0) in dataset/poses/SS.txt
    write_kitti_poses(
        tmp_path / "poses" / "05.txt", VELO_TO_CAM @ velodyne_poses @ np.linalg.inv(VELO_TO_CAM)
    )
    sequence = kitti_sequence(tmp_path, "05")
    np.testing.assert_allclose(sequence.poses, velodyne_poses, atol=1e-7)
    cfg = KittiOdometryConfig(root=str(tmp_path), train_sequences=("05",), val_sequences=())
    dataset = build_kitti_odometry(cfg, "train", "lidar_pair", 2, seed=0)
    assert len(dataset) == 3
    item = dataset[2]
    expected = np.linalg.inv(velodyne_poses[3]) @ velodyne_poses[2]
    np.testing.assert_allclose(item["relative_pose"].numpy(), expected, atol=1e-5)
    assert not bool(item["flow_is_ground_truth"]) and torch.all(item["flow"] == 0)
    assert item["points"].shape == (52, 4) and item["points_next"].shape == (53, 4)
    assert "boxes" not in item


def test_semantic_kitti_layout_poses_in_the_sequence_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "sequences" / "08"
    velodyne_poses = _drive(3)
    for k in range(3):
        write_velodyne(folder / "velodyne" / f"{k:06d}.bin", _cloud(rng, 40))
    write_calib(folder / "calib.txt", VELO_TO_CAM)
    write_kitti_poses(folder / "poses.txt", VELO_TO_CAM @ velodyne_poses @ np.linalg.inv(VELO_TO_CAM))
    semantic, instance = rng.integers(0, 260, 40), rng.integers(0, 50, 40)
    write_semantic_labels(folder / "labels" / "000000.label", semantic, instance)
    raw = np.fromfile(folder / "labels" / "000000.label", dtype=np.uint32)
    np.testing.assert_array_equal(raw, semantic | (instance << 16))
    read_semantic, read_instance = read_semantic_labels(folder / "labels" / "000000.label")
    np.testing.assert_array_equal(read_semantic, semantic)
    np.testing.assert_array_equal(read_instance, instance)
    np.testing.assert_allclose(kitti_sequence(tmp_path, "08").poses, velodyne_poses, atol=1e-7)


def test_kitti360_reader_composes_imu_poses_with_the_calibration(tmp_path):
    rng = np.random.default_rng(2)
    name = "2013_05_28_drive_0003_sync"
    for k in range(4):
        write_velodyne(
            tmp_path / "data_3d_raw" / name / "velodyne_points" / "data" / f"{k:010d}.bin", _cloud(rng, 30)
        )
    imu = _drive(4)
    frames = [0, 2, 3]  # KITTI-360 has no pose for some frames: frame 1 is left out
    rows = [[f, *imu[f][:3, :4].ravel()] for f in frames]
    (tmp_path / "data_poses" / name).mkdir(parents=True)
    np.savetxt(tmp_path / "data_poses" / name / "poses.txt", rows, fmt="%.9g")
    cam_to_pose = _pose(0.02, (1.5, -0.1, 0.8))
    cam_to_velo = _pose(-1.5, (0.3, 0.0, -0.2))
    (tmp_path / "calibration").mkdir()
    lines = [f"image_0{k}: " + " ".join(f"{v:.12g}" for v in cam_to_pose[:3, :4].ravel()) for k in range(4)]
    (tmp_path / "calibration" / "calib_cam_to_pose.txt").write_text("\n".join(lines) + "\n")
    np.savetxt(
        tmp_path / "calibration" / "calib_cam_to_velo.txt", cam_to_velo[:3, :4].reshape(1, 12), fmt="%.12g"
    )
    sequence = kitti360_sequence(tmp_path, name)
    assert [int(p.stem) for p in sequence.sweeps] == frames
    expected = imu[frames] @ cam_to_pose @ np.linalg.inv(cam_to_velo)
    np.testing.assert_allclose(sequence.poses, expected, atol=1e-7)
    cfg = KittiOdometryConfig(root=str(tmp_path), layout="kitti360", train_sequences=(name,))
    assert len(build_kitti_odometry(cfg, "train", "lidar_pair", 2, seed=0)) == 2


def test_empty_truncated_and_nan_sweeps_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "sequences" / "00"
    clouds = {k: _cloud(rng, 20) for k in range(7)}
    clouds[3][[1, 5]] = np.nan  # two NaN points
    clouds[5][:] = np.nan  # nothing finite left
    for k, cloud in clouds.items():
        write_velodyne(folder / "velodyne" / f"{k:06d}.bin", cloud)
    (folder / "velodyne" / "000001.bin").write_bytes(b"")  # an empty sweep
    (folder / "velodyne" / "000006.bin").write_bytes(clouds[6].tobytes()[:-6])  # truncated
    write_kitti_poses(folder / "poses.txt", _drive(7))
    dataset = LidarPairDataset([kitti_sequence(tmp_path, "00")])
    # pairs (0,1) (1,2) need the empty sweep, (5,6) the truncated one: left are (2,3) (3,4) (4,5)
    assert [t for _, t in dataset.pairs] == [2, 3, 4]
    assert dataset.stats["empty_sweeps"] == 1 and dataset.stats["truncated_sweeps"] == 1
    assert dataset.stats["pairs_skipped"] == 3
    item = dataset[0]  # (2, 3): sweep 3 loses its two NaN points
    assert item["points_next"].shape == (18, 4) and torch.isfinite(item["points_next"]).all()
    assert dataset.stats["nan_points"] == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = dataset[2]  # (4, 5): sweep 5 is all NaN -> falls back to the next pair, (2, 3)
    assert int(item["frame"]) == 2 and any("no finite point" in str(w.message) for w in caught)
    assert dataset.stats["sweeps_empty_after_filtering"] == 1 and dataset.stats["fallbacks"] == 1
    assert dataset.skipped_reads == 1 and dataset.bad_files == [str(folder / "velodyne" / "000005.bin")]
    assert "000004.bin" in dataset.describe_item(2)
    assert dataset.stats["nan_points"] == 2 + 20 + 2


def test_collate_pads_with_nan_and_subsamples_reproducibly(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "sequences" / "00"
    for k, count in enumerate((30, 12, 25)):
        write_velodyne(folder / "velodyne" / f"{k:06d}.bin", _cloud(rng, count))
    write_kitti_poses(folder / "poses.txt", _drive(3))
    dataset = LidarPairDataset([kitti_sequence(tmp_path, "00")], max_points=20, seed=7)
    first = dataset[0]
    assert first["points"].shape == (20, 4)  # 30 -> a random 20, kept in scan order
    all_points = torch.from_numpy(np.fromfile(folder / "velodyne" / "000000.bin", np.float32).reshape(-1, 4))
    rows = [int(torch.nonzero((all_points == row).all(1))[0]) for row in first["points"]]
    assert rows == sorted(rows)
    assert torch.equal(dataset[0]["points"], first["points"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["points"], first["points"])
    batch = dataset.collate_fn([dataset[0], dataset[1]])
    assert batch["points"].shape == (2, 20, 4) and batch["num_points"].tolist() == [20, 12]
    assert torch.isnan(batch["points"][1, 12:]).all() and torch.isfinite(batch["points"][1, :12]).all()
    assert torch.isnan(batch["flow"][1, 12:]).all()
    assert batch["relative_pose"].shape == (2, 4, 4)


def test_kitti_reader_errors_name_the_missing_files(tmp_path):
    with pytest.raises(ValueError, match="no velodyne sweeps"):
        kitti_sequence(tmp_path, "00")
    write_velodyne(tmp_path / "sequences" / "00" / "velodyne" / "000000.bin", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="no poses"):
        kitti_sequence(tmp_path, "00")
    write_kitti_poses(tmp_path / "sequences" / "00" / "poses.txt", _drive(2))
    with pytest.raises(ValueError, match="1 sweeps but 2 poses"):
        kitti_sequence(tmp_path, "00")
    cfg = KittiOdometryConfig(root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        build_kitti_odometry(cfg, "train", "lidar_pair", 2, seed=0)
    assert math.isclose(float(np.linalg.det(VELO_TO_CAM[:3, :3])), 1.0, abs_tol=1e-4)
