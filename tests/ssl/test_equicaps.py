"""EquiCaps: every loss term against an independent float64 reference, zero pose loss by construction
(P_2 = P_1 R with R = R_1^-1 R_2) and not otherwise, the objective's wiring, the global batch."""

from __future__ import annotations

import datetime
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.spatial.transform import Rotation
from torch import nn

from equissl.backbones.capsules import CapsNetConfig, build_capsnet_resnet18
from equissl.launch.launcher import free_port
from equissl.rotations import relative_rotation_matrix, relative_rotation_quat
from equissl.ssl.equicaps import (
    EquiCaps,
    EquiCapsConfig,
    activation_cross_entropy,
    equicaps_loss,
    memax_loss,
    pose_action,
    pose_equivariance_loss,
)
from equissl.types import Views, ViewSpec
from tests.helpers import TinyBackbone

N, J = 6, 5


def random_euler(n: int, generator: torch.Generator) -> torch.Tensor:
    euler = (torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    euler[:, 1] /= 2
    return euler


def random_inputs(seed: int = 0, pose_dim: int = 3, n: int = N):
    g = torch.Generator().manual_seed(seed)
    a_1 = torch.softmax(torch.randn(n, J, generator=g, dtype=torch.float64), dim=1)
    a_2 = torch.softmax(torch.randn(n, J, generator=g, dtype=torch.float64), dim=1)
    p_1 = torch.randn(n, J, pose_dim, pose_dim, generator=g, dtype=torch.float64)
    p_2 = torch.randn(n, J, pose_dim, pose_dim, generator=g, dtype=torch.float64)
    rotation = relative_rotation_matrix(random_euler(n, g), random_euler(n, g))
    return a_1, a_2, p_1, p_2, pose_action(rotation, pose_dim)


# ----------------------------------------------------------------------------------------------------
# Independent reference (numpy, float64, loops where the definition is per element)


def reference_terms(a_1, a_2, p_1, p_2, action, average_branches=True, eps=1e-8) -> dict[str, float]:
    a_1, a_2, p_1, p_2, action = (t.detach().double().numpy() for t in (a_1, a_2, p_1, p_2, action))
    n, j = a_1.shape
    inv = np.mean([-sum(a_2[i, k] * math.log(max(a_1[i, k], eps)) for k in range(j)) for i in range(n)])
    moved, target = np.empty_like(p_1), np.empty_like(p_2)
    for i in range(n):
        for k in range(j):
            m = p_1[i, k] @ action[i]
            moved[i, k] = m / np.sqrt((m**2).sum())
            target[i, k] = p_2[i, k] / np.sqrt((p_2[i, k] ** 2).sum())
    equi = ((moved - target) ** 2).mean()
    z_1 = np.concatenate([a_1, moved.reshape(n, -1)], axis=1)
    z_2 = np.concatenate([a_2, target.reshape(n, -1)], axis=1)

    def std(z):
        return np.maximum(0.0, 1.0 - np.sqrt(z.var(axis=0, ddof=1) + 1e-4)).mean()

    def cov(z):
        c = np.cov(z, rowvar=False)
        return ((c**2).sum() - (np.diag(c) ** 2).sum()) / z.shape[1]

    def memax(a):
        p = a.mean(axis=0)
        return math.log(len(p)) + sum(p_k * math.log(max(p_k, eps)) for p_k in p)

    variance = std(z_1) + std(z_2)
    return {
        "inv": inv,
        "equi": equi,
        "std": variance / 2 if average_branches else variance,
        "cov": cov(z_1) + cov(z_2),
        "memax": memax(a_1) + memax(a_2),
    }


# ----------------------------------------------------------------------------------------------------
# Loss terms


def test_relative_rotation_is_r1_inverse_r2_as_scipy():
    g = torch.Generator().manual_seed(1)
    e_1, e_2 = random_euler(8, g), random_euler(8, g)
    r_1, r_2 = Rotation.from_euler("xyz", e_1.numpy()), Rotation.from_euler("xyz", e_2.numpy())
    expected = (r_1.inv() * r_2).as_matrix()
    np.testing.assert_allclose(relative_rotation_matrix(e_1, e_2).numpy(), expected, atol=1e-10)
    swapped = (r_2.inv() * r_1).as_matrix()
    assert not np.allclose(relative_rotation_matrix(e_1, e_2).numpy(), swapped, atol=1e-3)


@pytest.mark.parametrize("pose_dim", [3, 4])
def test_pose_loss_is_zero_when_second_poses_are_first_times_relative_rotation(pose_dim):
    _, _, p_1, _, action = random_inputs(seed=2, pose_dim=pose_dim)
    p_2 = 2.5 * p_1 @ action[:, None]  # P_2 = c P_1 R: any scale, since both sides are normalised
    assert pose_equivariance_loss(p_1, p_2, action).item() == pytest.approx(0.0, abs=1e-20)
    # A wrong side or a wrong order must not pass.
    left = action[:, None] @ p_1
    assert pose_equivariance_loss(p_1, left, action).item() > 1e-3
    transposed = p_1 @ action.transpose(1, 2)[:, None]  # P_1 (R_2^-1 R_1)
    assert pose_equivariance_loss(p_1, transposed, action).item() > 1e-3
    terms = equicaps_loss(*random_inputs(seed=2, pose_dim=pose_dim)[:2], p_1, p_2, action)[1]
    assert terms["equi"].item() == pytest.approx(0.0, abs=1e-20)


def test_pose_action_embeds_rotations():
    rotation = relative_rotation_matrix(*random_euler(4, torch.Generator().manual_seed(3)).chunk(2))
    assert torch.equal(pose_action(rotation, 3), rotation)
    homogeneous = pose_action(rotation, 4)
    assert torch.equal(homogeneous[:, :3, :3], rotation)
    assert torch.equal(homogeneous[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=rotation.dtype).expand(2, 4))
    assert torch.equal(homogeneous[:, :3, 3], torch.zeros(2, 3, dtype=rotation.dtype))
    with pytest.raises(ValueError):
        pose_action(rotation, 5)


def test_activation_cross_entropy_reference_clamping_and_gibbs():
    a_1, a_2, *_ = random_inputs(seed=4)
    expected = reference_terms(*random_inputs(seed=4))["inv"]
    assert activation_cross_entropy(a_1, a_2).item() == pytest.approx(expected, rel=1e-12)
    # Direction: view 1 predicts view 2; cross-entropy >= entropy of the target (Gibbs).
    forward, backward = activation_cross_entropy(a_1, a_2).item(), activation_cross_entropy(a_2, a_1).item()
    assert forward != pytest.approx(backward)
    assert activation_cross_entropy(a_2, a_2).item() <= activation_cross_entropy(a_1, a_2).item()
    # Exact zeros: finite, clamped at eps where the target has mass, 0 * log(eps) where it has none.
    predicted = torch.tensor([[0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    value = activation_cross_entropy(predicted, target, eps=1e-8)
    assert value.item() == pytest.approx((0.0 + math.log(2.0)) / 2, rel=1e-12)
    assert activation_cross_entropy(predicted, target.flip(1), eps=1e-8).item() == pytest.approx(
        (-math.log(1e-8) + math.log(2.0)) / 2, rel=1e-12
    )
    with pytest.raises(ValueError):
        activation_cross_entropy(a_1, a_2[:, :3])


def test_memax_reference_and_closed_forms():
    a_1, *_ = random_inputs(seed=5)
    p = a_1.mean(0).numpy()
    assert memax_loss(a_1).item() == pytest.approx(math.log(J) + float((p * np.log(p)).sum()), rel=1e-12)
    assert memax_loss(torch.full((4, J), 1.0 / J)).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.zeros(4, J, dtype=torch.float64)
    one_hot[:, 0] = 1.0
    assert memax_loss(one_hot).item() == pytest.approx(math.log(J), rel=1e-12)
    # Uniform on average is what counts, not per sample.
    assert memax_loss(torch.eye(J, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("pose_dim,average_branches", [(3, True), (4, False)])
def test_equicaps_loss_matches_reference(pose_dim, average_branches):
    inputs = random_inputs(seed=6, pose_dim=pose_dim)
    weights = {"inv": 0.3, "equi": 2.0, "std": 7.0, "cov": 0.5, "memax": 1.5}
    total, terms = equicaps_loss(*inputs, **weights, average_branches=average_branches)
    expected = reference_terms(*inputs, average_branches=average_branches)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-10, abs=1e-14), name
    assert total.item() == pytest.approx(sum(weights[k] * v for k, v in expected.items()), rel=1e-10)
    defaults = equicaps_loss(*inputs, average_branches=average_branches)[0].item()
    paper = (
        0.1 * expected["inv"]
        + 5 * expected["equi"]
        + 10 * expected["std"]
        + expected["cov"]
        + expected["memax"]
    )
    assert defaults == pytest.approx(paper, rel=1e-10)


def test_equicaps_loss_float32_under_autocast_and_errors():
    inputs = [t.float() for t in random_inputs(seed=7)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = equicaps_loss(*inputs)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(equicaps_loss(*[t.double() for t in inputs])[0].item(), rel=1e-5)
    with pytest.raises(ValueError):
        equicaps_loss(*[t[:1] for t in inputs])


# ----------------------------------------------------------------------------------------------------
# The objective


class PixelBackbone(nn.Module):
    """forward_features is the image itself: lets a test write what the 'capsules' see into pixels."""

    num_features = 3

    def forward_features(self, x):
        return x

    def forward(self, x):
        return x.mean(dim=(2, 3))


class PoseFromPixels(nn.Module):
    """Capsules of an ideal pose encoder: P = Q @ R_abs (or R_abs @ Q), R_abs read from the pixels."""

    def __init__(self, left: bool = False) -> None:
        super().__init__()
        self.q = torch.randn(J, 3, 3, generator=torch.Generator().manual_seed(11))
        self.left = left

    def forward(self, fmap):
        r_abs = fmap[:, 0, 0, :9].reshape(-1, 3, 3)
        poses = r_abs[:, None] @ self.q if self.left else self.q @ r_abs[:, None]
        activations = torch.softmax(fmap[:, 1, 0, :J], dim=1)  # the same for both views of an object
        return activations, poses


def pose_views(n: int = N, seed: int = 12) -> Views:
    """Two views per object; each image carries its absolute rotation matrix in its first row of pixels."""
    g = torch.Generator().manual_seed(seed)
    euler = [random_euler(n, g).float() for _ in range(2)]
    logits = torch.randn(n, J, generator=g)
    images = []
    for e in euler:
        image = torch.zeros(n, 3, 4, 12)
        matrix = Rotation.from_euler("xyz", e.double().numpy()).as_matrix().reshape(n, 9)
        image[:, 0, 0, :9] = torch.from_numpy(matrix).float()
        image[:, 1, 0, :J] = logits
        images.append(image)
    latents = [torch.cat([e, torch.rand(n, 4, generator=g)], dim=1) for e in euler]
    return Views(images=images, params=[{}, {}], latents=latents)


def test_objective_pose_loss_is_zero_for_an_ideal_pose_encoder_and_not_for_a_left_action():
    objective = EquiCaps(PixelBackbone(), EquiCapsConfig(num_capsules=J, num_primary=2))
    objective.capsules = PoseFromPixels()
    views = pose_views()
    out = objective(views)
    # P_1 = Q R_1, P_2 = Q R_2 = P_1 (R_1^-1 R_2): the objective must use R_1^-1 R_2 on the right.
    assert out.metrics["loss/equi"].item() == pytest.approx(0.0, abs=1e-10)
    activations = objective.capsules(views.images[0])[0]
    assert out.metrics["loss/inv"].item() == pytest.approx(
        activation_cross_entropy(activations, activations).item(), rel=1e-5
    )
    objective.capsules = PoseFromPixels(left=True)
    assert objective(views).metrics["loss/equi"].item() > 1e-3


def test_objective_forward_backward_and_representations():
    torch.manual_seed(0)
    cfg = EquiCapsConfig(num_capsules=4, num_primary=3)
    objective = EquiCaps(TinyBackbone(8), cfg)
    assert objective.required_views == ViewSpec(source="object", num_views=2)
    views = pose_views(n=4)
    views.images = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    out = objective(views)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.features.shape == (4, 8) and not out.features.requires_grad
    assert set(out.metrics) == {"loss/inv", "loss/equi", "loss/std", "loss/cov", "loss/memax"}
    assert all(p.grad is not None for p in objective.capsules.parameters())

    objective.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        reps = objective.representations(x)
        _, poses = objective.capsules(objective.backbone.forward_features(x))
        assert reps["inv"].shape == (4, 4) and reps["equi"].shape == (4, 36) and reps["full"].shape == (4, 8)
        normalised = poses / torch.linalg.matrix_norm(poses)[..., None, None]
        torch.testing.assert_close(reps["equi"], normalised.flatten(1))
        torch.testing.assert_close(reps["inv"].sum(1), torch.ones(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(reps["full"], objective.backbone(x))
        e_1, e_2 = views.latents[0][:, :3], views.latents[1][:, :3]
        rotation = relative_rotation_matrix(e_1, e_2)
        torch.testing.assert_close(reps["equi_embedding"], reps["equi"])
        predicted = objective.predict_equivariant(reps["equi_embedding"], rotation)
        action = objective.action_from_latents(views.latents[0], views.latents[1])
        torch.testing.assert_close(action, relative_rotation_quat(e_1, e_2))
        torch.testing.assert_close(
            objective.predict_equivariant(reps["equi_embedding"], action), predicted, atol=1e-5, rtol=1e-5
        )
        moved = poses @ rotation[:, None]
        expected = moved / torch.linalg.matrix_norm(moved)[..., None, None]
        torch.testing.assert_close(predicted, expected.flatten(1), atol=1e-5, rtol=1e-5)


def test_reuses_a_capsule_backbones_capsules_and_defaults_follow_the_paper():
    backbone = build_capsnet_resnet18(CapsNetConfig.tiny())
    objective = EquiCaps(backbone, EquiCapsConfig(num_capsules=8, num_primary=4))
    assert objective.capsules is backbone.capsules
    with pytest.raises(ValueError, match="capsules"):
        EquiCaps(backbone, EquiCapsConfig(num_capsules=32))
    defaults = EquiCapsConfig()
    coefficients = (defaults.inv_coeff, defaults.equi_coeff, defaults.std_coeff, defaults.cov_coeff)
    assert coefficients == (0.1, 5.0, 10.0, 1.0)
    assert (defaults.memax_coeff, defaults.num_capsules, defaults.pose_dim) == (1.0, 32, 3)
    with pytest.raises(ValueError):
        EquiCaps(TinyBackbone(8), EquiCapsConfig(pose_dim=2))
    with pytest.raises(ValueError, match="latents"):
        EquiCaps(TinyBackbone(8), EquiCapsConfig(num_capsules=4))(
            Views(images=[torch.randn(2, 3, 8, 8)] * 2, params=[{}, {}])
        )


# ----------------------------------------------------------------------------------------------------
# Two processes x N/2 rows == one process x N rows (loss and gradients)

WORLD = 2


def _loss_and_grads(inputs):
    inputs = [t.clone().requires_grad_(True) for t in inputs[:4]] + [inputs[4]]
    total, _ = equicaps_loss(*inputs)
    total.backward()
    return total.detach(), [t.grad for t in inputs[:4]]


def _worker(process: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=process,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        rows = slice(process * N // WORLD, (process + 1) * N // WORLD)
        loss, grads = _loss_and_grads([t[rows] for t in random_inputs(seed=9)])
        # numpy, pickled by value: torch tensors would travel as shared memory of a process about to exit
        queue.put((process, loss.item(), [g.numpy() for g in grads]))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_at_the_same_global_batch():
    context = mp.get_context("fork")  # the children inherit the imports: seconds instead of half a minute
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in processes:
        p.start()
    results = {r: (loss, grads) for r, loss, grads in (queue.get(timeout=120) for _ in range(WORLD))}
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    loss, grads = _loss_and_grads(random_inputs(seed=9))
    assert np.mean([results[r][0] for r in range(WORLD)]) == pytest.approx(loss.item(), rel=1e-10)
    for r in range(WORLD):
        rows = slice(r * N // WORLD, (r + 1) * N // WORLD)
        for got, full in zip(results[r][1], grads):
            # The summing backward of the gather: world_size x the single-process input gradient.
            np.testing.assert_allclose(got / WORLD, full[rows].numpy(), rtol=1e-9, atol=1e-12)
