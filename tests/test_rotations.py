import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equissl.rotations import (
    euler_xyz_to_matrix,
    matrix_to_quat,
    quat_similarity,
    quat_to_matrix,
    relative_rotation_matrix,
    relative_rotation_quat,
)


@pytest.fixture
def random_rotations():
    r1 = Rotation.random(64, random_state=11)
    r2 = Rotation.random(64, random_state=12)
    e1 = torch.tensor(r1.as_euler("xyz"), dtype=torch.float64)
    e2 = torch.tensor(r2.as_euler("xyz"), dtype=torch.float64)
    return r1, r2, e1, e2


def _canonical(q):
    q = np.asarray(q)
    return np.where(q[..., 3:] < 0, -q, q)


def test_euler_to_matrix_matches_scipy(random_rotations):
    r1, _, e1, _ = random_rotations
    assert np.allclose(euler_xyz_to_matrix(e1).numpy(), r1.as_matrix(), atol=1e-12)


def test_matrix_to_quat_matches_scipy_in_every_branch():
    rotations = Rotation.random(256, random_state=3)
    # include rotations by ~pi about each axis, where the w-branch is unstable
    special = Rotation.from_rotvec(
        np.array([[np.pi, 0, 0], [0, np.pi - 1e-4, 0], [0, 0, np.pi], [1e-6, 0, 0]])
    )
    for r in (rotations, special):
        quat = matrix_to_quat(torch.tensor(r.as_matrix()))
        assert np.allclose(quat.numpy(), _canonical(r.as_quat()), atol=1e-8)
        assert torch.allclose(quat_to_matrix(quat), torch.tensor(r.as_matrix()), atol=1e-10)


def test_relative_rotation_is_r1_inverse_r2_in_that_order(random_rotations):
    r1, r2, e1, e2 = random_rotations
    expected = r1.inv() * r2
    assert np.allclose(relative_rotation_matrix(e1, e2).numpy(), expected.as_matrix(), atol=1e-10)
    assert np.allclose(relative_rotation_quat(e1, e2).numpy(), _canonical(expected.as_quat()), atol=1e-8)
    # composition: R2 = R1 @ R_rel, and the other order differs for random rotations
    assert np.allclose((r1 * expected).as_matrix(), r2.as_matrix(), atol=1e-10)
    wrong = (r2 * r1.inv()).as_matrix()
    assert not np.allclose(relative_rotation_matrix(e1, e2).numpy(), wrong, atol=1e-3)


def test_quat_similarity_ignores_sign():
    q = torch.tensor(Rotation.random(8, random_state=0).as_quat())
    assert torch.allclose(quat_similarity(q, -q), torch.ones(8, dtype=q.dtype))
    other = torch.tensor(Rotation.random(8, random_state=1).as_quat())
    assert (quat_similarity(q, other) < 1 - 1e-6).all()
