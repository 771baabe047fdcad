"""Frame averaging and learned canonicalization around timm and torchvision backbones: exact invariance of
the pooled features and equivariance of the map under group elements drawn at random, the bare models
measurably changing; the canonicalizer's pose, straight-through gradient and prior loss; exports."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from equissl.backbones.symmetry import CanonicalizationNetwork, Canonicalized, FrameAveraged
from equissl.backbones.timm_backbone import TimmBackbone
from equissl.backbones.torchvision_backbone import TorchvisionBackbone
from equissl.export.formats import export_backbone
from equissl.groups import Group, parse_group

SIZE, BATCH = 32, 4
INNER = {
    "timm-convnext": lambda: TimmBackbone("test_convnext"),
    "timm-vit": lambda: TimmBackbone("test_vit", {"img_size": SIZE}),
    "torchvision-mobilenet_v3_small": lambda: TorchvisionBackbone("mobilenet_v3_small", {"width_mult": 0.5}),
}


def _images(seed: int, n: int = BATCH) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _errors(model, group: Group, x: torch.Tensor, generator: torch.Generator, draws: int = 4):
    """Largest invariance error of ``model(x)`` and equivariance error of its map over random non-identity
    elements of ``group``."""
    invariance, equivariance = 0.0, 0.0
    with torch.no_grad():
        pooled, fmap = model(x), model.forward_features(x)
        for _ in range(draws):
            g = int(torch.randint(1, group.order, (), generator=generator))
            turned = group.transform_image(x, g)
            invariance = max(invariance, _relative(model(turned), pooled))
            equivariance = max(
                equivariance, _relative(model.forward_features(turned), group.transform_image(fmap, g))
            )
    return invariance, equivariance


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("group_name", ["c4", "d4"])
def test_frame_averaging_is_exactly_invariant_and_the_bare_model_is_not(inner, group_name):
    torch.manual_seed(0)
    group = parse_group(group_name)
    model = FrameAveraged(INNER[inner](), group)
    generator = torch.Generator().manual_seed(1)
    x = _images(2)
    for mode in ("eval", "train"):  # train: BatchNorm statistics over the orbit, the same set for g x
        getattr(model, mode)()
        invariance, equivariance = _errors(model, group, x, generator)
        assert invariance < 1e-5 and equivariance < 1e-5, (mode, invariance, equivariance)
    bare_invariance, _ = _errors(model.backbone.train(), group, x, generator)
    assert bare_invariance > 1e-2


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("group_name", ["c4", "d4", "c8"])
def test_canonicalization_is_exactly_invariant_to_its_pixel_permutations(inner, group_name):
    torch.manual_seed(0)
    group = parse_group(group_name)
    model = Canonicalized(INNER[inner](), group, width=4, layers=2).eval()
    x = _images(3)
    exact = Group(group.kind, 4)  # quarter turns (and mirrors for D4): pixel permutations
    invariance, equivariance = _errors(model, exact, x, torch.Generator().manual_seed(4))
    assert invariance < 1e-5 and equivariance < 1e-5, (invariance, equivariance)
    bare_invariance, _ = _errors(model.backbone.train(), exact, x, torch.Generator().manual_seed(4))
    assert bare_invariance > 1e-2


def test_pose_logits_move_with_the_input_and_the_canonical_input_is_the_exact_inverse_turn():
    torch.manual_seed(0)
    group = Group("D", 4)
    model = Canonicalized(INNER["timm-convnext"](), group, width=4, layers=2).train()
    x = _images(5)
    with torch.no_grad():
        logits = model.canonicalizer(x)
    for h in range(1, group.order):
        with torch.no_grad():
            moved = model.canonicalizer(group.transform_image(x, h))
        # a(T_h x)[g] = a(x)[h^-1 g]: the regular representation
        assert torch.allclose(moved, logits[:, group.regular_permutation[h]], atol=1e-5)
    canonical, weights = model.canonicalize(x)  # train mode: straight-through weights, one-hot in value
    chosen = logits.argmax(dim=1)
    assert torch.equal(weights.detach(), F.one_hot(chosen, group.order).float())
    for b in range(BATCH):
        assert torch.equal(canonical[b], group.transform_image(x[b], group.inverse(int(chosen[b]))))


def test_straight_through_gradient_reaches_the_canonicalizer():
    torch.manual_seed(0)
    model = Canonicalized(INNER["timm-convnext"](), Group("C", 4), width=4, layers=2).train()
    out = model(_images(6))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_prior_loss_is_added_to_every_objective_loss_and_logged(tiny_overrides):
    from equissl.build import build_objective
    from equissl.config import build_config

    config = build_config(
        "simclr_resnet18_shapes3d",
        [
            *tiny_overrides,
            (
                "backbone={name: timm, model_name: test_convnext, canonicalizer: c4, canonicalizer_width: 4, "
                "canonicalizer_prior: 2.5}"
            ),
            "objective.joint_forward=false",  # one backbone call per view, as the reference below
        ],
    )
    torch.manual_seed(0)
    objective = build_objective(config).train()
    from tests.helpers import make_views

    batch = {"image": (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 255).byte()}
    views = make_views(config.augment, objective.required_views, batch, torch.Generator().manual_seed(9))
    with_prior = objective(views)
    objective.backbone.prior_weight = 0.0
    without = objective(views)
    with torch.no_grad():  # independent reference: -log softmax(logits)[identity], mean over all views
        logits = torch.cat([objective.backbone.canonicalizer(image) for image in views.images])
        reference = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    assert torch.allclose(with_prior.loss - without.loss, 2.5 * reference, atol=1e-5)
    assert torch.allclose(with_prior.metrics["loss/canonicalizer_prior"], reference, atol=1e-6)
    identity = (logits.argmax(dim=1) == 0).float().mean()
    assert torch.allclose(with_prior.metrics["canonicalizer/identity"], identity)
    assert "loss/canonicalizer_prior" not in without.metrics and "canonicalizer/identity" in without.metrics


def test_training_on_the_prior_turns_the_poses_to_the_identity():
    torch.manual_seed(0)
    model = Canonicalized(
        INNER["timm-convnext"](), Group("C", 4), width=4, layers=2, prior_weight=1.0
    ).train()
    optimizer = torch.optim.Adam(model.canonicalizer.parameters(), lr=1e-2)
    x = _images(10, n=16)
    losses, identities = [], []
    for _ in range(30):
        model(x)
        prior, metrics = model.take_auxiliary_losses()
        optimizer.zero_grad()
        prior.backward()
        optimizer.step()
        losses.append(prior.item())
        identities.append(metrics["canonicalizer/identity"].item())
    assert losses[-1] < 0.5 * losses[0] and identities[-1] > 0.9 > identities[0]


def test_symmetrized_backbones_refuse_non_square_inputs():
    for model in (
        FrameAveraged(INNER["timm-convnext"](), Group("C", 4)),
        Canonicalized(INNER["timm-convnext"](), Group("C", 4)),
    ):
        with pytest.raises(ValueError, match="square"):
            model(torch.randn(2, 3, 32, 24))


def test_wrapped_export_holds_the_inner_weights_the_symmetry_and_the_canonicalizer(tmp_path):
    torch.manual_seed(0)
    model = Canonicalized(INNER["timm-convnext"](), Group("C", 4), width=4, layers=2).eval()
    out = export_backbone(model, {"backbone": "timm"}, tmp_path / "b.safetensors", "timm")
    metadata = json.loads((tmp_path / "b.safetensors.json").read_text())
    symmetry = metadata["symmetry"]
    assert (symmetry["kind"], symmetry["group"]) == ("canonicalization", "c4")
    consumer = timm.create_model("test_convnext", num_classes=0)
    consumer.load_state_dict(load_file(str(out)), strict=True)  # the inner backbone, timm's keys
    network = CanonicalizationNetwork(Group("C", 4), **symmetry["canonicalizer"])
    sidecar = load_file(str(tmp_path / symmetry["canonicalizer_weights"]))
    network.load_state_dict({k.removeprefix("canonicalizer."): v for k, v in sidecar.items()}, strict=True)
    rebuilt = Canonicalized(TimmBackbone("test_convnext"), Group("C", 4), **symmetry["canonicalizer"]).eval()
    rebuilt.backbone.model, rebuilt.canonicalizer = consumer, network
    x = _images(11)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-6)
    frame = FrameAveraged(INNER["torchvision-mobilenet_v3_small"](), Group("D", 4)).eval()
    export_backbone(frame, {"backbone": "torchvision"}, tmp_path / "f.pth", "torchvision")
    metadata = json.loads((tmp_path / "f.pth.json").read_text())
    assert metadata["symmetry"]["kind"] == "frame_averaging" and metadata["symmetry"]["group"] == "d4"
    assert set(torch.load(tmp_path / "f.pth", weights_only=True)) == set(frame.backbone.export_state_dict())


@pytest.mark.parametrize(
    ("make", "group_name"),
    [
        (lambda: FrameAveraged(INNER["timm-convnext"](), Group("C", 4)), "c4"),
        (
            lambda: Canonicalized(
                INNER["torchvision-mobilenet_v3_small"](), Group("D", 4), width=4, layers=2
            ),
            "d4",
        ),
        (lambda: Canonicalized(INNER["timm-vit"](), Group("C", 8), width=4, layers=2), "c8"),
    ],
    ids=["frame-c4", "canonicalizer-d4", "canonicalizer-c8"],
)
def test_onnx_export_is_the_whole_symmetrized_model(make, group_name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = make().eval()
    metadata = {"backbone": "timm", "input_size": [3, SIZE, SIZE]}
    out = export_backbone(model, metadata, tmp_path / "m.onnx", "onnx")
    assert (
        json.loads((tmp_path / "m.onnx.json").read_text())["symmetry"]["exported"]
        == "the whole symmetrized model"
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _images(12, n=3)

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": images.numpy()})[0])

    with torch.no_grad():
        expected = model(x)
    assert _relative(run(x), expected) < 1e-5
    assert _relative(run(torch.rot90(x, 1, dims=(2, 3)).contiguous()), expected) < 1e-5  # invariant in ONNX
