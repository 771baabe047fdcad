"""The 3DIEBench-format reader, on a minimal fake 3DIEBench tree written here."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from equissl.config import DataConfig, from_dict
from equissl.datasets.ie3d import IE3DConfig, IE3DDataset
from equissl.registry import DATASETS

SYNSETS = ("02691156", "03001627")  # two real ShapeNet synsets (airplane, chair)
VIEWS = 4


def colour(obj: int, view: int) -> tuple[int, int, int]:
    """A flat colour that identifies (object, view) after JPEG and resizing."""
    return (40 + 60 * obj, 40 + 50 * view, 200 - 30 * obj)


def latent(obj: int, view: int) -> np.ndarray:
    # float64, as 3DIEBench's generator writes them; the light phi slot encodes (object, view).
    return np.array([0.1, -0.2, 0.3, 0.5, 0.4, obj + 0.1 * view, 0.7 + 0.01 * view])


@pytest.fixture
def fake_3die(tmp_path):
    """3 train objects (labels 0, 0, 1) and 1 val object, VIEWS views of 40x40 pixels each."""
    root = tmp_path / "3DIEBench"
    objects = [
        (SYNSETS[0], "1a04e3eab45ca15dd86060f189eb133"),
        (SYNSETS[0], "1a29042e20ab6f005e9e2656aff7dd5b"),
        (SYNSETS[1], "1a6f615e8b1b5ae4dbbc9440457e303e"),
        (SYNSETS[1], "1a8bbf2994788e2743e99e0cae970928"),
    ]
    for obj, (synset, name) in enumerate(objects):
        folder = root / synset / name
        folder.mkdir(parents=True)
        for view in range(VIEWS):
            Image.new("RGB", (40, 40), colour(obj, view)).save(folder / f"image_{view}.jpg", quality=95)
            np.save(folder / f"latent_{view}.npy", latent(obj, view))
    paths = np.array([f"/{s}/{n}" for s, n in objects])
    np.save(root / "train_images.npy", paths[:3])
    np.save(root / "train_labels.npy", np.array([0, 0, 1]))
    np.save(root / "val_images.npy", paths[3:])
    np.save(root / "val_labels.npy", np.array([1]))
    return root


def mean_colour(image: torch.Tensor) -> np.ndarray:
    return image.float().mean(dim=(-2, -1)).numpy()


def test_image_mode_items(fake_3die):
    ds = IE3DDataset(fake_3die, split="train", source="image", image_size=16, views_per_object=VIEWS)
    assert len(ds) == 3 * VIEWS and ds.num_objects == 3 and ds.num_classes == 2
    assert ds.class_names == list(SYNSETS)  # no class_names.json: the synset ids
    for index in range(len(ds)):
        obj, view = ds.locate(index)
        item = ds[index]
        assert set(item) == {"image", "label", "latent"}
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
        assert item["label"].dtype == torch.int64 and int(item["label"]) == [0, 0, 1][obj]
        assert item["latent"].dtype == torch.float32 and item["latent"].shape == (7,)
        np.testing.assert_allclose(item["latent"].numpy(), latent(obj, view), rtol=1e-6)
        np.testing.assert_allclose(mean_colour(item["image"]), colour(obj, view), atol=4)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_object_mode_returns_distinct_views_of_one_object(fake_3die):
    ds = IE3DDataset(
        fake_3die, split="train", source="object", num_views=3, seed=7, image_size=20, views_per_object=VIEWS
    )
    assert len(ds) == 3
    for obj in range(3):
        item = ds[obj]
        assert item["images"].shape == (3, 3, 20, 20) and item["images"].dtype == torch.uint8
        assert item["latents"].shape == (3, 7) and item["latents"].dtype == torch.float32
        assert int(item["label"]) == [0, 0, 1][obj]
        views = np.round((item["latents"][:, 5].numpy() - obj) * 10).astype(int)
        assert len(set(views)) == 3 and set(views) <= set(range(VIEWS))  # distinct views of this object
        np.testing.assert_array_equal(views, ds.view_order(obj)[:3])
        for image, view in zip(item["images"], views):  # each image goes with its own latent
            np.testing.assert_allclose(mean_colour(image), colour(obj, view), atol=4)


def test_set_epoch_changes_views_deterministically(fake_3die):
    def views(ds, epoch):
        ds.set_epoch(epoch)
        return [tuple(ds[i]["latents"][:, 5].tolist()) for i in range(len(ds))]

    kwargs = {
        "split": "train",
        "source": "object",
        "num_views": 2,
        "seed": 3,
        "views_per_object": VIEWS,
        "image_size": 8,
    }
    first, resumed = IE3DDataset(fake_3die, **kwargs), IE3DDataset(fake_3die, **kwargs)
    epochs = [views(first, epoch) for epoch in range(4)]
    assert views(resumed, 2) == epochs[2] and views(resumed, 0) == epochs[0]  # a resume sees the same views
    assert len(set(map(tuple, epochs))) > 1  # and they change from epoch to epoch
    other_seed = IE3DDataset(fake_3die, **{**kwargs, "seed": 4})
    assert [views(other_seed, e) for e in range(4)] != epochs


def test_corrupt_jpeg_is_skipped_counted_and_replaced_deterministically(fake_3die):
    bad = fake_3die / SYNSETS[0] / "1a04e3eab45ca15dd86060f189eb133" / "image_1.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = IE3DDataset(fake_3die, split="train", source="image", image_size=16, views_per_object=VIEWS)
    with pytest.warns(RuntimeWarning, match="image_1.jpg"):
        item = ds[1]  # object 0, view 1 is corrupt: the next item (object 0, view 2) comes instead
    np.testing.assert_allclose(item["latent"].numpy(), latent(0, 2), rtol=1e-6)
    assert ds.bad_files == [str(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad: skipped silently, and counted once
        assert torch.equal(ds[1]["image"], item["image"])
    assert len(ds.bad_files) == 1

    objects = IE3DDataset(
        fake_3die, split="train", source="object", num_views=VIEWS, image_size=16, views_per_object=VIEWS
    )
    with pytest.warns(RuntimeWarning, match="image_1.jpg"):
        item = objects[0]  # object 0 lacks a 4th readable view: object 1 comes instead
    assert int(item["label"]) == 0 and np.allclose(np.floor(item["latents"][:, 5].numpy()), 1)
    objects3 = IE3DDataset(
        fake_3die, split="train", source="object", num_views=3, image_size=16, views_per_object=VIEWS, seed=1
    )
    for epoch in range(3):
        objects3.set_epoch(epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            views = np.round(objects3[0]["latents"][:, 5].numpy() * 10).astype(int)
        assert 1 not in views and len(set(views)) == 3


def test_missing_latent_counts_as_unreadable(fake_3die):
    missing = fake_3die / SYNSETS[1] / "1a8bbf2994788e2743e99e0cae970928" / "latent_3.npy"
    missing.unlink()
    ds = IE3DDataset(fake_3die, split="val", source="image", image_size=16, views_per_object=VIEWS)
    with pytest.warns(RuntimeWarning, match="latent_3.npy"):
        item = ds[3]  # the last item wraps around to the first
    np.testing.assert_allclose(item["latent"].numpy(), latent(3, 0), rtol=1e-6)
    assert ds.bad_files == [str(missing)]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (np.array([0.1, np.nan, 0.3, 0.5, 0.4, 3.0, 0.7]), "not finite"),
        (np.array([0.1, 0.2, np.inf, 0.5, 0.4, 3.0, 0.7]), "not finite"),
        (np.array([0.1, 0.2, 4.0, 0.5, 0.4, 3.0, 0.7]), r"euler_z = 4 outside \[-pi, pi\]"),
        (np.array([0.1, 0.2, 0.3, 1.5, 0.4, 3.0, 0.7]), r"floor_hue = 1.5 outside \[0, 1\]"),
        (np.array([0.1, 0.2, 0.3, 0.5, 0.4, 3.0, -0.2]), r"light_hue = -0.2 outside \[0, 1\]"),
        (np.zeros(6), r"expected 7 values, shape \(7,\), got shape \(6,\)"),
        (np.zeros((7, 2)), r"expected 7 values, shape \(7,\), got shape \(7, 2\)"),
    ],
    ids=["nan", "inf", "euler", "floor-hue", "light-hue", "short", "2d"],
)
def test_bad_latents_are_skipped_counted_and_named(fake_3die, bad, reason):
    """A latent with a NaN, an angle past pi, a hue outside [0, 1] or the wrong shape is as unreadable as a
    corrupt JPEG: skipped with a warning naming the file and the reason, counted, and replaced."""
    path = fake_3die / SYNSETS[0] / "1a04e3eab45ca15dd86060f189eb133" / "latent_1.npy"
    np.save(path, bad)
    ds = IE3DDataset(fake_3die, split="train", source="image", image_size=16, views_per_object=VIEWS)
    with pytest.warns(RuntimeWarning, match=f"latent_1.npy: .*{reason}"):
        item = ds[1]
    np.testing.assert_allclose(item["latent"].numpy(), latent(0, 2), rtol=1e-6)  # view 2 of object 0
    assert torch.isfinite(item["latent"]).all()
    assert ds.bad_files == [str(path)] and ds.skipped_reads == 1
    objects = IE3DDataset(
        fake_3die, split="train", source="object", num_views=VIEWS, image_size=16, views_per_object=VIEWS
    )
    with pytest.warns(RuntimeWarning, match="latent_1.npy"):
        item = objects[0]  # object 0 lacks a fourth valid view: the next object
    assert int(item["label"]) == 0 and torch.isfinite(item["latents"]).all()
    assert objects.bad_files == [str(path)]


def test_latents_at_the_range_edges_are_kept(fake_3die):
    """float32 rounds pi up (3.1415927 > pi): angles at +-pi as stored still count as inside."""
    path = fake_3die / SYNSETS[0] / "1a04e3eab45ca15dd86060f189eb133" / "latent_1.npy"
    edge = np.array([np.pi, -np.pi, np.float32(np.pi), 0.0, 0.4, 3.0, 1.0], dtype=np.float32)
    np.save(path, edge)
    ds = IE3DDataset(fake_3die, split="train", source="image", image_size=16, views_per_object=VIEWS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(ds[1]["latent"].numpy(), edge)
    assert ds.skipped_reads == 0


def test_missing_root_or_index_raise_value_errors_naming_the_path(fake_3die, tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nowhere")):
        IE3DDataset(tmp_path / "nowhere")
    (fake_3die / "val_labels.npy").unlink()
    with pytest.raises(ValueError, match="val_labels.npy.*integer class labels"):
        IE3DDataset(fake_3die, split="val")
    with pytest.raises(ValueError, match="split"):
        IE3DDataset(fake_3die, split="test")
    with pytest.raises(ValueError, match="num_views"):
        IE3DDataset(fake_3die, source="object", num_views=VIEWS + 1, views_per_object=VIEWS)


def test_registry_entry_index_dir_and_class_names(fake_3die, tmp_path):
    index_dir = tmp_path / "sie_data"
    index_dir.mkdir()
    for name in ("train_images.npy", "train_labels.npy", "val_images.npy", "val_labels.npy"):
        (fake_3die / name).rename(index_dir / name)
    (fake_3die / "class_names.json").write_text(json.dumps({SYNSETS[0]: "airplane", SYNSETS[1]: "chair"}))
    cfg = from_dict(
        DataConfig,
        {
            "name": "3diebench",
            "root": str(fake_3die),
            "index_dir": str(index_dir),
            "views_per_object": VIEWS,
            "image_size": 12,
        },
    )
    assert isinstance(cfg, IE3DConfig) and DATASETS.get("3diebench").config_cls is IE3DConfig
    ds = DATASETS.build("3diebench", cfg, split="val", source="object", num_views=2, seed=0)
    assert ds.class_names == ["airplane", "chair"] and ds.num_classes == 2  # classes from both splits
    assert ds[0]["images"].shape == (2, 3, 12, 12) and int(ds[0]["label"]) == 1
    every = ds.object_views(0)
    assert every["images"].shape == (VIEWS, 3, 12, 12) and every["views"].tolist() == list(range(VIEWS))
    np.testing.assert_allclose(
        every["latents"].numpy(), np.stack([latent(3, v) for v in range(VIEWS)]), rtol=1e-6
    )
    assert [p.name for p in ds.view_paths(0)] == [f"image_{v}.jpg" for v in range(VIEWS)]


def test_batches_collate_through_a_dataloader(fake_3die):
    ds = IE3DDataset(
        fake_3die, split="train", source="object", num_views=2, image_size=8, views_per_object=VIEWS
    )
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["images"].shape == (3, 2, 3, 8, 8) and batch["latents"].shape == (3, 2, 7)
    assert batch["label"].tolist() == [0, 0, 1]
