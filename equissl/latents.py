"""The 3DIEBench latent layout and the relative actions methods and evaluations read from it.

Every view of an object in a 3DIEBench-format dataset (3DIEBench itself, shapes3d) carries 7 latents::

    0-2  euler_x, euler_y, euler_z   extrinsic xyz Euler angles of the object, radians
    3    floor_hue                   in [0, 1]
    4-5  light_theta, light_phi      direction of the spot light, radians
    6    light_hue                   in [0, 1]

The relative rotation from view 1 to view 2 is ``R1^-1 R2`` (:mod:`equissl.rotations`); colour changes
are raw hue differences (not wrapped around the circle), as SIE's ``Dataset3DIEBenchRotColor``. One
module, so that SIE, seq-JEPA, EquiCaps and the equivariance metrics read the layout the same way.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from equissl.rotations import (
    euler_xyz_to_matrix,
    matrix_to_quat,
    relative_rotation_matrix,
    relative_rotation_quat,
)

LATENT_NAMES = ("euler_x", "euler_y", "euler_z", "floor_hue", "light_theta", "light_phi", "light_hue")
LATENT_SIZE = len(LATENT_NAMES)
COLOUR_LATENTS = (3, 6)  # floor hue, light hue
# Ranges a readable latent must respect (closed; slot -> (low, high, how the range is written)). The
# light's angles are left unchecked: 3DIEBench does not state their range.
LATENT_RANGES = {
    **{k: (-math.pi, math.pi, "[-pi, pi]") for k in (0, 1, 2)},
    **{k: (0.0, 1.0, "[0, 1]") for k in COLOUR_LATENTS},
}
_RANGE_SLACK = 1e-6  # float32 storage rounds pi up by 9e-8

RelativeAction = Literal["rotation", "rotation_colour"]
ACTION_DIMS: dict[str, int] = {"rotation": 4, "rotation_colour": 4 + len(COLOUR_LATENTS)}


def latent_problem(values: np.ndarray) -> str | None:
    """Why a view's stored latent cannot be used (wrong shape or type, a NaN or infinity, an Euler angle
    outside [-pi, pi], a hue outside [0, 1]), or None when it is valid."""
    if values.shape != (LATENT_SIZE,):
        return f"expected {LATENT_SIZE} values, shape ({LATENT_SIZE},), got shape {values.shape}"
    if values.dtype.kind not in "fiu":
        return f"expected numbers, got dtype {values.dtype}"
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        bad = [LATENT_NAMES[k] for k in np.flatnonzero(~np.isfinite(values))]
        return f"not finite: {', '.join(bad)}"
    for slot, (low, high, written) in LATENT_RANGES.items():
        if not low - _RANGE_SLACK <= values[slot] <= high + _RANGE_SLACK:
            return f"{LATENT_NAMES[slot]} = {values[slot]:g} outside {written}"
    return None


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def euler_angles(latents: Tensor) -> Tensor:
    """(..., >= 3) latents -> (..., 3) extrinsic xyz Euler angles in radians."""
    return latents[..., :3]


def absolute_quat(latents: Tensor) -> Tensor:
    """(..., >= 3) latents -> (..., 4) canonical quaternions (x, y, z, w), w >= 0, of the object's pose."""
    return matrix_to_quat(euler_xyz_to_matrix(_upcast(euler_angles(latents))))


def relative_rotation(latents_1: Tensor, latents_2: Tensor) -> Tensor:
    """(..., >= 3), (..., >= 3) latents -> (..., 3, 3) ``R1^-1 R2``, view 1's object frame to view 2's."""
    return relative_rotation_matrix(_upcast(euler_angles(latents_1)), _upcast(euler_angles(latents_2)))


def colour_deltas(latents_1: Tensor, latents_2: Tensor) -> Tensor:
    """(..., 7), (..., 7) latents -> (..., 2) floor-hue and light-hue changes, view 2 minus view 1.

    Raw differences in [-1, 1] (hues in [0, 1], not wrapped), as SIE's ``Dataset3DIEBenchRotColor``.
    """
    index = torch.tensor(COLOUR_LATENTS, device=latents_1.device)
    return latents_2.index_select(-1, index) - latents_1.index_select(-1, index)


def relative_action(latents_1: Tensor, latents_2: Tensor, action: RelativeAction = "rotation") -> Tensor:
    """The transformation from view 1 to view 2 as predictors consume it.

    latents_*: (..., 7) latents. Returns (..., 4) the canonical (w >= 0) quaternion (x, y, z, w) of
    ``R1^-1 R2`` for ``action="rotation"``, or (..., 6) that quaternion followed by :func:`colour_deltas`
    for ``"rotation_colour"`` (SIE's "rotation + colour", seq-JEPA's ``rotcolor``).
    """
    if action not in ACTION_DIMS:
        raise ValueError(f"action must be one of {sorted(ACTION_DIMS)}, got {action!r}")
    if latents_1.shape != latents_2.shape or latents_1.shape[-1] < LATENT_SIZE:
        raise ValueError(
            f"expected two (..., {LATENT_SIZE}) latent tensors, got {tuple(latents_1.shape)} and "
            f"{tuple(latents_2.shape)}"
        )
    latents_1, latents_2 = _upcast(latents_1), _upcast(latents_2)
    quat = relative_rotation_quat(euler_angles(latents_1), euler_angles(latents_2))
    if action == "rotation":
        return quat
    return torch.cat([quat, colour_deltas(latents_1, latents_2)], dim=-1)


def sequence_actions(latents: list[Tensor], action: RelativeAction = "rotation") -> Tensor:
    """Relative actions between consecutive views: V tensors (B, 7) -> (B, V - 1, A), slot j taking view j
    to view j + 1 (:func:`relative_action`)."""
    if len(latents) < 2:
        raise ValueError(f"sequence_actions needs at least 2 views, got {len(latents)}")
    return torch.stack([relative_action(a, b, action) for a, b in itertools.pairwise(latents)], dim=1)
