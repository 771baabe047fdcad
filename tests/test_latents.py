"""The 3DIEBench latent layout: relative actions against scipy, colour deltas, sequences of actions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from equissl.latents import colour_deltas, relative_action, sequence_actions

B = 5


def random_latents(n: int, generator: torch.Generator) -> torch.Tensor:
    euler = (torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    rest = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    return torch.cat([euler, rest], dim=1)


def random_view_latents(views: int, batch: int = B, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    euler = (torch.rand(views, batch, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    euler[..., 1] /= 2  # scipy's xyz range for the middle angle
    rest = torch.rand(views, batch, 4, generator=g, dtype=torch.float64)
    return list(torch.cat([euler, rest], dim=2).float().unbind(0))


def scipy_relative_quat(euler_1: np.ndarray, euler_2: np.ndarray) -> np.ndarray:
    """Independent reference: R1^-1 R2 with scipy, (x, y, z, w)."""
    return (Rotation.from_euler("xyz", euler_1).inv() * Rotation.from_euler("xyz", euler_2)).as_quat()


def test_relative_action_is_scipy_relative_rotation_and_colour_deltas():
    g = torch.Generator().manual_seed(1)
    l1, l2 = random_latents(64, g), random_latents(64, g)
    rotation = relative_action(l1, l2, "rotation")
    expected = (
        Rotation.from_euler("xyz", l1[:, :3].numpy()).inv() * Rotation.from_euler("xyz", l2[:, :3].numpy())
    ).as_quat()
    expected = np.where(expected[:, 3:] < 0, -expected, expected)  # canonical sign, w >= 0
    np.testing.assert_allclose(rotation.numpy(), expected, atol=1e-5)
    assert (rotation[:, 3] >= 0).all()

    with_colour = relative_action(l1, l2, "rotation_colour")
    assert with_colour.shape == (64, 6)
    assert torch.equal(with_colour[:, :4], rotation)
    # official Dataset3DIEBenchRotColor: latent_2[[3, 6]] - latent_1[[3, 6]]
    np.testing.assert_allclose(with_colour[:, 4:].numpy(), (l2[:, [3, 6]] - l1[:, [3, 6]]).numpy(), atol=1e-6)
    assert torch.allclose(colour_deltas(l1, l2), (l2 - l1)[:, [3, 6]])


def test_relative_action_order_matters_and_rejects_bad_input():
    g = torch.Generator().manual_seed(2)
    l1, l2 = random_latents(16, g), random_latents(16, g)
    forward, backward = relative_action(l1, l2), relative_action(l2, l1)
    inverse = forward * torch.tensor([-1.0, -1.0, -1.0, 1.0])  # q^-1 of a unit quaternion, still w >= 0
    assert torch.allclose(backward, inverse, atol=1e-5)
    with pytest.raises(ValueError, match="action"):
        relative_action(l1, l2, "colour")
    with pytest.raises(ValueError, match="latent"):
        relative_action(l1[:, :3], l2[:, :3])


def test_rotation_actions_are_r_j_inverse_r_next_as_scipy_computes_them():
    latents = random_view_latents(4, seed=3)
    actions = sequence_actions(latents).double().numpy()  # (B, 3, 4)
    assert actions.shape == (B, 3, 4)
    assert (actions[..., 3] >= 0).all()
    for j in range(3):
        e_1, e_2 = latents[j][:, :3].double().numpy(), latents[j + 1][:, :3].double().numpy()
        expected = scipy_relative_quat(e_1, e_2)
        np.testing.assert_allclose(np.abs((actions[:, j] * expected).sum(-1)), 1.0, atol=1e-5)
        # The test discriminates: the other composition orders give different rotations.
        for wrong in (
            scipy_relative_quat(e_2, e_1),
            (Rotation.from_euler("xyz", e_2) * Rotation.from_euler("xyz", e_1).inv()).as_quat(),
        ):
            assert not np.allclose(np.abs((actions[:, j] * wrong).sum(-1)), 1.0, atol=1e-5)


def test_rotation_colour_actions_append_hue_deltas():
    latents = random_view_latents(3, seed=4)
    actions = sequence_actions(latents, "rotation_colour")
    assert actions.shape == (B, 2, 6)
    torch.testing.assert_close(actions[:, :, :4], sequence_actions(latents))
    for j in range(2):
        torch.testing.assert_close(actions[:, j, 4], latents[j + 1][:, 3] - latents[j][:, 3])  # floor hue
        torch.testing.assert_close(actions[:, j, 5], latents[j + 1][:, 6] - latents[j][:, 6])  # light hue
