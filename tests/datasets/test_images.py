"""CIFAR-10/100, STL-10 and image-folder readers, on small files written here in the real formats."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from equissl.config import build_config
from equissl.datasets.images import (
    CIFAR10Config,
    CIFARDataset,
    STL10Config,
    STL10Dataset,
)
from equissl.registry import DATASETS

CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]
STL_IMAGE = 3 * 96 * 96


def _pickle(path, entry: dict) -> None:
    path.write_bytes(pickle.dumps(entry, protocol=2))


def cifar_rows(count: int, seed: int) -> np.ndarray:
    """(count, 3072) uint8 rows: 1024 red, 1024 green, 1024 blue, each plane row-major 32x32."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def write_cifar10(root, train_per_batch: int = 2, test: int = 3) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with 5 train batches and a test batch; returns the rows and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for batch in range(5):
        data = cifar_rows(train_per_batch, seed=batch)
        batch_labels = [(train_per_batch * batch + i) % 10 for i in range(train_per_batch)]
        _pickle(
            folder / f"data_batch_{batch + 1}",
            {
                b"batch_label": f"training batch {batch + 1} of 5".encode(),
                b"labels": batch_labels,
                b"data": data,
                b"filenames": [b"x.png"] * train_per_batch,
            },
        )
        rows.append(data)
        labels += batch_labels
    test_rows, test_labels = cifar_rows(test, seed=99), [9, 0, 4][:test] + [1] * max(0, test - 3)
    _pickle(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels,
            b"data": test_rows,
            b"filenames": [b"y.png"] * test,
        },
    )
    _pickle(
        folder / "batches.meta",
        {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": train_per_batch, b"num_vis": 3072},
    )
    return {
        "train": np.concatenate(rows),
        "train_labels": np.array(labels),
        "val": test_rows,
        "val_labels": np.array(test_labels),
    }


@pytest.fixture
def cifar10_root(tmp_path):
    root = tmp_path / "cifar"
    return root, write_cifar10(root)


def test_cifar10_pixels_labels_and_splits(cifar10_root):
    root, written = cifar10_root
    train = CIFARDataset(root, "cifar10", split="train", image_size=32)
    val = CIFARDataset(root, "cifar10", split="val", image_size=32)
    assert (len(train), len(val), train.num_classes) == (10, 3, 10)
    assert train.class_names[0] == "airplane" and train.class_names[9] == "truck"
    # Item 7 is the second image of data_batch_4; (channel, row, column) sits at c*1024 + r*32 + k.
    image = train[7]["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    for c, r, k in [(0, 0, 1), (1, 2, 3), (2, 31, 0), (2, 5, 30)]:
        assert image[c, r, k] == written["train"][7, c * 1024 + r * 32 + k]
    assert torch.equal(image.flatten(), torch.from_numpy(written["train"][7]))
    assert [int(train[i]["label"]) for i in range(10)] == written["train_labels"].tolist()
    assert [int(val[i]["label"]) for i in range(3)] == [9, 0, 4]
    assert torch.equal(val[2]["image"].flatten(), torch.from_numpy(written["val"][2]))
    assert "data_batch_4, image 1" in train.describe_item(7)
    assert train.bad_files == [] and train.skipped_reads == 0
    # The batches folder itself also works as the root.
    assert len(CIFARDataset(root / "cifar-10-batches-py", "cifar10", split="val")) == 3


def test_cifar_resizes_to_image_size(cifar10_root):
    root, _ = cifar10_root
    folder = root / "cifar-10-batches-py"
    flat = np.repeat(np.array([10, 120, 250], dtype=np.uint8), 1024)[None]
    _pickle(folder / "test_batch", {b"labels": [3], b"data": flat})
    image = CIFARDataset(root, "cifar10", split="val", image_size=48)[0]["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 48)
    assert torch.equal(image[:, 17, 40], torch.tensor([10, 120, 250], dtype=torch.uint8))


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = cifar_rows(4, seed=5)
    _pickle(
        folder / "train",
        {
            b"filenames": [b"a"] * 4,
            b"batch_label": b"training batch 1 of 1",
            b"fine_labels": [99, 0, 42, 7],
            b"coarse_labels": [19, 0, 1, 2],
            b"data": data,
        },
    )
    _pickle(
        folder / "test", {b"fine_labels": [5, 6], b"coarse_labels": [3, 4], b"data": cifar_rows(2, seed=6)}
    )
    _pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
    )
    cfg = build_config(None, ["data.name=cifar100", f"data.root={tmp_path}"]).data
    train = DATASETS.build("cifar100", cfg, split="train", source="image", num_views=1, seed=0)
    val = DATASETS.build("cifar100", cfg, split="val", source="image", num_views=1, seed=0)
    assert (len(train), len(val), train.num_classes) == (4, 2, 100)
    assert [int(train[i]["label"]) for i in range(4)] == [99, 0, 42, 7]
    assert train.class_names[42] == "fine42"
    assert train[3]["image"][1, 4, 9] == data[3, 1024 + 4 * 32 + 9]


def test_cifar_errors_name_the_path(cifar10_root, tmp_path):
    root, _ = cifar10_root
    with pytest.raises(ValueError, match=r"nowhere does not exist.*cifar-10-batches-py"):
        CIFARDataset(tmp_path / "nowhere", "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"data_batch_3 is missing"):
        CIFARDataset(root, "cifar10", split="train")
    assert len(CIFARDataset(root, "cifar10", split="val")) == 3  # val does not need the train batches
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(ValueError, match=r"cannot read .*test_batch"):
        CIFARDataset(root, "cifar10", split="val")


def _py2_str(text: bytes) -> bytes:
    """A Python 2 ``str`` in a pickle (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<i", len(text)) + text


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR batch as Python 2's cPickle wrote the real files (protocol 2): str keys, the numpy array's
    buffer a str, reconstructed through numpy.core.multiarray._reconstruct."""
    count, width = data.shape
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
    dtype += b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
    array += b"(K\x01K" + bytes([count]) + b"M" + struct.pack("<H", width) + b"\x86" + dtype
    array += b"\x89" + _py2_str(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return b"\x80\x02}q\x00(" + _py2_str(b"data") + array + _py2_str(b"labels") + label_list + b"u."


def test_cifar_batch_written_by_python2(cifar10_root):
    root, _ = cifar10_root
    data = cifar_rows(2, seed=7)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(py2_batch(data, [3, 8]))
    val = CIFARDataset(root, "cifar10", split="val")
    assert [int(val[i]["label"]) for i in range(2)] == [3, 8]
    assert val[1]["image"][2, 7, 11] == data[1, 2 * 1024 + 7 * 32 + 11]


class _Foreign:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_with_foreign_globals_is_refused(cifar10_root):
    root, _ = cifar10_root
    _pickle(
        root / "cifar-10-batches-py" / "test_batch",
        {b"labels": [1], b"data": cifar_rows(1, 0), b"x": _Foreign()},
    )
    with pytest.raises(ValueError, match=r"refusing to load posix\.getcwd|refusing to load os\.getcwd"):
        CIFARDataset(root, "cifar10", split="val")


def test_only_the_image_source_is_accepted(cifar10_root):
    root, _ = cifar10_root
    cfg = build_config(None, ["data.name=cifar10", f"data.root={root}"]).data
    with pytest.raises(ValueError, match=r"dataset 'cifar10'.*view source 'object'"):
        DATASETS.build("cifar10", cfg, split="train", source="object", num_views=2, seed=0)
    with pytest.raises(ValueError, match=r"dataset 'imagefolder'.*view source 'lidar_pair'"):
        DATASETS.build(
            "imagefolder",
            build_config(None, ["data.name=imagefolder"]).data,
            split="train",
            source="lidar_pair",
            num_views=1,
            seed=0,
        )


def test_recipe_with_a_replaced_data_section(cifar10_root):
    root, _ = cifar10_root
    config = build_config("simclr_resnet18_shapes3d", [f"data={{name: cifar10, root: {root}}}"])
    assert isinstance(config.data, CIFAR10Config) and config.data.image_size == 32
    config = build_config(None, ["data.name=stl10", "data.train_split=train+unlabeled"])
    assert isinstance(config.data, STL10Config) and config.data.image_size == 96


# ----------------------------------------------------------------------------------------------------
# STL-10


def stl_bytes(count: int, pixels: dict[tuple[int, int, int, int], int]) -> bytes:
    """``count`` images in STL-10's layout; ``pixels`` maps (image, channel, row, column) to a value.
    Channels are column-major planes: the byte of (c, r, k) of image n is at n*27648 + c*9216 + k*96 + r."""
    data = bytearray(count * STL_IMAGE)
    for (n, c, r, k), value in pixels.items():
        data[n * STL_IMAGE + c * 96 * 96 + k * 96 + r] = value
    return bytes(data)


@pytest.fixture
def stl_root(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "train_X.bin").write_bytes(stl_bytes(2, {(1, 2, 5, 70): 200, (0, 0, 0, 1): 17}))
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    (folder / "test_X.bin").write_bytes(stl_bytes(3, {(2, 1, 95, 3): 99}))
    (folder / "test_y.bin").write_bytes(bytes([4, 5, 6]))
    (folder / "unlabeled_X.bin").write_bytes(stl_bytes(3, {(1, 0, 10, 20): 123}))
    (folder / "class_names.txt").write_text(
        "airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n"
    )
    return tmp_path


def test_stl10_column_major_pixels_labels_and_splits(stl_root):
    train = STL10Dataset(stl_root, "train")
    val = STL10Dataset(stl_root, "val")
    assert (len(train), len(val), train.num_classes) == (2, 3, 10)
    image = train[1]["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 96, 96)
    assert image[2, 5, 70] == 200 and image[2, 70, 5] == 0 and int(image.sum()) == 200
    assert train[0]["image"][0, 0, 1] == 17 and train[0]["image"][0, 1, 0] == 0
    assert val[2]["image"][1, 95, 3] == 99
    assert [int(train[i]["label"]) for i in range(2)] == [0, 9]  # 1..10 on disk
    assert [int(val[i]["label"]) for i in range(3)] == [3, 4, 5]
    assert train.class_names[7] == "monkey"
    small = STL10Dataset(stl_root, "train", image_size=32)[1]["image"]
    assert small.shape == (3, 32, 32) and small.dtype == torch.uint8


def test_stl10_unlabeled_options(stl_root):
    unlabeled = STL10Dataset(stl_root, "train", train_split="unlabeled")
    assert len(unlabeled) == 3 and unlabeled.num_classes == 0  # no online probe without labels
    assert [int(unlabeled[i]["label"]) for i in range(3)] == [-1, -1, -1]
    assert unlabeled[1]["image"][0, 10, 20] == 123
    both = STL10Dataset(stl_root, "train", train_split="train+unlabeled")
    assert [int(both[i]["label"]) for i in range(5)] == [0, 9, -1, -1, -1]
    assert both[1]["image"][2, 5, 70] == 200 and both[3]["image"][0, 10, 20] == 123
    assert "unlabeled_X.bin, image 1" in both.describe_item(3)
    labelled = both.labelled_split()
    assert len(labelled) == 2 and labelled.num_classes == 10
    assert STL10Dataset(stl_root, "val", train_split="unlabeled").num_classes == 10  # val stays the test set


def test_probe_features_skip_unlabelled_images(stl_root):
    from equissl.eval.features import extract_features

    config = build_config(
        None,
        [
            "data.name=stl10",
            f"data.root={stl_root}",
            "data.train_split=unlabeled",
            "data.num_workers=0",
            "augment.crop_size=8",
        ],
    )
    features, labels = extract_features(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), config, "train")
    assert features.shape == (2, 3) and labels.tolist() == [0, 9]


def test_stl10_errors_name_the_file(stl_root, tmp_path):
    folder = stl_root / "stl10_binary"
    with pytest.raises(ValueError, match=r"does not exist.*stl10_binary"):
        STL10Dataset(tmp_path / "nowhere")
    (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(ValueError, match=r"unlabeled_X\.bin is missing"):
        STL10Dataset(stl_root, "train", train_split="unlabeled")
    (folder / "train_y.bin").write_bytes(bytes([0, 3]))
    with pytest.raises(ValueError, match=r"train_y\.bin: labels outside 1\.\.10"):
        STL10Dataset(stl_root, "train")
    (folder / "train_y.bin").write_bytes(bytes([3]))
    with pytest.raises(ValueError, match=r"train_y\.bin: 1 labels for 2 images"):
        STL10Dataset(stl_root, "train")
    (folder / "test_X.bin").write_bytes(bytes(STL_IMAGE + 5))
    with pytest.raises(ValueError, match=r"test_X\.bin: .* not a whole number"):
        STL10Dataset(stl_root, "val")


# ----------------------------------------------------------------------------------------------------
# End to end: pretraining and the probe read a CIFAR-10 directory.


def test_pretrain_and_probe_on_cifar10(tmp_path):
    from equissl.config import ProbeConfig
    from equissl.eval.report import evaluate_model
    from equissl.launch.trainer import pretrain
    from equissl.runs import load_run

    root = tmp_path / "cifar"
    write_cifar10(root)
    config = build_config(
        "simclr_resnet18_shapes3d",
        [
            f"data={{name: cifar10, root: {root}, num_workers: 0}}",
            "augment.crop_size=32",
            "augment.small_crop_size=16",
            "backbone.stem=strided",
            "objective.proj_hidden_dim=64",
            "objective.proj_out_dim=32",
            "trainer.batch_size=4",
            "trainer.max_steps=2",
            "trainer.checkpoint_every=2",
            "trainer.log_every=1",
            "trainer.progress=false",
            "trainer.precision=fp32",
            f"trainer.run_dir={tmp_path}/run",
        ],
    )
    result = pretrain(config)
    assert result.status == "finished" and result.step == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("probe/acc" in r for r in rows)
    # What `equissl probe` does for the run (without the figure): both splits through the frozen backbone.
    run_config, checkpoint = load_run(tmp_path / "run")
    assert isinstance(run_config.data, CIFAR10Config)
    probe = ProbeConfig(epochs=2, weight_decays=(0.0,), knn_k=3)
    scores = evaluate_model(run_config, checkpoint, probe, ("linear", "knn"), tmp_path / "run" / "eval")
    assert set(scores) == {"linear", "knn"} and all(0 <= v <= 100 for v in scores.values())
