"""3D rotations of 3DIEBench latents: Euler angles -> matrices / quaternions, relative rotations.

Conventions (shared with scipy): Euler angles are *extrinsic* x, y, z (scipy ``"xyz"``), so
``R = Rz(c) @ Ry(b) @ Rx(a)``; quaternions are in scipy's (x, y, z, w) order with w >= 0 after
``canonical_quat``. The relative rotation of view 2 with respect to view 1 is ``R1^-1 R2`` (SIE's
definition): it maps view 1's object frame to view 2's, ``R2 = R1 @ R_rel``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def euler_xyz_to_matrix(angles: Tensor) -> Tensor:
    """(..., 3) extrinsic x, y, z angles in radians -> (..., 3, 3) rotation matrices."""
    a, b, c = angles.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def matrix_to_quat(matrix: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w), w >= 0.

    Uses the numerically stable branch (largest of w, x, y, z) per element, as scipy does.
    """
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack(
                [
                    1 + 2 * m[..., 0, 0] - trace,
                    m[..., 1, 0] + m[..., 0, 1],
                    m[..., 2, 0] + m[..., 0, 2],
                    m[..., 2, 1] - m[..., 1, 2],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] + m[..., 0, 1],
                    1 + 2 * m[..., 1, 1] - trace,
                    m[..., 2, 1] + m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 0] + m[..., 0, 2],
                    m[..., 2, 1] + m[..., 1, 2],
                    1 + 2 * m[..., 2, 2] - trace,
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                    1 + trace,
                ],
                -1,
            ),
        ],
        -2,
    )  # (..., 4 branches, 4 components); branch k has its k-th component largest when chosen
    diagonal = torch.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2], trace], -1)
    best = diagonal.argmax(-1)
    quat = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return canonical_quat(quat / quat.norm(dim=-1, keepdim=True))


def canonical_quat(quat: Tensor) -> Tensor:
    """q and -q are the same rotation; choose the one with w >= 0."""
    return torch.where(quat[..., 3:] < 0, -quat, quat)


def quat_to_matrix(quat: Tensor) -> Tensor:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3, 3)."""
    x, y, z, w = (quat / quat.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).unflatten(-1, (3, 3))


def relative_rotation_matrix(euler_1: Tensor, euler_2: Tensor) -> Tensor:
    """(..., 3), (..., 3) Euler xyz -> (..., 3, 3) ``R1^-1 R2`` (so ``R2 = R1 @ R_rel``)."""
    r1, r2 = euler_xyz_to_matrix(euler_1), euler_xyz_to_matrix(euler_2)
    return r1.transpose(-1, -2) @ r2


def relative_rotation_quat(euler_1: Tensor, euler_2: Tensor) -> Tensor:
    """(..., 3), (..., 3) Euler xyz -> (..., 4) quaternion (x, y, z, w) of ``R1^-1 R2``, w >= 0."""
    return matrix_to_quat(relative_rotation_matrix(euler_1, euler_2))


def quat_similarity(q1: Tensor, q2: Tensor) -> Tensor:
    """<q1, q2>^2 in [0, 1]: 1 for the same rotation whatever the sign (q ~ -q)."""
    q1 = q1 / q1.norm(dim=-1, keepdim=True)
    q2 = q2 / q2.norm(dim=-1, keepdim=True)
    return (q1 * q2).sum(-1).pow(2)
