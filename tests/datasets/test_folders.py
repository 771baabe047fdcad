"""``imagefolder``: the user's own folders (labelled, unlabelled trees, file lists), every image mode
decoded to the right RGB, EXIF orientation, symlink loops, and unreadable files skipped, counted, named."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from equissl.config import build_config
from equissl.datasets.folders import ImageFolderDataset, decode_image, image_files
from equissl.registry import DATASETS
from tests.helpers import write_user_photos

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _png(path, size: tuple[int, int], colour, marks: dict[tuple[int, int], tuple] | None = None) -> None:
    """A PNG (lossless) of ``size`` = (width, height) in ``colour`` with single pixels at (row, column)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    for (row, column), value in (marks or {}).items():
        image.putpixel((column, row), value)
    image.save(path)


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "folder"
    _png(root / "train" / "cat" / "a.png", (8, 8), GREEN, {(2, 3): RED})
    Image.new("RGB", (8, 8), (200, 100, 50)).save(root / "train" / "cat" / "b.jpg", quality=95)
    _png(root / "train" / "dog" / "c.png", (8, 8), BLUE)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="JPEG")
    (root / "train" / "dog" / "broken.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    wide = Image.new("RGB", (16, 8), RED)  # left half red, right half blue
    wide.paste(Image.new("RGB", (8, 8), BLUE), (8, 0))
    (root / "train" / "dog" / "more").mkdir()
    wide.save(root / "train" / "dog" / "more" / "d.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    _png(root / "val" / "dog" / "e.png", (8, 8), BLUE)
    return root


def test_image_folder_classes_pixels_and_splits(folder_root):
    train = ImageFolderDataset(folder_root, "train", image_size=8)
    val = ImageFolderDataset(folder_root, "val", image_size=8)
    assert train.class_names == ["cat", "dog"] and val.class_names == ["cat", "dog"]
    assert (len(train), len(val), train.num_classes, val.num_classes) == (5, 1, 2, 2)
    assert [p.name for p in train.files] == ["a.png", "b.jpg", "broken.jpg", "c.png", "d.png"]
    assert train.labels.tolist() == [0, 0, 1, 1, 1] and int(val[0]["label"]) == 1
    first = train[0]["image"]
    assert first.dtype == torch.uint8 and first.shape == (3, 8, 8)
    assert first[:, 2, 3].tolist() == list(RED) and first[:, 3, 2].tolist() == list(GREEN)
    jpeg = train[1]["image"].float().mean(dim=(1, 2))
    assert torch.allclose(jpeg, torch.tensor([200.0, 100.0, 50.0]), atol=4)
    wide = train[4]["image"]  # 16x8 -> centre 8x8: columns 4..11, red then blue
    assert wide.shape == (3, 8, 8)
    assert wide[:, 3, 0].tolist() == list(RED) and wide[:, 3, 7].tolist() == list(BLUE)
    assert train.full_item(4)["image"].shape == (3, 8, 16)  # the decoded resolution, for full-image crops
    big = ImageFolderDataset(folder_root, "train", image_size=20)[3]["image"]
    assert big.shape == (3, 20, 20) and big[:, 10, 10].tolist() == list(BLUE)


def test_image_folder_skips_and_counts_the_corrupt_file(folder_root):
    train = ImageFolderDataset(folder_root, "train", image_size=8)
    broken = str(folder_root / "train" / "dog" / "broken.jpg")
    assert train.describe_item(2) == broken
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        item = train[2]
    assert torch.equal(item["image"], train[3]["image"]) and int(item["label"]) == 1  # fell back to c.png
    assert train.bad_files == [broken] and train.skipped_reads == 1
    train[2]
    assert train.bad_files == [broken] and train.skipped_reads == 2  # every skip counts; the file once


def test_image_folder_errors(folder_root, tmp_path):
    with pytest.raises(ValueError, match=r"nowhere does not exist: expected root/train/<class>"):
        ImageFolderDataset(tmp_path / "nowhere")
    _png(folder_root / "val" / "bird" / "f.png", (8, 8), RED)
    with pytest.raises(ValueError, match=r"classes missing from train: bird"):
        ImageFolderDataset(folder_root, "val")
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images .* in .*empty.train: expected"):
        ImageFolderDataset(empty, "train")
    with pytest.raises(ValueError, match=r"labels=folders: .*loose.png is not inside a class folder"):
        _png(tmp_path / "flat" / "loose.png", (4, 4), RED)
        ImageFolderDataset(tmp_path / "flat", labels="folders")


# ----------------------------------------------------------------------------------------------------
# Decoding: every mode to RGB, EXIF orientation.


def test_every_mode_decodes_to_its_rgb(tmp_path):
    expected = write_user_photos(tmp_path)
    for relative, rgb in expected.items():
        if relative == "rotated.jpg":
            continue
        image = decode_image(tmp_path / relative)
        assert image.dtype == torch.uint8 and image.shape[0] == 3, relative
        tolerance = 3 if relative.endswith(".jpg") else 0
        mean = image.float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(rgb, dtype=torch.float32), atol=tolerance), (relative, mean)
    assert decode_image(tmp_path / "2025/scans/deep16.png").shape == (3, 18, 26)


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    """16-bit gray (Pillow mode I;16) must be scaled by 255/65535; converting it naively clips to white."""
    values = np.array([[0, 257, 0x8080], [40000, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    Image.fromarray(values).save(tmp_path / "deep.tiff")
    for name in ("deep.png", "deep.tiff"):
        image = decode_image(tmp_path / name)
        assert image[0].tolist() == [[0, 1, 128], [156, 254, 255]], name  # round(v * 255 / 65535)
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_exif_orientation_is_applied(tmp_path):
    write_user_photos(tmp_path)
    image = decode_image(tmp_path / "rotated.jpg")
    assert image.shape == (3, 40, 20)  # stored 40 wide x 20 high, shown rotated 90 degrees clockwise
    assert image[:, 3:7, 13:17].float().mean() < 30  # the black square moved from top-left to top-right
    assert image[:, 3:7, 3:7].float().mean() > 225 and image[:, 33:37, 13:17].float().mean() > 225


def test_semi_transparent_pixels_are_composited_onto_white(tmp_path):
    Image.new("RGBA", (2, 2), (255, 0, 0, 128)).save(tmp_path / "half.png")
    assert decode_image(tmp_path / "half.png")[:, 0, 0].tolist() == [255, 127, 127]
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "gray_alpha.png")
    assert decode_image(tmp_path / "gray_alpha.png")[:, 1, 1].tolist() == [255, 255, 255]


# ----------------------------------------------------------------------------------------------------
# Unlabelled trees, symlinks, file lists, held-out validation.


def test_a_nested_unlabelled_tree_is_read_whole(tmp_path):
    expected = write_user_photos(tmp_path)
    dataset = ImageFolderDataset(tmp_path, "train", image_size=16)
    listed = sorted(str(p.relative_to(tmp_path)) for p in dataset.files)
    assert listed == sorted([*expected, "trip/corrupt.jpg"])  # no .txt, no ._ companion
    assert dataset.num_classes == 0 and dataset.class_names == [] and set(dataset.labels.tolist()) == {-1}
    with pytest.warns(RuntimeWarning, match="corrupt.jpg"):
        items = [dataset[i] for i in range(len(dataset))]
    assert all(item["image"].shape == (3, 16, 16) for item in items)
    assert dataset.bad_files == [str(tmp_path / "trip" / "corrupt.jpg")] and dataset.skipped_reads == 1
    with pytest.raises(ValueError, match=r"unlabelled.*no val split.*--data"):
        ImageFolderDataset(tmp_path, "val")


def test_a_symlink_loop_is_followed_once(tmp_path):
    """A folder linking back to its parent: os.walk(followlinks=True) alone lists the images again at every
    level until the path is too long."""
    _png(tmp_path / "photos" / "a" / "one.png", (4, 4), RED)
    _png(tmp_path / "photos" / "b" / "two.png", (4, 4), BLUE)
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "a" / "back")  # loop
    os.symlink(tmp_path / "photos" / "b", tmp_path / "photos" / "b_again")  # a second link, same folder
    _png(tmp_path / "elsewhere" / "three.png", (4, 4), GREEN)
    os.symlink(tmp_path / "elsewhere", tmp_path / "photos" / "linked")  # a plain link is followed
    files = image_files(tmp_path / "photos")
    assert sorted(p.name for p in files) == ["one.png", "three.png", "two.png"]


def test_file_list_with_labels(tmp_path):
    for name, colour in (("x.png", RED), ("y y.png", BLUE), ("sub/z.png", GREEN), ("w.png", RED)):
        _png(tmp_path / "data" / name, (6, 6), colour)
    (tmp_path / "train.txt").write_text("# images\nx.png cat\ny y.png\tdog\n\nsub/z.png cat\n")
    (tmp_path / "val.txt").write_text("w.png dog\n")
    cfg = build_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={tmp_path / 'data'}",
            f"data.file_list={tmp_path / 'train.txt'}",
            f"data.val_file_list={tmp_path / 'val.txt'}",
        ],
    ).data
    train = DATASETS.build("imagefolder", cfg, split="train", source="image", num_views=1, seed=0)
    val = DATASETS.build("imagefolder", cfg, split="val", source="image", num_views=1, seed=0)
    assert [p.name for p in train.files] == ["x.png", "y y.png", "z.png"]
    assert train.class_names == ["cat", "dog"] and train.labels.tolist() == [0, 1, 0]
    assert val.labels.tolist() == [1] and val[0]["image"][:, 0, 0].tolist() == list(RED)
    # Integer labels are used as given; paths relative to the list's folder when data.root is unset.
    (tmp_path / "data" / "ints.txt").write_text("x.png 3\nsub/z.png 0\n")
    ints = ImageFolderDataset(None, "train", file_list=tmp_path / "data" / "ints.txt")
    assert ints.num_classes == 4 and ints.labels.tolist() == [3, 0]
    (tmp_path / "data" / "mixed.txt").write_text("x.png 3\nsub/z.png\n")
    with pytest.raises(ValueError, match=r"z.png: every line of the file list needs a label"):
        ImageFolderDataset(None, "train", file_list=tmp_path / "data" / "mixed.txt")
    unlabelled = ImageFolderDataset(None, "train", labels="none", file_list=tmp_path / "data" / "mixed.txt")
    assert unlabelled.num_classes == 0 and len(unlabelled) == 2


def test_class_folders_without_split_folders_hold_out_a_val_split(tmp_path):
    for name in ("cat", "dog"):
        for k in range(5):
            _png(tmp_path / name / f"{k}.png", (4, 4), RED)
    auto = ImageFolderDataset(tmp_path, "train")
    assert auto.num_classes == 0 and len(auto) == 10  # without train/: a tree, unlabelled
    train = ImageFolderDataset(tmp_path, "train", labels="folders", val_fraction=0.2)
    val = ImageFolderDataset(tmp_path, "val", labels="folders", val_fraction=0.2)
    assert train.class_names == ["cat", "dog"] and (len(train), len(val)) == (8, 2)
    assert [f"{p.parent.name}/{p.name}" for p in val.files] == ["cat/2.png", "dog/2.png"]
    assert not set(train.files) & set(val.files) and val.labels.tolist() == [0, 1]
