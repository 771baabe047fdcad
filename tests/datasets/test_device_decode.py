"""``data.decode=device``: the workers read the JPEGs' bytes, the training process decodes them batched
(here on the CPU, the same code as on CUDA) and cuts the crops the workers path cuts; other formats are
decoded in the workers; unreadable files are skipped and counted either way."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from equissl.augmentations.crops import DeviceDecodedViews, FullImageViews, collate_encoded
from equissl.build import build_dataset
from equissl.config import AugmentConfig, build_config
from equissl.datasets.folders import ImageFolderDataset, exif_upright, read_for_device
from equissl.errors import ConfigError
from equissl.launch.data import train_batches
from equissl.launch.sampler import ResumableSampler
from equissl.types import ViewSpec
from tests.helpers import exif_rotated_photo

CFG = AugmentConfig(crop_size=16, small_crop_size=8)
SPEC = ViewSpec(source="image", num_views=2, num_small=2)
# The JPEG decoders may round differently (nvjpeg on CUDA); torchvision's CPU decoder and PIL both use
# libjpeg-turbo's defaults and agree exactly here.
TOLERANCE = 2 / 255


def _smooth_noise(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (height, width, 3): random 5 x 5 colours, upsampled smoothly (photo-like, compresses well)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def _jpeg(path: Path, pixels: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90, **kwargs)


def _bogus_huffman_jpeg(path: Path) -> None:
    """A JPEG with a complete header and end marker whose Huffman table is garbage: every decoder fails,
    and only when decoding (the worker's header read passes)."""
    buffer = io.BytesIO()
    Image.fromarray(_smooth_noise(20, 30, 9)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    table = data.find(b"\xff\xc4")
    data[table + 5 : table + 21] = b"\xff" * 16
    path.write_bytes(bytes(data))


@pytest.fixture
def photos(tmp_path) -> Path:
    """JPEGs of several sizes (one grayscale, one progressive, one turned by EXIF) and a PNG."""
    root = tmp_path / "photos"
    for k, (height, width) in enumerate(((30, 40), (41, 23), (25, 25))):
        _jpeg(root / f"{k}.jpg", _smooth_noise(height, width, k))
    _jpeg(root / "gray.jpg", _smooth_noise(22, 35, 5)[..., 0])
    _jpeg(root / "progressive.jpg", _smooth_noise(28, 33, 6), progressive=True)
    rotated, exif = exif_rotated_photo()
    rotated.save(root / "rotated.jpg", quality=95, exif=exif)
    Image.fromarray(_smooth_noise(26, 31, 7)).save(root / "z.png")
    return root


def _both(root: Path, seed: int = 3) -> tuple[FullImageViews, DeviceDecodedViews]:
    workers = FullImageViews(ImageFolderDataset(root, full_images=True), CFG, SPEC, seed)
    device = DeviceDecodedViews(ImageFolderDataset(root, full_images=True, decode="device"), CFG, SPEC, seed)
    return workers, device


def test_device_decoding_cuts_the_views_of_the_workers_path(photos):
    workers, device = _both(photos)
    for dataset in (workers, device):
        dataset.set_epoch(2)
    expected = torch.utils.data.default_collate([workers[i] for i in range(len(workers))])
    items = [device[i] for i in range(len(device))]
    names = [path.name for path in device.dataset.files]
    assert [bool(item["encoded"]) for item in items] == [name.endswith(".jpg") for name in names]
    assert int(items[names.index("rotated.jpg")]["orientation"]) == 6
    batch = device.finish_batch(collate_encoded(items), "cpu")
    assert batch.keys() == expected.keys()
    for key in ("crops", "small_crops", "label"):  # the same boxes, drawn in the workers
        assert torch.equal(batch[key], expected[key]), key
    for key in ("views", "small_views"):
        assert batch[key].shape == expected[key].shape
        assert float((batch[key] - expected[key]).abs().max()) <= TOLERANCE, key
    rotated = names.index("rotated.jpg")  # 40 x 20 stored, 20 wide x 40 high upright
    assert (
        float(batch["crops"][rotated][:, 2].max()) <= 20 and float(batch["crops"][rotated][:, 3].max()) <= 40
    )


def test_exif_orientations_match_pil():
    pixels = _smooth_noise(6, 9, 1)
    stored = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", exif=exif.tobytes())
        upright = np.asarray(ImageOps.exif_transpose(Image.open(buffer)).convert("RGB"))
        assert torch.equal(
            exif_upright(stored, orientation), torch.from_numpy(upright.copy()).permute(2, 0, 1)
        )


def test_workers_read_only_headers_of_complete_jpegs(photos, tmp_path):
    item = read_for_device(photos / "0.jpg")
    assert bool(item["encoded"]) and item["data"].ndim == 1
    assert item["data"].numpy().tobytes() == (photos / "0.jpg").read_bytes()
    assert item["size"].tolist() == [30, 40]
    png = read_for_device(photos / "z.png")  # other formats: decoded in the worker, as before
    assert not bool(png["encoded"]) and png["data"].shape == (3, 26, 31)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((photos / "0.jpg").read_bytes()[:-40])  # no end marker: PIL decides, and fails
    with pytest.raises(OSError, match="truncated"):
        read_for_device(cut)


def test_unreadable_files_are_skipped_and_counted_in_the_device_path(photos):
    """One file fails in the worker (cut short), one only when the training process decodes it (bogus
    Huffman table); both are counted, named, and replaced by the next file, as the workers path does."""
    (photos / "1.jpg").write_bytes((photos / "1.jpg").read_bytes()[:200])
    _bogus_huffman_jpeg(photos / "3.jpg")  # sorted after 2.jpg: replaced by gray.jpg
    workers, device = _both(photos)
    names = [path.name for path in device.dataset.files]
    with pytest.warns(RuntimeWarning):
        expected = torch.utils.data.default_collate([workers[i] for i in range(len(workers))])
    assert workers.skipped_reads == 2
    with pytest.warns(RuntimeWarning, match="1.jpg"):
        items = [device[i] for i in range(len(device))]
    assert device.skipped_reads == 1  # the cut file, in the worker
    with pytest.warns(RuntimeWarning, match="3.jpg"):
        batch = device.finish_batch(collate_encoded(items), "cpu")
    assert device.skipped_reads == 2 and [Path(f).name for f in device.bad_files] == ["1.jpg", "3.jpg"]
    bogus = names.index("3.jpg")
    assert int(items[bogus]["file"]) == bogus  # the worker could not tell
    for key in ("crops", "small_crops", "label"):
        assert torch.equal(batch[key], expected[key]), key
    assert float((batch["views"] - expected["views"]).abs().max()) <= TOLERANCE
    again = device.finish_batch(collate_encoded(items), "cpu")  # known bad now: counted, not decoded
    assert device.skipped_reads == 3 and len(device.bad_files) == 2
    assert torch.equal(again["views"], batch["views"])


def test_device_decoding_is_for_full_image_crops_only(photos):
    with pytest.raises(ConfigError, match="data.decode=device"):
        build_config(
            None, ["data={name: imagefolder, root: " + str(photos) + ", crops: resized, decode: device}"]
        )
    config = build_config(None, ["data={name: imagefolder, root: " + str(photos) + ", decode: device}"])
    assert isinstance(build_dataset(config, "train", spec=SPEC), DeviceDecodedViews)
    assert isinstance(build_dataset(config, "train"), ImageFolderDataset)  # evaluations decode in workers
    with pytest.raises(ConfigError, match="shared_chunks"):
        build_dataset(config, "train", spec=ViewSpec(source="image", num_views=2, shared_chunks=2))


def test_the_run_loader_counts_and_names_the_files_the_device_path_skips(photos):
    """Through the run's loader with 2 workers: the worker's skip and the training process's are summed
    per batch, with the names."""
    (photos / "1.jpg").write_bytes((photos / "1.jpg").read_bytes()[:200])
    _bogus_huffman_jpeg(photos / "3.jpg")
    data = "data={name: imagefolder, root: " + str(photos) + ", decode: device, num_workers: 2}"
    config = build_config(None, [data, "data.image_size=16"])
    dataset = build_dataset(config, "train", spec=SPEC)
    sampler = ResumableSampler(len(dataset), batch_size=len(dataset), seed=0)  # every file, every batch
    batches = train_batches(dataset, sampler, 0, 0, config.data, "cpu")
    with pytest.warns(RuntimeWarning, match="3.jpg"):  # from the training process
        epoch, batch, skipped, names = next(batches)
    epoch_after, _, skipped_after, names_after = next(batches)
    batches.close()
    assert (epoch, epoch_after) == (0, 1) and batch["views"].shape == (len(dataset), 2, 3, 16, 16)
    assert skipped == skipped_after == 2
    assert sorted(Path(name).name for name in names) == ["1.jpg", "3.jpg"]
    # each process names a file once: the second batch is the second worker's first (the cut file), and
    # the training process knows the bogus one already
    assert [Path(name).name for name in names_after] == ["1.jpg"]
