"""The Python API the way a notebook user calls it: pretrain on a folder, load the backbone with its input
transform, probe it, export it; the same with the user's own nn.Module as the backbone."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

import equissl
from tests.helpers import write_labelled_folder

SMALL = {
    "augment": {"crop_size": 32, "small_crop_size": 16},
    "objective": {"proj_hidden_dim": 64, "proj_out_dim": 32},
    "trainer": {"max_steps": 2, "batch_size": 4, "log_every": 1, "progress": False, "precision": "fp32"},
    "probe": {"epochs": 2, "weight_decays": [0.0], "knn_k": 3},
}


@pytest.fixture(scope="module")
def folders(module_tmp_path):
    root = module_tmp_path
    photos, labelled = root / "photos", root / "labelled"
    for k in range(6):  # unlabelled, nested, mixed sizes
        path = photos / ("a" if k % 2 else "b") / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + 8 * k, 36), (40 * k, 200 - 30 * k, 90)).save(path)
    write_labelled_folder(labelled, per_class=3)
    return root, photos, labelled


def test_import_equissl_exposes_the_api_and_listings():
    assert equissl.__version__ and callable(equissl.pretrain) and callable(equissl.load_backbone)
    assert {"pretrain", "load_backbone", "probe", "export", "list_recipes"} <= set(dir(equissl))
    assert "simclr_resnet18_shapes3d" in equissl.list_recipes()
    assert equissl.list_backbones()["custom"].startswith("your own nn.Module")
    assert "simclr" in equissl.list_objectives() and "imagefolder" in equissl.list_datasets()
    with pytest.raises(AttributeError):
        equissl.no_such_function  # noqa: B018


def test_pretrain_load_probe_export_on_a_folder(folders):
    root, photos, labelled = folders
    run = equissl.pretrain(
        "simclr_resnet18_shapes3d",
        data={"name": "imagefolder", "root": str(photos), "image_size": 32, "num_workers": 0},
        out=root / "run",
        backbone={"stem": "strided"},
        optim__lr=1e-3,
        **SMALL,
    )
    assert (run.status, run.step, run.dir) == ("finished", 2, root / "run")
    assert run.config.data.labels == "auto" and run.config.optim.lr == 1e-3 and "loss" in run.metrics

    backbone = equissl.load_backbone(run)
    assert not backbone.training and backbone.transform.size == 32
    images = [Image.new("L", (50, 30), 128), Image.new("RGB", (20, 64), (255, 0, 0))]  # any mode, any size
    x = backbone.transform(images)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0, 1, 0, 0], torch.tensor((128 / 255 - 0.456) / 0.224))
    with torch.no_grad():
        features = backbone(x)
    assert features.shape == (2, 512) and torch.isfinite(features).all()

    report = equissl.probe(run, data=labelled, epochs=3)
    assert (
        set(report["results"]["pretrained"]) == {"linear", "knn", "seconds"}
        and str(labelled) in report["data"]
    )

    exported = equissl.export(run)
    assert exported == root / "run" / "export" / "backbone.safetensors"
    again = equissl.load_backbone(exported)
    with torch.no_grad():
        torch.testing.assert_close(again(x), features)
    assert again.transform == backbone.transform


class MyNet(nn.Module):
    """A user's own backbone: any module from images to a feature vector."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))

    def forward(self, x):
        return self.head(self.body(x))


def test_pretrain_with_your_own_module(folders):
    root, photos, labelled = folders
    mine = MyNet()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    run = equissl.pretrain(
        "simclr_resnet18_shapes3d",
        data=photos,  # a folder: data.name=imagefolder
        out=root / "custom",
        backbone=mine,
        data__image_size=32,
        data__num_workers=0,
        **SMALL,
    )
    assert run.status == "finished" and run.config.backbone.num_features == 10  # a dummy forward found it
    assert run.config.backbone.module.endswith("MyNet")
    assert all(torch.equal(mine.state_dict()[k], v) for k, v in before.items())  # a copy was trained

    trained = run.load_backbone()
    assert isinstance(trained.module, MyNet) and not trained.training
    assert not torch.equal(trained.module.body[0].weight, before["body.0.weight"])
    report = equissl.probe(run, data=labelled, epochs=2)
    assert "linear" in report["results"]["pretrained"]
    with pytest.raises(ValueError, match=r"your own nn.Module .*MyNet.*load_backbone\(run_dir, backbone="):
        equissl.load_backbone(run.dir)  # a path alone cannot rebuild a module
    from_folder = equissl.load_backbone(run.dir, backbone=MyNet())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(from_folder(x), trained(x))
    exported = equissl.export(run, out=root / "mine.safetensors")
    plain = MyNet()
    plain.load_state_dict(equissl.load_backbone(exported, backbone=MyNet()).module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), trained(x))


def test_a_module_that_does_not_return_features_is_refused(folders):
    _, photos, _ = folders
    with pytest.raises(ValueError, match=r"must map images .* returned \(2, 6, 15, 15\)"):
        equissl.pretrain("simclr_resnet18_shapes3d", data=photos, backbone=MyNet().body, **SMALL)
