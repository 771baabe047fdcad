"""Self-routing capsules: shapes, ranges, gradients, and the routing rule against a direct computation."""

from __future__ import annotations

import pytest
import torch

from equissl.backbones.capsules import CapsNetConfig, CapsNetResNet
from equissl.heads.capsules import SelfRoutingCapsules, official_vote_std
from equissl.registry import BACKBONES


def reference_route(caps: SelfRoutingCapsules, a: torch.Tensor, pose: torch.Tensor):
    """The self-routing rule written out with explicit votes (B, L, A, J, d, d), loop-free but naive."""
    b, positions, types = a.shape
    transform = caps.transform.expand(positions, -1, -1, -1, -1)
    votes = transform.unsqueeze(0) @ pose.unsqueeze(3)  # V_ij = T_ij P_i
    logits = (
        pose.reshape(b, positions, types, 1, -1)
        @ caps.route_weight.expand(positions, -1, -1, -1).unsqueeze(0)
    ).squeeze(3) + caps.route_bias
    r = torch.softmax(logits, dim=-1)
    c = (a.unsqueeze(-1) * r).reshape(b, positions * types, -1)
    activations = c.sum(1) / a.reshape(b, -1).sum(1, keepdim=True)
    coeff = c / c.sum(1, keepdim=True)
    poses = (coeff[..., None, None] * votes.reshape(b, positions * types, *votes.shape[3:])).sum(1)
    return activations, poses


@pytest.mark.parametrize("map_size", [None, 3])
@pytest.mark.parametrize("pose_dim", [3, 4])
def test_routing_matches_reference(pose_dim: int, map_size: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    caps = SelfRoutingCapsules(16, num_capsules=32, pose_dim=pose_dim, num_primary=6, map_size=map_size)
    with torch.no_grad():  # non-zero routing weights, so routing is not uniform
        caps.route_weight.normal_(generator=g)
        caps.route_bias.normal_(generator=g)
    x = torch.randn(2, 16, 3, 3, generator=g)
    a, pose = caps.primary(x)
    act, poses = caps(x)
    ref_act, ref_poses = reference_route(caps, a, pose)
    assert act.shape == (2, 32) and poses.shape == (2, 32, pose_dim, pose_dim)
    assert torch.allclose(act, ref_act, atol=1e-5) and torch.allclose(poses, ref_poses, atol=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_standalone_shapes_finite_and_gradients(mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    caps = getattr(SelfRoutingCapsules(24, num_capsules=32, pose_dim=4), mode)()
    x = torch.randn(3, 24, 5, 4, generator=g)  # any map size when weights are shared
    act, poses = caps(x)
    assert act.shape == (3, 32) and poses.shape == (3, 32, 4, 4)
    assert torch.isfinite(act).all() and torch.isfinite(poses).all()
    assert ((act > 0) & (act < 1)).all()
    (act.sum() + poses.square().sum()).backward()
    for name, p in caps.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_uniform_routing_at_init() -> None:
    """Zero-initialised routing: every upper capsule receives a_i / J, so activations are all 1/J."""
    caps = SelfRoutingCapsules(8, num_capsules=4, pose_dim=3, num_primary=2).eval()
    act, _ = caps(torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(act, torch.full_like(act, 0.25), atol=1e-6)


def test_votes_commute_with_right_action_when_routing_is_fixed() -> None:
    """With routing fixed (zero weights), right-multiplying every lower pose by R right-multiplies the output."""
    g = torch.Generator().manual_seed(3)
    caps = SelfRoutingCapsules(8, num_capsules=5, pose_dim=3, num_primary=4).eval()
    a = torch.rand(2, 6, 4, generator=g) + 0.1
    pose = torch.randn(2, 6, 4, 3, 3, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    _, out = caps.route(a, pose)
    _, out_rot = caps.route(a, pose @ rotation)
    assert torch.allclose(out_rot, out @ rotation, atol=1e-5)


def test_map_size_is_enforced() -> None:
    caps = SelfRoutingCapsules(8, map_size=2)
    with pytest.raises(ValueError):
        caps(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError):
        SelfRoutingCapsules(8, pose_dim=0)


@pytest.mark.parametrize("readout,width", [("trunk+capsules", 512 + 16), ("activations", 8)])
def test_capsnet_backbone(readout: str, width: int) -> None:
    cfg = CapsNetConfig(stem="strided", num_capsules=8, num_primary=4, readout=readout)
    net = BACKBONES.build("capsnet_resnet18", cfg)
    assert isinstance(net, CapsNetResNet) and net.num_features == width
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    out = net(x)
    assert out.shape == (2, width) and torch.isfinite(out).all()
    act, poses = net.forward_capsules(x)
    assert act.shape == (2, 8) and poses.shape == (2, 8, 3, 3)
    assert net.forward_poses(x).shape == (2, 8, 3, 3)
    keys = net.export_state_dict()
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys and "capsules.transform" in keys


def test_vote_transforms_start_with_the_official_std() -> None:
    """The default draws T_ij with the std the official EquiCaps code's kaiming_normal_ gives its vote
    weights (a (kkA, J d^2, d^2) tensor): reproduced here with torch's own initialiser on that shape."""
    torch.manual_seed(0)
    official = torch.empty(64, 32 * 9, 9)  # kernel 8x8 x 32 primary types, 32 capsules of 3x3 poses
    torch.nn.init.kaiming_normal_(official)
    assert official_vote_std(32, 3) == pytest.approx(0.0278, abs=1e-4)
    assert official.std().item() == pytest.approx(official_vote_std(32, 3), rel=0.02)
    caps = SelfRoutingCapsules(16, num_capsules=32, pose_dim=3, num_primary=32, map_size=8)
    assert caps.transform.std().item() == pytest.approx(official.std().item(), rel=0.02)
    unit = SelfRoutingCapsules(16, num_capsules=32, pose_dim=3, num_primary=32, vote_init_std=3**-0.5)
    assert unit.transform.std().item() == pytest.approx(0.577, rel=0.05)  # the earlier default
    with pytest.raises(ValueError, match="vote_init_std"):
        SelfRoutingCapsules(16, vote_init_std=-1.0)
