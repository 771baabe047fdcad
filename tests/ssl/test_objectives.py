"""Objectives: registry-wide contract tests, E-SSL's rotation labels, SimCLR learning a toy problem."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from equissl.augmentations.views import ObjectViewMaker
from equissl.backbones.resnet import ResNetConfig
from equissl.config import AugmentConfig, build_config
from equissl.registry import BACKBONES, OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.essl import ESSL, ESSLConfig, essl_config_class
from equissl.ssl.simclr import SimCLR, SimCLRConfig
from equissl.ssl.vicreg import VICRegConfig
from equissl.types import StepOutput, Views, ViewSpec
from tests import helpers
from tests.helpers import TinyBackbone

BATCH, IMAGE, CROP, SMALL = 6, 24, 16, 8


def test_import_ssl_is_still_the_standard_library():
    import ssl

    assert hasattr(ssl, "SSLContext")


def shrink(cfg):
    """``cfg`` (an objective config) with every width above 32 shrunk to 32, for fast CPU tests."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if "dim" not in f.name:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 32:
            changes[f.name] = 32
        elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            changes[f.name] = tuple(min(v, 32) for v in value)
    if hasattr(cfg, "local_crops"):  # DINO's multi-crop: 2 local crops of 8 px
        changes.update(local_crops=2, local_crop_size=SMALL)
    if hasattr(cfg, "num_chunks"):  # CARE: chunk-shared augmentations need at least one image per chunk
        changes["num_chunks"] = 2
    return dataclasses.replace(cfg, **changes)


def small_config(name: str):
    """The entry's default config, shrunk (:func:`shrink`)."""
    return shrink(OBJECTIVES.get(name).config_cls())


def make_views(spec: ViewSpec, seed: int = 0) -> Views:
    """What the data pipeline would hand the objective, from a random uint8 batch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (BATCH,), generator=g)
    if spec.source == "object":
        k = max(spec.num_views, 2)
        batch = {
            "images": torch.randint(0, 256, (BATCH, k, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8),
            "latents": torch.randn(BATCH, k, 7, generator=g),
            "label": labels,
        }
    else:
        batch = {
            "image": torch.randint(0, 256, (BATCH, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8),
            "label": labels,
        }
    cfg = AugmentConfig(crop_size=CROP, small_crop_size=SMALL)
    return helpers.make_views(cfg, spec, batch, torch.Generator().manual_seed(seed + 1))


def build(name: str) -> Objective:
    torch.manual_seed(0)
    backbone = BACKBONES.build("resnet18", ResNetConfig(name="resnet18", stem="strided"))
    return OBJECTIVES.build(name, small_config(name), backbone)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_contract(name):
    objective = build(name)
    assert isinstance(objective, Objective)
    assert isinstance(objective.required_views, ViewSpec)
    if objective.required_views.source not in ("image", "object"):
        pytest.skip(
            f"{name}: source {objective.required_views.source!r} needs its modality's backbone and views"
        )
    objective.train()
    out = objective(make_views(objective.required_views))

    assert isinstance(out, StepOutput)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    metrics = out.detached_metrics()
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert all(k.startswith("loss/") or "/" not in k for k in metrics)
    assert out.features is not None and not out.features.requires_grad
    assert out.features.shape == (BATCH, objective.backbone.num_features)

    out.loss.backward()
    missing = [
        n for n, p in objective.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, f"{name}: parameters without a non-zero gradient: {missing[:5]}"
    for n, p in objective.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {n}"


def test_registered_names_and_paper_defaults():
    assert {"simclr", "vicreg", "essl"} <= set(OBJECTIVES.names())
    simclr, vicreg, essl = SimCLRConfig(), VICRegConfig(), ESSLConfig()
    assert (simclr.temperature, simclr.proj_out_dim, simclr.proj_num_layers) == (0.5, 128, 2)
    assert vicreg.expander_dims == (8192, 8192, 8192)
    assert (vicreg.sim_coeff, vicreg.std_coeff, vicreg.cov_coeff) == (25.0, 25.0, 1.0)
    assert essl.rotation_weight == 0.4 and essl.name == "essl"
    assert ESSL.required_views == ViewSpec(source="image", num_views=2, num_small=1)
    assert SimCLR.required_views == ViewSpec(source="image", num_views=2)


TWO_VIEW_METHODS = ("simclr", "vicreg", "byol", "simsiam", "barlowtwins", "mocov3")


def test_every_registered_two_view_method_offers_object_views():
    """The list above is every registered method whose config has ``views``: a new two-view method is
    added here (and so tested below) or the assertion names it."""
    with_views = {
        name
        for name in OBJECTIVES.names()
        if name != "essl" and "views" in {f.name for f in dataclasses.fields(OBJECTIVES.get(name).config_cls)}
    }
    assert with_views == set(TWO_VIEW_METHODS)


@pytest.mark.parametrize("name", TWO_VIEW_METHODS)
def test_object_views_pair_two_renders_of_one_object(name):
    objective = OBJECTIVES.build(
        name, dataclasses.replace(small_config(name), views="object"), TinyBackbone(16)
    )
    assert objective.required_views == ViewSpec(source="object", num_views=2)
    default = OBJECTIVES.build(name, small_config(name), TinyBackbone(16))
    assert default.required_views == ViewSpec(source="image", num_views=2)  # the papers' pairs
    essl = OBJECTIVES.build("essl", shrink(essl_config_class(name)(views="object")), TinyBackbone(16))
    assert essl.required_views == ViewSpec(source="object", num_views=2, num_small=1)
    g = torch.Generator().manual_seed(3)
    renders = torch.randint(
        0, 256, (BATCH, 3, 3, 4, 4), generator=g, dtype=torch.uint8
    )  # TinyBackbone's 4 px
    batch = {"images": renders, "latents": torch.rand(BATCH, 3, 7, generator=g)}
    maker = ObjectViewMaker(AugmentConfig(crop_size=4, object_views="none"), objective.required_views)
    views = maker(batch, g)
    # the positive pair is renders 0 and 1 of each object, only normalised: equal renders, equal views
    same = maker({**batch, "images": renders[:, [0, 0, 2]]}, g)
    torch.testing.assert_close(same.images[0], same.images[1])
    torch.testing.assert_close(same.images[0], views.images[0])
    assert (views.images[0] - views.images[1]).abs().max() > 0.1
    out = objective.train()(views)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_objectives_build_from_recipe_overrides():
    cfg = build_config(
        overrides=[
            "objective.name=essl",
            "objective.rotation_hidden_dims=[16]",
            "objective.proj_hidden_dim=16",
            "objective.proj_out_dim=8",
            "objective.same_view_negatives=false",
            "objective.proj_last_norm=bn_no_affine",
        ]
    )
    assert isinstance(cfg.objective, ESSLConfig)
    backbone = BACKBONES.build("resnet18", ResNetConfig(name="resnet18", stem="strided"))
    objective = OBJECTIVES.build("essl", cfg.objective, backbone)
    assert isinstance(objective, ESSL) and objective.cfg.same_view_negatives is False


def test_missing_views_are_user_errors():
    essl = build("essl")
    views = make_views(ViewSpec(source="image", num_views=2))
    with pytest.raises(ValueError, match="small"):
        essl(views)
    with pytest.raises(ValueError, match="2 global views"):
        build("simclr")(Views(images=views.images[:1], params=views.params[:1]))


# ----------------------------------------------------------------------------------------------------
# E-SSL rotation labels


def test_rotate_four_ways_matches_official_flip_transpose_construction():
    from equissl.groups import rotate_four_ways

    x = torch.randn(3, 2, 5, 5)
    rotated, labels = rotate_four_ways(x)
    # rdangovs/essl ``rotate_images``: 90 = flip(3).transpose(2, 3), 180 = flip(3).flip(2),
    # 270 = transpose(2, 3).flip(3), in blocks of B with labels 0..3
    expected = torch.cat([x, x.flip(3).transpose(2, 3), x.flip(3).flip(2), x.transpose(2, 3).flip(3)])
    assert torch.equal(rotated, expected)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


class CornerBackbone(nn.Module):
    """Features = channel-0 intensities at (top-left, bottom-left, bottom-right, top-right)."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x):
        c = x[:, 0]
        return self.gain * torch.stack([c[:, 0, 0], c[:, -1, 0], c[:, -1, -1], c[:, 0, -1]], dim=1)


def _oracle_essl(corner_order) -> float:
    """rotation_acc of E-SSL whose rotation head reads the marked corner in ``corner_order``."""
    objective = ESSL(
        CornerBackbone(), ESSLConfig(proj_hidden_dim=8, proj_out_dim=4, rotation_hidden_dims=(8,))
    )
    objective.rotation_head = nn.Identity()
    g = torch.Generator().manual_seed(0)
    small = 0.01 * torch.rand(BATCH, 3, SMALL, SMALL, generator=g)
    small[:, 0, 0, 0] = 1.0  # a marker in the top-left corner of every crop
    images = [torch.randn(BATCH, 3, CROP, CROP, generator=g) for _ in range(2)]
    views = Views(images=images, params=[{}, {}], small=[small[:, :, :, :]], small_params=[{}])
    with torch.no_grad():
        logits_order = objective.backbone(small)  # sanity: the marker is read as corner 0
        assert logits_order.argmax(1).eq(0).all()
        objective.backbone = _Reorder(objective.backbone, corner_order)
        return objective(views).detached_metrics()["rotation_acc"]


class _Reorder(nn.Module):
    def __init__(self, backbone, order):
        super().__init__()
        self.backbone, self.order, self.num_features = backbone, list(order), backbone.num_features

    def forward(self, x):
        return self.backbone(x)[:, self.order]


def test_essl_rotation_labels_with_a_perfect_oracle():
    # a quarter turn counter-clockwise moves the top-left corner to the bottom-left, then the
    # bottom-right, then the top-right: an oracle reading (TL, BL, BR, TR) predicts k exactly
    assert _oracle_essl([0, 1, 2, 3]) == 1.0
    # the clockwise convention (TL, TR, BR, BL) swaps 90 and 270: right only for 0 and 180
    assert _oracle_essl([0, 3, 2, 1]) == 0.5


# ----------------------------------------------------------------------------------------------------
# SimCLR learns a toy problem


def _noisy_views(base: torch.Tensor, g: torch.Generator) -> Views:
    return Views(images=[base + torch.randn(base.shape, generator=g) for _ in range(2)], params=[{}, {}])


def _retrieval_accuracy(objective: SimCLR, base: torch.Tensor, g: torch.Generator) -> float:
    """How often view b's nearest projection (cosine) to view a's is its own positive."""
    with torch.no_grad():
        _, z_a, z_b = objective.embed_pair(_noisy_views(base, g))
        similarity = nn.functional.normalize(z_a, dim=1) @ nn.functional.normalize(z_b, dim=1).T
        return (similarity.argmax(dim=1) == torch.arange(len(base))).float().mean().item()


def test_simclr_learns_to_match_positive_pairs():
    # 16 "images" (3x4x4 noise); a view is the image plus fresh noise of the same scale
    torch.manual_seed(0)
    objective = SimCLR(TinyBackbone(16), SimCLRConfig(proj_hidden_dim=32, proj_out_dim=16))
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 3, 4, 4, generator=g)
    before = sum(_retrieval_accuracy(objective, base, g) for _ in range(5)) / 5
    losses = []
    for _ in range(80):
        out = objective(_noisy_views(base, g))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    after = sum(_retrieval_accuracy(objective, base, g) for _ in range(5)) / 5
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert after > 0.8 and after > before + 0.3, (before, after)


def test_essl_official_cifar_options_build_the_official_projector():
    """The documented official CIFAR options give rdangovs/essl's 512-2048-2048 projector with a
    non-affine output BN; without proj_hidden_dim=2048 the hidden layer would keep the backbone's 512."""
    official = {
        "same_view_negatives": False,
        "joint_forward": False,
        "proj_out_dim": 2048,
        "proj_last_norm": "bn_no_affine",
    }
    essl = ESSL(TinyBackbone(512), ESSLConfig(proj_hidden_dim=2048, **official, rotation_hidden_dims=(8,)))
    linears = [m for m in essl.projector.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048)]
    norms = [m for m in essl.projector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert not norms[-1].affine
    narrow = ESSL(TinyBackbone(512), ESSLConfig(**official, rotation_hidden_dims=(8,)))
    assert [m.out_features for m in narrow.projector.modules() if isinstance(m, nn.Linear)] == [512, 2048]
