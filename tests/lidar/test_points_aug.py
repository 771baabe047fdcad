"""Point augmentations: the returned parameters reproduce the transform, on points and on boxes alike;
the lidar_pair view maker carries every sweep-t point into the t+1 view."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equissl.augmentations.points import (
    LidarPairViewMaker,
    PointAugment,
    PointAugmentConfig,
    apply_params,
    apply_params_to_boxes,
    box_corners,
    sample_params,
    transform_matrix,
)
from equissl.types import ViewSpec


def _points(generator: torch.Generator, batch: int = 3, count: int = 50) -> torch.Tensor:
    points = torch.cat(
        [
            torch.randn(batch, count, 3, generator=generator) * 10,
            torch.rand(batch, count, 1, generator=generator),
        ],
        dim=-1,
    )
    points[1, -5:] = float("nan")  # padding rows
    return points


def _reference(
    points: np.ndarray, flip: float, angle: float, scale: float, translation: np.ndarray
) -> np.ndarray:
    """Independent: scipy rotation, OpenPCDet's order flip -> rotate -> scale, then translate."""
    xyz = points[:, :3].copy()
    if flip:
        xyz[:, 1] = -xyz[:, 1]
    xyz = Rotation.from_euler("z", angle).apply(xyz) * scale + translation
    return np.concatenate([xyz, points[:, 3:]], axis=1)


@pytest.mark.parametrize("bins", [4, 0])
def test_returned_params_reproduce_the_transform(bins):
    generator = torch.Generator().manual_seed(0)
    points = _points(generator).double()
    cfg = PointAugmentConfig(rotation_bins=bins, flip_prob=0.5, translation_std=(0.5, 0.5, 0.2))
    out, params = PointAugment(cfg)(points, torch.Generator().manual_seed(1))
    assert set(params) == {"flip", "angle", "rotation_index", "scale", "translation"}
    for b in range(points.shape[0]):
        expected = _reference(
            points[b].numpy(),
            float(params["flip"][b]),
            float(params["angle"][b]),
            float(params["scale"][b]),
            params["translation"][b].numpy(),
        )
        np.testing.assert_allclose(out[b].numpy(), expected, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(apply_params(points, params), out, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(out[1, -5:]).all()
    if bins:
        np.testing.assert_allclose(
            params["angle"].numpy(),
            ((params["rotation_index"] * 2 * math.pi / bins + math.pi) % (2 * math.pi) - math.pi).numpy(),
            atol=1e-6,
        )
    else:
        assert (params["rotation_index"] == -1).all() and (params["angle"].abs() <= 0.7854).all()
    again, again_params = PointAugment(cfg)(points, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, out, rtol=0, atol=0, equal_nan=True)
    assert all(torch.equal(again_params[k], params[k]) for k in params)


def test_matrix_inverse_undoes_the_transform():
    generator = torch.Generator().manual_seed(2)
    points = _points(generator)[:, :, :3].double()
    points[1, -5:] = 0
    params = {
        k: v.double() if v.is_floating_point() else v
        for k, v in sample_params(3, PointAugmentConfig(flip_prob=1.0), generator).items()
    }
    matrix = transform_matrix(params)
    assert torch.allclose(
        torch.linalg.det(matrix[:, :3, :3]), -(params["scale"] ** 3)
    )  # a flip reverses handedness
    moved = apply_params(points, params)
    back = (moved - matrix[:, None, :3, 3]) @ torch.linalg.inv(matrix[:, :3, :3]).transpose(1, 2)
    assert torch.allclose(back, points, atol=1e-9)


def test_boxes_move_with_their_points():
    generator = torch.Generator().manual_seed(3)
    boxes = torch.tensor(
        [[[5.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.3], [-8.0, 6.0, -0.8, 0.8, 0.6, 1.7, -2.5]]] * 4
    ).double()
    params = sample_params(
        4, PointAugmentConfig(rotation_bins=0, rotation_range=(-3.0, 3.0), flip_prob=0.5), generator
    )
    params["flip"] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # both cases
    params = {k: v.double() if v.is_floating_point() else v for k, v in params.items()}
    moved_boxes = apply_params_to_boxes(boxes, params)
    corners = box_corners(boxes).reshape(4, -1, 3)
    moved_corners = apply_params(corners, params).reshape(4, 2, 8, 3)
    expected = box_corners(moved_boxes)
    for b in range(4):
        for k in range(2):  # same corner sets (a flip reorders them)
            a = sorted(map(tuple, moved_corners[b, k].numpy().round(6)))
            e = sorted(map(tuple, expected[b, k].numpy().round(6)))
            np.testing.assert_allclose(np.array(a), np.array(e), atol=1e-5)
    assert ((moved_boxes[..., 6] >= -math.pi) & (moved_boxes[..., 6] < math.pi)).all()
    np.testing.assert_allclose(
        moved_boxes[..., 3:6].numpy(), (boxes[..., 3:6] * params["scale"].view(-1, 1, 1)).numpy()
    )


def test_config_validation():
    with pytest.raises(ValueError, match="scale_range"):
        PointAugment(PointAugmentConfig(scale_range=(1.1, 0.9)))
    with pytest.raises(ValueError, match="rotation_bins"):
        PointAugment(PointAugmentConfig(rotation_bins=-1))


def test_lidar_pair_views_carry_points_by_flow_pose_and_augmentation():
    generator = torch.Generator().manual_seed(4)
    points = _points(generator, batch=2, count=30)
    next_points = _points(generator, batch=2, count=25)
    flow = torch.randn(2, 30, 3, generator=generator) * 0.3
    flow[1, -5:] = float("nan")
    relative = torch.stack(
        [
            torch.from_numpy(
                np.block(
                    [
                        [Rotation.from_euler("z", a).as_matrix(), np.array([[t], [0.1], [0]])],
                        [np.zeros((1, 3)), np.ones((1, 1))],
                    ]
                )
            ).float()
            for a, t in ((0.05, -1.0), (-0.02, -0.7))
        ]
    )
    batch = {
        "points": points,
        "points_next": next_points,
        "flow": flow,
        "relative_pose": relative,
        "flow_is_ground_truth": torch.tensor([True, True]),
        "boxes": torch.tensor([[[1.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.0]]] * 2),
        "box_labels": torch.zeros(2, 1).long(),
    }
    maker = LidarPairViewMaker(PointAugmentConfig(), ViewSpec(source="lidar_pair", num_views=2))
    views = maker(batch, torch.Generator().manual_seed(5))
    assert (
        len(views.points) == 3
        and not views.images
        and views.extras["next_view"] == 2
        and views.batch_size == 2
    )
    for k in range(2):  # frame-t views: rows stay aligned with the input points
        assert torch.allclose(views.points[k], apply_params(points, views.params[k]), equal_nan=True)
    assert torch.allclose(views.points[2], apply_params(next_points, views.params[2]), equal_nan=True)
    for b in range(2):
        moved = points[b, :, :3].double() + flow[b].double()
        in_next = moved @ relative[b, :3, :3].double().T + relative[b, :3, 3].double()
        one = {k: v[b : b + 1] for k, v in views.params[2].items()}
        expected = apply_params(in_next.unsqueeze(0).float(), one)[0]
        assert torch.allclose(views.extras["flow_target"][b], expected, atol=1e-5, equal_nan=True)
    assert torch.isnan(views.extras["flow_target"][1, -5:]).all()
    assert torch.allclose(views.extras["boxes"][1], apply_params_to_boxes(batch["boxes"], views.params[1]))
    with pytest.raises(ValueError, match="lidar_pair"):
        LidarPairViewMaker(PointAugmentConfig(), ViewSpec(source="lidar_pair"))({"image": points}, None)
