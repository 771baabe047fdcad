"""Multi-crop views (ViewSpec.crops): any number of global and small crops, each group at its own size
and scale range with its parameters returned, on the resized fast path and cut from full images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from equissl.augmentations.crops import FullImageViews
from equissl.augmentations.image import apply_params
from equissl.config import AugmentConfig
from equissl.datasets.folders import ImageFolderDataset
from equissl.types import CropGroup, ViewSpec
from tests.helpers import make_views

CFG = AugmentConfig(crop_size=16, small_crop_size=6, crop_ratio=(1.0, 1.0), hflip_prob=0.0)
SPEC = ViewSpec(
    "image",
    num_views=3,
    num_small=4,
    crops=(
        CropGroup("global", 2, 0, (0.5, 1.0)),
        CropGroup("small", 3, 8, (0.05, 0.1)),
        CropGroup("global", 1, 12, (0.3, 0.3)),
        CropGroup("small", 1),  # the augment defaults: 6 px, small_crop_scale
    ),
)


def _area_fractions(params, height, width):
    crop = params["crop"]
    return (crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1]) / (height * width)


def test_groups_have_their_sizes_scales_and_parameters():
    images = torch.randint(
        0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    views = make_views(CFG, SPEC, {"image": images}, torch.Generator().manual_seed(1))
    assert [v.shape[-1] for v in views.images] == [16, 16, 12]
    assert [v.shape[-1] for v in views.small] == [8, 8, 8, 6]
    assert len(views.params) == 3 and len(views.small_params) == 4
    fractions = [_area_fractions(p, 40, 40) for p in (*views.params, *views.small_params)]
    # square crops with integer sides: the area fraction is within rounding of each group's range
    assert all(((f >= 0.5 - 0.05) & (f <= 1.0)).all() for f in fractions[:2])
    assert ((fractions[2] - 0.3).abs() < 0.05).all()
    assert all(((f >= 0.05 - 0.02) & (f <= 0.1 + 0.02)).all() for f in fractions[3:6])
    lo, hi = CFG.small_crop_scale
    assert ((fractions[6] >= lo - 0.02) & (fractions[6] <= hi + 0.02)).all()
    # every view is reproduced from the original images by its own parameters
    for view, params in zip([*views.images, *views.small], [*views.params, *views.small_params]):
        torch.testing.assert_close(apply_params(images, params, CFG, view.shape[-1]), view)
    # crops of one group differ (independent draws), the same seed gives the same views
    assert not torch.equal(views.small[0], views.small[1])
    again = make_views(CFG, SPEC, {"image": images}, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(views.small, again.small))


def test_spec_counts_must_match_the_groups():
    with pytest.raises(ValueError, match="num_views"):
        ViewSpec("image", num_views=2, num_small=0, crops=(CropGroup("global", 3),))
    # no groups: the two classic kinds, at the augment defaults
    assert ViewSpec(num_views=2, num_small=1).crop_groups(CFG) == [
        ("global", 2, 16, tuple(CFG.crop_scale)),
        ("small", 1, 6, tuple(CFG.small_crop_scale)),
    ]


def test_full_image_crops_follow_the_groups(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for k, size in enumerate(((50, 30), (31, 64))):
        Image.new("RGB", size, (10 * k, 100, 200)).save(root / f"{k}.png")
    spec = ViewSpec(
        "image",
        num_views=2,
        num_small=3,
        crops=(CropGroup("global", 2, 16, (0.4, 1.0)), CropGroup("small", 3, 8, (0.05, 0.4))),
    )
    item = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, spec, seed=0)[0]
    assert item["views"].shape == (2, 3, 16, 16) and item["small_views"].shape == (3, 3, 8, 8)
    box = item["small_crops"]
    fraction = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / (50 * 30)
    assert ((fraction >= 0.05 - 0.02) & (fraction <= 0.4 + 0.02)).all()
    mixed = ViewSpec(
        "image", 2, 2, crops=(CropGroup("global", 2), CropGroup("small", 1, 8), CropGroup("small", 1, 6))
    )
    with pytest.raises(ValueError, match="one size"):
        FullImageViews(ImageFolderDataset(root, full_images=True), CFG, mixed, seed=0)
