"""Steerable CNNs: group law, exact C4 / D4 equivariance, export, and the measured C8 error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from equissl.backbones.steerable import (
    GroupConv2d,
    LiftingConv2d,
    OddSides,
    SteerableConfig,
    SteerableResNet,
)
from equissl.eval.equivariance import (
    equivariance_error,
    image_action,
    invariant_action,
    random_cyclic_element,
    random_dihedral_element,
    random_group_element,
    regular_action,
)
from equissl.groups import Group, parse_group, rotate_interpolated
from equissl.registry import BACKBONES

EXACT_TOL = 1e-5


def tiny_net(group: Group, seed: int = 0) -> SteerableResNet:
    torch.manual_seed(seed)
    return SteerableResNet(group, stem_width=4, widths=(4, 8), depths=(1, 1))


def smooth_disk_images(batch: int, size: int, generator: torch.Generator, sigma: float = 3.0) -> torch.Tensor:
    """Gaussian-blurred noise under a soft disk mask: images that survive a 45-degree resampling."""
    x = torch.randn(batch, 3, size, size, generator=generator)
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).repeat(3, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="circular"), taps.view(3, 1, 1, -1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="circular"), taps.view(3, 1, -1, 1), groups=3)
    centre = torch.arange(size) - (size - 1) / 2
    r = (centre[:, None] ** 2 + centre[None, :] ** 2).sqrt()
    return x / x.std() * torch.sigmoid(size / 2 - 3 - r)


def disk(size: int, margin: float) -> torch.Tensor:
    centre = torch.arange(size) - (size - 1) / 2
    return ((centre[:, None] ** 2 + centre[None, :] ** 2).sqrt() < size / 2 - margin).float()


@pytest.mark.parametrize("name", ["c4", "d4", "c8", "d8", "c2", "d1"])
def test_group_law_and_image_action(name: str) -> None:
    group = parse_group(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 9, generator=g)
    for a in range(group.order):
        assert group.compose(a, group.inverse(a)) == 0
        for b in range(group.order):
            for c in range(group.order):  # associativity
                assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))
            if group.exact(a) and group.exact(b):  # T_a T_b = T_ab on pixels
                assert torch.equal(
                    group.transform_image(group.transform_image(x, b), a),
                    group.transform_image(x, group.compose(a, b)),
                )


def test_interpolated_rotation_matches_rot90_direction() -> None:
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(rotate_interpolated(x, math.pi / 2), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)


def test_regular_action_is_a_representation() -> None:
    group = parse_group("d4")
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 3, group.order, 5, 5, generator=g)
    for _ in range(5):
        a, b = random_group_element(group, g), random_group_element(group, g)
        lhs = group.transform_regular(group.transform_regular(f, b), a)
        assert torch.equal(lhs, group.transform_regular(f, group.compose(a, b)))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", ["C", "D"])
def test_layers_equivariant(kind: str, mode: str) -> None:
    g = torch.Generator().manual_seed(4)
    group = Group(kind, 4)
    lift, conv = LiftingConv2d(3, 3, group), GroupConv2d(3, 2, group, stride=2)
    getattr(lift, mode)(), getattr(conv, mode)()
    x = torch.randn(2, 3, 9, 9, generator=g)
    for _ in range(3):
        element = random_group_element(group, g, exclude_identity=True)
        err = equivariance_error(
            lambda t: conv(lift(t)), x, image_action(group, element), regular_action(group, element)
        )
        assert err < EXACT_TOL, (element, err)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("draw", [random_cyclic_element, random_dihedral_element], ids=["C4", "D4"])
def test_resnet_exactly_equivariant(draw, mode: str) -> None:
    g = torch.Generator().manual_seed(5)
    group, _ = draw(4, g)
    net = tiny_net(group)
    # Push the BN running statistics away from their init so eval mode is a real test.
    with torch.no_grad():
        net.train()
        for _ in range(3):
            net(torch.randn(4, 3, 17, 17, generator=g) * 2 + 0.5)
    getattr(net, mode)()
    assert net.is_equivariant_size(17, 17)
    x = torch.randn(3, 3, 17, 17, generator=g)
    errors = []
    for _ in range(3):
        _, element = draw(4, g, exclude_identity=True)
        feat = equivariance_error(
            net.forward_group_features, x, image_action(group, element), regular_action(group, element)
        )
        inv = equivariance_error(net, x, image_action(group, element), invariant_action())
        errors.append((element, feat, inv))
        assert feat < EXACT_TOL and inv < EXACT_TOL, errors
    print(f"\n{kind_name(group)} {mode}: (element, feature error, invariant error) {errors}")


def kind_name(group: Group) -> str:
    return f"{group.kind}{group.n}"


def test_wrong_size_breaks_exactness_without_exact_downsampling() -> None:
    """The check can fail: subsampling an even side directly (the earlier behaviour) is not exact."""
    group = Group("C", 4)
    torch.manual_seed(0)
    net = SteerableResNet(group, stem_width=4, widths=(4, 8), depths=(1, 1), exact_downsampling=False).eval()
    assert not net.is_equivariant_size(16, 16) and net.is_equivariant_size(17, 17)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    err = equivariance_error(net.forward_group_features, x, image_action(group, 1), regular_action(group, 1))
    assert err > 1e-3


@pytest.mark.parametrize("kind", ["C", "D"])
def test_pooled_features_invariant_at_every_side(kind: str) -> None:
    """C4 / D4 nets with the default's two stride-2 stages: pooled features invariant to 1e-5 at input
    sides drawn at random from 16 to 80 (odd and even), under random non-identity group elements, in
    train and eval mode."""
    g = torch.Generator().manual_seed(11 if kind == "C" else 12)
    group = Group(kind, 4)
    torch.manual_seed(0)
    net = SteerableResNet(group, stem_width=4, widths=(4, 8, 8), depths=(1, 1, 1))  # default stage layout
    with torch.no_grad():
        net.train()
        net(torch.randn(4, 3, 33, 33, generator=g) * 2 + 0.5)  # non-trivial running statistics
    sides = torch.randint(16, 81, (6,), generator=g).tolist()
    sides[:2] = [2 * (sides[0] // 2), 2 * (sides[1] // 2) + 1]  # at least one even and one odd side
    for mode in ("train", "eval"):
        getattr(net, mode)()
        for side in sides:
            assert net.is_equivariant_size(side, side)
            x = torch.randn(3, 3, side, side, generator=g)
            element = random_group_element(group, g, exclude_identity=True)
            err = equivariance_error(net, x, image_action(group, element), invariant_action())
            assert err < EXACT_TOL, (mode, side, element, err)


def test_odd_sides_is_the_two_by_two_mean_and_leaves_odd_sides_alone() -> None:
    x = torch.randn(2, 3, 4, 6, 5)
    out = OddSides()(x)
    assert out.shape == (2, 3, 4, 5, 5)  # the even height shrinks by one, the odd width is kept
    assert torch.allclose(out, (x[..., :-1, :] + x[..., 1:, :]) / 2, atol=1e-6)
    even = torch.randn(2, 4, 4)
    expected = (even[:, :-1, :-1] + even[:, 1:, :-1] + even[:, :-1, 1:] + even[:, 1:, 1:]) / 4
    assert torch.allclose(OddSides()(even), expected, atol=1e-6)
    odd = torch.randn(1, 2, 7, 9)
    assert OddSides()(odd) is odd


@pytest.mark.parametrize("name", ["c4", "d4", "c8"])
def test_expansion_index_matches_the_transforms(name: str) -> None:
    """The one-gather expansion of exact groups equals the transform-and-stack expansion, gradients too."""
    torch.manual_seed(1)
    group = parse_group(name)
    for layer in (LiftingConv2d(3, 4, group), GroupConv2d(3, 2, group, stride=2)):
        assert (layer.expansion_index is not None) == group.all_exact
        fast = layer.expanded_weight()
        slow = layer._transform(layer.weight)
        assert torch.equal(fast, slow)
        upstream = torch.randn_like(fast)
        (grad_fast,) = torch.autograd.grad(fast, layer.weight, upstream)
        (grad_slow,) = torch.autograd.grad(slow, layer.weight, upstream)
        assert torch.allclose(grad_fast, grad_slow, atol=1e-6)


def test_expansion_once_per_step_and_cached_in_eval(monkeypatch) -> None:
    """Training: one expansion per layer serves every forward pass of a step (two calls, then backward);
    a new one after the optimizer step. Eval: expanded once while the weights stay the same. Gradients
    equal those of uncached expansions, and gradient accumulation (backward twice, no step) works."""
    calls = {"n": 0}
    original = GroupConv2d._compute_expansion

    def counting(self):
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(GroupConv2d, "_compute_expansion", counting)
    g = torch.Generator().manual_seed(13)
    net = tiny_net(Group("D", 4))
    layers = sum(isinstance(m, GroupConv2d) for m in net.modules())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x1, x2 = torch.randn(2, 3, 17, 17, generator=g), torch.randn(2, 3, 17, 17, generator=g)

    net.train()
    loss = net(x1).square().sum() + net(x2).square().sum()
    assert calls["n"] == layers  # the second forward pass reused the expansions
    loss.backward()
    cached = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    for layer in net.modules():
        if isinstance(layer, GroupConv2d):
            layer._expansion = None
    (net(x1).square().sum() + net(x2).square().sum()).backward()  # fresh expansion per call path
    for name, p in net.named_parameters():
        assert torch.allclose(p.grad, cached[name], atol=1e-5), name

    calls["n"] = 0
    net.zero_grad()
    net(x1).square().sum().backward()  # its graph was consumed by the backward above: recomputed
    net(x2).square().sum().backward()  # accumulation without a step: recomputed, no stale graph
    assert calls["n"] == 2 * layers
    optimizer.step()
    net(x1).square().sum().backward()
    assert calls["n"] == 3 * layers  # the step changed the weights
    optimizer.step()

    net.eval()
    calls["n"] = 0
    with torch.no_grad():
        first = net(x1)
        second = net(x1)
    assert calls["n"] == layers and torch.equal(first, second)
    with torch.no_grad():
        net.layer1[0].conv1.weight.add_(1.0)  # in place: the version changes, the cache is stale
        net(x1)
    assert calls["n"] == layers + 1


def test_deepcopy_with_a_cached_expansion() -> None:
    """EMA targets deep-copy the backbone: a cached (non-leaf) expansion must not get in the way."""
    import copy

    net = tiny_net(Group("C", 4)).train()
    net(torch.randn(2, 3, 17, 17)).sum()  # caches expansions with autograd graphs
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        assert torch.allclose(twin.eval()(x), net.eval()(x), atol=1e-6)


def test_non_equivariant_control_fails() -> None:
    """The check can fail: the trivial group C1 (a plain CNN) is not rotation-equivariant."""
    net = tiny_net(Group("C", 1)).eval()
    x = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(7))
    rot = Group("C", 4)
    err = equivariance_error(net.forward_group_features, x, image_action(rot, 1), image_action(rot, 1))
    assert err > 1e-2


@pytest.mark.parametrize("name", ["c4", "d4", "c8"])
def test_export_matches(name: str) -> None:
    g = torch.Generator().manual_seed(8)
    net = tiny_net(parse_group(name))
    with torch.no_grad():
        net.train()
        net(torch.randn(4, 3, 17, 17, generator=g) + 1.0)  # non-trivial running statistics
    net.eval()
    plain = net.export().eval()
    kinds = {type(m).__name__ for m in plain.modules() if not list(m.children())}
    assert kinds <= {
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Unflatten",
        "AdaptiveMaxPool3d",
        "AdaptiveAvgPool3d",
        "Flatten",
        "AdaptiveAvgPool2d",
        "OddSides",
    }, kinds
    for side in (17, 16):  # odd, and even (the strided blocks' 2 x 2 average)
        x = torch.randn(3, 3, side, side, generator=g)
        with torch.no_grad():
            assert torch.allclose(plain(x), net(x), atol=1e-5, rtol=1e-5)
            assert torch.allclose(plain.forward_features(x), net.forward_features(x), atol=1e-5, rtol=1e-5)
    state = net.export_state_dict()
    assert "conv1.weight" in state and "layer1.0.bn1.running_mean" in state
    assert state["conv1.weight"].shape[0] == 4 * net.group.order


def test_c8_error_measured(record_property) -> None:
    """C8: exact on its C4 subgroup; for 45 degrees the error is measured (smooth inputs, central disk)."""
    g = torch.Generator().manual_seed(9)
    group = Group("C", 8)
    net = tiny_net(group).eval()
    x = smooth_disk_images(4, 33, g)
    for element in (2, 4, 6):  # 90, 180, 270 degrees: exact
        err = equivariance_error(
            net.forward_group_features, x, image_action(group, element), regular_action(group, element)
        )
        assert err < EXACT_TOL, (element, err)
    element = 1  # 45 degrees: interpolated filters and images
    with torch.no_grad():
        lift = net.conv1(x)
        lift_rot = net.conv1(group.transform_image(x, element))
        mask = disk(33, 4)
        lift_err = ((lift_rot - group.transform_regular(lift, element)) * mask).norm() / (lift * mask).norm()
        feat, feat_rot = (
            net.forward_group_features(x),
            net.forward_group_features(group.transform_image(x, element)),
        )
        mask = disk(feat.shape[-1], 2)
        feat_err = ((feat_rot - group.transform_regular(feat, element)) * mask).norm() / (feat * mask).norm()
        out, out_rot = net(x), net(group.transform_image(x, element))
        inv_err = ((out_rot - out).norm(dim=1) / out.norm(dim=1)).mean()
    record_property("c8_45deg_lifting_rel_l2", float(lift_err))
    record_property("c8_45deg_feature_rel_l2", float(feat_err))
    record_property("c8_45deg_invariant_rel_l2", float(inv_err))
    print(
        f"\nC8 at 45 degrees (smooth 33 px inputs): lifting layer rel. L2 error {lift_err:.3f}, "
        f"final feature map {feat_err:.3f}, invariant output {inv_err:.4f}"
    )
    assert torch.isfinite(feat_err) and lift_err < 0.1 and inv_err < 0.1


def test_registered_and_config() -> None:
    for name in ("steerable_c4", "steerable_d4", "steerable_c8"):
        net = BACKBONES.build(name, SteerableConfig.tiny())
        assert net.group.kind == name[-2].upper() and net.group.n == int(name[-1])
    assert BACKBONES.build("steerable_c4", SteerableConfig(group="d2", **_tiny_kwargs())).group == Group(
        "D", 2
    )
    with pytest.raises(ValueError):
        parse_group("x4")
    with pytest.raises(ValueError):
        SteerableResNet(Group("C", 4), widths=(4, 8), depths=(1,))


def _tiny_kwargs() -> dict:
    cfg = SteerableConfig.tiny()
    return {"stem_width": cfg.stem_width, "widths": cfg.widths, "depths": cfg.depths}
