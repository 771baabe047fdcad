"""The standard linear protocol: its views against torchvision's, 100% on separable synthetic images, a
frozen backbone whose BatchNorm statistics never move, determinism; the fast and standard reports side by
side."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from equissl.augmentations.eval_views import center_view, random_resized_view, resized_view
from equissl.errors import UserError
from equissl.eval.linear_standard import StandardProbeConfig, ViewSettings, standard_linear_probe
from equissl.eval.records import report_name, write_report

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_center_view_is_torchvisions_resize_then_center_crop():
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    view = center_view(images, 32, 0.875, MEAN, STD)  # resize to round(32 / 0.875) = 37, crop 32
    expected = TF.center_crop(TF.resize(images, [37], antialias=True), [32])
    expected = TF.normalize(expected, MEAN, STD)
    assert view.shape == (2, 3, 32, 32)
    torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)
    # crop fraction 1 of a square image: the whole image resized
    torch.testing.assert_close(center_view(images, 32, 1.0, MEAN, STD), resized_view(images, 32, MEAN, STD))


def test_random_resized_view_with_the_whole_box_is_the_resized_image_flipped_as_drawn():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    same = random_resized_view(images, 16, (1.0, 1.0), (1.0, 1.0), 0.0, MEAN, STD)
    torch.testing.assert_close(same, TF.normalize(images, MEAN, STD))
    flipped = random_resized_view(images, 16, (1.0, 1.0), (1.0, 1.0), 1.0, MEAN, STD)
    torch.testing.assert_close(flipped, TF.normalize(images.flip(-1), MEAN, STD))


class _MeanColour(nn.Module):
    """A parameter-free 'backbone': the mean of each channel (B, 3)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class _ColourSquares(torch.utils.data.Dataset):
    """Class c: a 16 px image of colour COLOURS[c] with a little noise; linearly separable by mean colour."""

    COLOURS = torch.tensor(
        [[230, 20, 20], [20, 230, 20], [20, 20, 230], [128, 128, 128]], dtype=torch.float32
    )

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(count) % 4
        noise = torch.randint(-10, 11, (count, 3, 16, 16), generator=generator)
        self.images = (self.COLOURS[self.labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
        self.num_classes = 4

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": self.labels[index]}


def test_standard_probe_reaches_100_percent_on_separable_classes_and_is_deterministic():
    cfg = StandardProbeConfig(epochs=15, batch_size=8, lr=0.5)
    view = ViewSettings(16, MEAN, STD)
    train, val = _ColourSquares(40, seed=0), _ColourSquares(20, seed=1)
    result = standard_linear_probe(_MeanColour(), train, val, 4, view, cfg, seed=0)
    assert result.top1 == 100.0 and result.train_top1 == 100.0
    assert len(result.epoch_loss) == 15 and result.epoch_loss[-1] < result.epoch_loss[0]
    again = standard_linear_probe(_MeanColour(), train, val, 4, view, cfg, seed=0)
    assert again.epoch_loss == result.epoch_loss
    streamed = standard_linear_probe(  # read every epoch instead of held in memory: the same numbers
        _MeanColour(),
        train,
        val,
        4,
        view,
        StandardProbeConfig(epochs=15, batch_size=8, lr=0.5, image_cache_mib=0),
    )
    assert streamed.epoch_loss == result.epoch_loss


def test_standard_probe_keeps_the_backbone_frozen_with_its_batchnorm_statistics(tiny_backbone):
    tiny_backbone.train()
    tiny_backbone.bn.running_mean.fill_(0.3)  # statistics a train-mode forward would move
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    train, val = _ColourSquares(16, seed=0), _ColourSquares(8, seed=1)
    cfg = StandardProbeConfig(epochs=2, batch_size=8)
    standard_linear_probe(tiny_backbone, train, val, 4, ViewSettings(16, MEAN, STD), cfg, seed=0)
    for key, value in tiny_backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_reports_are_named_by_protocol_and_never_replace_another_protocols(tmp_path):
    assert report_name("probe", "fast") == "probe_fast.json"
    assert report_name("probe", "standard") == "probe_standard.json"
    assert report_name("finetune", "fraction=0.1") == "finetune_fraction-0.1.json"
    assert report_name("knn", "fast") == "knn.json"
    assert report_name("equivariance", "sie") == "equivariance.json"
    assert report_name("detection", "shapes3d_det") == "detection.json"
    assert report_name("detection", "coco:/data/ann.json") == "detection_coco-data-ann.json.json"
    fast = write_report(tmp_path, {"evaluation": "probe", "protocol": "fast", "results": {"a": 1}})
    write_report(tmp_path, {"evaluation": "probe", "protocol": "standard", "results": {"a": 2}})
    assert json.loads(fast.read_text())["results"] == {"a": 1}
    write_report(
        tmp_path, {"evaluation": "probe", "protocol": "fast", "results": {"a": 3}}
    )  # its own: updated
    assert json.loads(fast.read_text())["results"] == {"a": 3}
    (tmp_path / "knn.json").write_text(json.dumps({"evaluation": "probe", "protocol": "other"}))
    with pytest.raises(UserError, match="holds another result"):
        write_report(tmp_path, {"evaluation": "knn", "protocol": "fast", "results": {}})


def test_probe_cli_standard_protocol_writes_its_own_report_beside_the_fast_one(
    tiny_overrides, tmp_path, capsys
):
    from equissl.cli import main
    from equissl.config import build_config
    from equissl.launch.trainer import pretrain

    pretrain(build_config(None, [*tiny_overrides, "trainer.max_steps=2"]))
    run = tmp_path / "run"
    assert main(["probe", "--run", str(run), "probe.epochs=2"]) == 0
    fast = (run / "eval" / "probe_fast.json").read_text()
    assert (
        main(["probe", "--run", str(run), "--protocol", "standard", "probe.epochs=2", "probe.batch_size=16"])
        == 0
    )
    assert "standard protocol" in capsys.readouterr().out
    assert (run / "eval" / "probe_fast.json").read_text() == fast  # the fast result is kept
    report = json.loads((run / "eval" / "probe_standard.json").read_text())
    assert report["evaluation"] == "probe" and report["protocol"] == "standard"
    assert report["settings"]["epochs"] == 2 and report["settings"]["lr"] == 0.1
    assert len(report["checkpoint_sha256"]) == 64
    assert 0.0 <= report["results"]["pretrained"]["linear"] <= 100.0
    assert (run / "eval" / "probe_standard.png").is_file()
    assert json.loads(fast)["protocol"] == "fast"
    assert main(["probe", "--run", str(run), "--protocol", "standard", "probe.weight_decays=[0]"]) == 2
    assert "probe.weight_decays" in capsys.readouterr().err  # a fast-protocol key, refused by name
