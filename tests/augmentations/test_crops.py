"""Crops from the full-resolution image: boxes drawn in the data workers in original pixels, the rest of
the augmentation batched; the returned parameters reproduce every view; seeds and resumes stay exact."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from equissl.augmentations.crops import FullImageViews, view_generator
from equissl.augmentations.image import apply_params, sample_params
from equissl.build import build_dataset, build_view_maker
from equissl.config import AugmentConfig, build_config
from equissl.datasets.folders import ImageFolderDataset
from equissl.types import ViewSpec

CFG = AugmentConfig(crop_size=24, small_crop_size=12, blur_prob=0.5, grayscale_prob=0.3, solarize_prob=0.5)
CHANGED = ("crop_size", "small_crop_size", "blur_prob", "grayscale_prob", "solarize_prob")
SPEC = ViewSpec(source="image", num_views=2, num_small=2)
SIZES = ((143, 97), (40, 300), (64, 64), (17, 23))  # (width, height): non-square, larger and smaller


@pytest.fixture
def photos(tmp_path):
    """Noise PNGs (lossless) of the sizes above; returns (root, the original images uint8 (3, H, W))."""
    generator = torch.Generator().manual_seed(5)
    originals = []
    for k, (width, height) in enumerate(SIZES):
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        path = tmp_path / "photos" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.numpy()).save(path)
        originals.append(pixels.permute(2, 0, 1).contiguous())
    return tmp_path / "photos", originals


def test_parameters_reproduce_every_view_from_the_original_image(photos):
    root, originals = photos
    dataset = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, SPEC, seed=3)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    overrides = [f"augment.{key}={getattr(CFG, key)}" for key in CHANGED]
    maker = build_view_maker(build_config(None, overrides), SPEC)
    views = maker(batch, torch.Generator().manual_seed(0))
    every = views.params + views.small_params
    for key in ("gray", "blur_sigma", "solarize"):  # on somewhere, so that reproducing them is checked
        assert any(bool((p[key] > 0).any()) for p in every), key
    assert [v.shape for v in views.images] == [(4, 3, 24, 24)] * 2 and len(views.small) == 2
    checked = 0
    for images, params, size in ((views.images, views.params, 24), (views.small, views.small_params, 12)):
        for view, view_params in zip(images, params):
            assert bool((view_params["antialias"] == 1).all())
            for b, original in enumerate(originals):
                box = view_params["crop"][b]
                height, width = original.shape[-2:]
                assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height  # original pixels
                one = {key: value[b : b + 1] for key, value in view_params.items()}
                again = apply_params(original[None], one, CFG, size)
                torch.testing.assert_close(again[0], view[b], atol=1e-4, rtol=0)
                checked += 1
    assert checked == 16
    widest = max(float((p["crop"][:, 2] - p["crop"][:, 0]).max()) for p in views.params)
    assert widest > 24  # boxes larger than the crop: cut from the full image, not from a 24 px square


def test_boxes_follow_torchvision_sampling_on_the_full_image(photos):
    root, _ = photos
    dataset = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, SPEC, seed=3)
    item = dataset[1]  # 300 high, 40 wide
    for view in range(SPEC.num_views + SPEC.num_small):
        scale = CFG.crop_scale if view < SPEC.num_views else CFG.small_crop_scale
        expected = sample_params(CFG, 1, 300, 40, tuple(scale), view_generator(3, 0, 1, view))["crop"][0]
        box = item["crops"][view] if view < SPEC.num_views else item["small_crops"][view - SPEC.num_views]
        assert torch.equal(box, expected)


def test_crops_depend_only_on_seed_epoch_index_and_view(photos):
    root, _ = photos
    first = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, SPEC, seed=3)
    second = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, SPEC, seed=3)
    backwards = [second[i] for i in reversed(range(len(second)))][::-1]  # another order, another instance
    for k, item in enumerate(backwards):
        assert torch.equal(item["views"], first[k]["views"]) and torch.equal(item["crops"], first[k]["crops"])
    loaded = next(iter(DataLoader(first, batch_size=4, num_workers=2)))  # cut in two worker processes
    assert torch.equal(loaded["crops"], torch.stack([first[k]["crops"] for k in range(4)]))
    second.set_epoch(1)
    assert not torch.equal(second[0]["crops"], first[0]["crops"])  # a new epoch draws new boxes
    other_seed = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, SPEC, seed=4)
    assert not torch.equal(other_seed[0]["crops"], first[0]["crops"])


def test_full_and_resized_paths_agree_on_images_at_their_stored_size():
    """Where the image already is the crop size (a fixed-size dataset at its native size), the full-image
    crop and the fast path's crop are the same view: antialiasing only differs when downsampling."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8, generator=generator)
    params = sample_params(CFG, 6, 24, 24, CFG.crop_scale, torch.Generator().manual_seed(2))
    fast = apply_params(images, params, CFG, 24)
    full = apply_params(images, dict(params, antialias=torch.ones(6)), CFG, 24)
    torch.testing.assert_close(full, fast, atol=1e-4, rtol=0)  # float rounding, magnified by 1 / std


def test_pretraining_builds_full_image_crops_for_folders_only(photos, tiny_shapes3d_root):
    root, _ = photos
    folder = build_config(None, ["data.name=imagefolder", f"data.root={root}", "data.image_size=24"])
    assert isinstance(build_dataset(folder, "train", spec=SPEC), FullImageViews)
    assert not isinstance(build_dataset(folder, "train"), FullImageViews)  # evaluations read the square
    resized = build_config(None, ["data.name=imagefolder", f"data.root={root}", "data.crops=resized"])
    assert not isinstance(build_dataset(resized, "train", spec=SPEC), FullImageViews)
    chunks = ViewSpec(source="image", num_views=2, shared_chunks=2)  # CARE: one frame per chunk
    assert not isinstance(build_dataset(folder, "train", spec=chunks), FullImageViews)
