"""The dataset and view-maker contracts, checked for every registered entry (timm ``test_models.py`` style).

Each registered dataset is built from small files in its real format (written here or by the fixtures of
``tests/conftest.py``) for every view source it serves, and each item is checked against what its source
promises (:mod:`equissl.augmentations.views`, :mod:`equissl.augmentations.points`). A dataset registered
without an entry in ``SOURCES`` fails :func:`test_every_registered_dataset_has_a_contract_case`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from equissl.build import build_dataset, build_view_maker
from equissl.config import build_config
from equissl.datasets.lidar import write_calib, write_kitti_poses, write_velodyne
from equissl.datasets.lidar_sim.writer import VELO_TO_CAM
from equissl.registry import DATASETS, VIEW_MAKERS
from equissl.types import Views, ViewSpec
from tests.conftest import TINY_DATA, tiny_sim_overrides
from tests.datasets.test_images import _pickle, cifar_rows, stl_bytes, write_cifar10

# The view sources each dataset serves (the first is the one the contract builds views of).
SOURCES = {
    "shapes3d": ("image", "object"),
    "3diebench": ("object", "image"),
    "cifar10": ("image",),
    "cifar100": ("image",),
    "stl10": ("image",),
    "imagefolder": ("image",),
    "lidar_sim": ("lidar_pair",),
    "kitti_odometry": ("lidar_pair",),
}
IMAGE = 16


def write_cifar100(root) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(
        folder / "train", {b"fine_labels": [3, 1, 4, 1], b"coarse_labels": [0] * 4, b"data": cifar_rows(4, 1)}
    )
    _pickle(folder / "test", {b"fine_labels": [5, 9], b"coarse_labels": [0] * 2, b"data": cifar_rows(2, 2)})
    names = {b"fine_label_names": [b"f"] * 100, b"coarse_label_names": [b"c"] * 20}
    _pickle(folder / "meta", names)


def write_stl10(root) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, count in (("train", 4), ("test", 2)):
        (folder / f"{split}_X.bin").write_bytes(stl_bytes(count, {(0, 0, 1, 2): 7}))
        (folder / f"{split}_y.bin").write_bytes(bytes(range(1, count + 1)))


def write_folder(root) -> None:
    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        for k, name in enumerate(classes):
            for i in range(2):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20 + 4 * i, 12), (40 * k, 30 * i, 90)).save(path)


def write_kitti(root) -> None:
    rng = np.random.default_rng(0)
    for name in ("00", "08"):
        folder = root / "sequences" / name
        for k in range(3):
            cloud = np.concatenate([rng.uniform(-20, 20, (60, 3)), rng.uniform(0, 1, (60, 1))], 1)
            write_velodyne(folder / "velodyne" / f"{k:06d}.bin", cloud.astype(np.float32))
        write_calib(folder / "calib.txt", VELO_TO_CAM)
        poses = np.stack([np.eye(4)] * 3)
        poses[:, 0, 3] = np.arange(3) * 1.5
        write_kitti_poses(root / "poses" / f"{name}.txt", VELO_TO_CAM @ poses @ np.linalg.inv(VELO_TO_CAM))


@pytest.fixture
def dataset_overrides(request, tmp_path, tiny_shapes3d_root, tiny_sim):
    """``data.*`` overrides that read a tiny dataset of the entry ``request.param`` in its real format."""
    name, common = request.param, ["data.num_workers=0", f"data.image_size={IMAGE}"]
    if name == "shapes3d":
        return [f"data.root={tiny_shapes3d_root}", *TINY_DATA, *common]
    if name == "3diebench":
        return ["data.name=3diebench", f"data.root={tiny_shapes3d_root}", "data.views_per_object=4", *common]
    if name == "lidar_sim":
        return ["data.name=lidar_sim", *tiny_sim_overrides(*tiny_sim)]
    writers = {
        "cifar10": write_cifar10,
        "cifar100": write_cifar100,
        "stl10": write_stl10,
        "imagefolder": write_folder,
        "kitti_odometry": write_kitti,
    }
    writers[name](tmp_path)
    extra = {
        "stl10": ["data.train_split=train"],
        "kitti_odometry": ['data.train_sequences=["00"]', 'data.val_sequences=["08"]'],
    }
    return [f"data.name={name}", f"data.root={tmp_path}", *common, *extra.get(name, [])]


def test_every_registered_dataset_has_a_contract_case():
    assert set(SOURCES) == set(DATASETS.names())
    embedded = {entry.name for entry in DATASETS.entries(embedded=True)}
    assert embedded == {"shapes3d", "lidar_sim"}
    for entry in DATASETS.entries():
        assert entry.meta["description"], entry.name
        if entry.name in embedded:
            assert entry.meta["source"] == SOURCES[entry.name][0]


def check_item(item: dict, source: str, num_views: int) -> None:
    if source == "image":
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, IMAGE, IMAGE)
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    elif source == "object":
        assert item["images"].dtype == torch.uint8 and item["images"].shape == (num_views, 3, IMAGE, IMAGE)
        assert item["latents"].shape == (num_views, 7) and torch.isfinite(item["latents"]).all()
    else:
        assert item["points"].ndim == 2 and item["points"].shape[1] >= 3
        assert item["flow"].shape == (item["points"].shape[0], 3)
        assert item["relative_pose"].shape == (4, 4)


@pytest.mark.parametrize("dataset_overrides", list(SOURCES), indirect=True, ids=list(SOURCES))
def test_dataset_contract(dataset_overrides):
    config = build_config(None, dataset_overrides)
    for source in SOURCES[config.data.name]:
        num_views = 2 if source != "image" else 1
        for split in ("train", "val"):
            dataset = build_dataset(config, split, source=source, num_views=num_views, seed=0)
            assert len(dataset) > 0, (split, source)
            check_item(dataset[0], source, num_views)
            assert dataset.skipped_reads == 0 and list(dataset.bad_files) == []
            assert isinstance(dataset.describe_item(0), str) and dataset.describe_item(0)
            assert isinstance(dataset.num_classes, int) and dataset.num_classes >= 0


@pytest.mark.parametrize("dataset_overrides", list(SOURCES), indirect=True, ids=list(SOURCES))
def test_view_maker_contract(dataset_overrides):
    """Every registered view maker, fed a real batch: the views its spec asks for, their parameters,
    finite values, and the same views again from the same generator seed."""
    config = build_config(
        None, [*dataset_overrides, f"augment.crop_size={IMAGE}", "augment.small_crop_size=8"]
    )
    source = SOURCES[config.data.name][0]
    assert source in VIEW_MAKERS.names()
    spec = ViewSpec(source=source, num_views=2, num_small=1 if source == "image" else 0)
    dataset = build_dataset(config, "train", source=source, num_views=2, seed=0)
    collate = getattr(dataset, "collate_fn", None) or torch.utils.data.default_collate
    batch = collate([dataset[i] for i in range(2)])
    maker = build_view_maker(config, spec)
    views = maker(batch, torch.Generator().manual_seed(0))
    again = maker(batch, torch.Generator().manual_seed(0))
    assert isinstance(views, Views) and views.batch_size == 2
    inputs, repeat = (views.images, again.images) if views.images else (views.points, again.points)
    assert len(inputs) >= spec.num_views and len(views.params) == len(inputs)
    assert len(views.small) == spec.num_small == len(views.small_params)
    for view, same in zip(inputs, repeat):
        assert torch.isfinite(view[~torch.isnan(view)]).all() and torch.equal(
            view.nan_to_num(), same.nan_to_num()
        )


def test_view_makers_are_registered_for_every_source():
    assert {"image", "object", "lidar_pair"} <= set(VIEW_MAKERS.names())
