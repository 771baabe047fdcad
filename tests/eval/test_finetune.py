"""Fine-tune and low-label evaluation: the per-class labelled fraction (exact counts, deterministic), the
fine-tune on separable images, and ``equissl finetune`` end to end."""

from __future__ import annotations

import json

import torch
from torch import nn

from equissl.eval.finetune import (
    FinetuneConfig,
    Schedule,
    finetune_classifier,
    finetune_schedule,
    item_labels,
    labelled_fraction,
)
from equissl.eval.linear_standard import ViewSettings
from tests.eval.test_standard_probe import MEAN, STD, _ColourSquares


def test_labelled_fraction_is_per_class_with_hand_computed_counts():
    labels = torch.tensor([0] * 10 + [1] * 30 + [2] * 5 + [3] * 25)
    chosen = labelled_fraction(labels, 0.1, seed=0)
    # max(1, floor(0.1 * n + 1/2)): 10 -> 1, 30 -> 3, 5 -> max(1, floor(1.0)) = 1, 25 -> floor(3.0) = 3
    assert torch.bincount(labels[chosen], minlength=4).tolist() == [1, 3, 1, 3]
    assert chosen.tolist() == sorted(set(chosen.tolist()))  # sorted, no repeats
    assert torch.bincount(labels[labelled_fraction(labels, 0.01, 0)]).tolist() == [1, 1, 1, 1]  # at least one
    assert torch.bincount(labels[labelled_fraction(labels, 0.5, 0)]).tolist() == [5, 15, 3, 13]  # 2.5 -> 3
    assert labelled_fraction(labels, 1.0, 0).tolist() == list(range(70))


def test_labelled_fraction_is_deterministic_and_seeded():
    labels = torch.arange(200) % 10
    first = labelled_fraction(labels, 0.1, seed=0)
    assert torch.equal(first, labelled_fraction(labels, 0.1, seed=0))
    assert not torch.equal(first, labelled_fraction(labels, 0.1, seed=1))
    # the documented recipe: one generator seeded with the seed, classes in increasing order, randperm each
    generator = torch.Generator().manual_seed(0)
    expected = []
    for label in range(10):
        members = torch.nonzero(labels == label).flatten()
        expected.append(members[torch.randperm(20, generator=generator)[:2]])
    assert first.tolist() == sorted(torch.cat(expected).tolist())


def test_item_labels_expand_object_labels_to_views():
    class Objects(torch.utils.data.Dataset):
        labels = (3, 1)
        views_per_object = 3

        def __len__(self):
            return 6

    assert item_labels(Objects()).tolist() == [3, 3, 3, 1, 1, 1]


class _Conv(nn.Module):
    """A one-layer backbone with BatchNorm (trainable, unlike the probe's)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def test_finetune_schedule_takes_at_least_min_steps_with_hand_computed_budgets():
    cfg = FinetuneConfig()  # 20 epochs of 256, at least 200 steps, batch no smaller than 32
    # Barlow Twins' 1% ImageNet (12,811 images): 20 x 51 = 1,020 steps already, unchanged
    assert finetune_schedule(12811, cfg) == Schedule(256, 20, 1020, 1.0)
    # shapes3d at 10%: 20 x ceil(600/256) = 60 steps; batch floor(600 * 20 / 200) = 60 -> 20 x 10 steps
    assert finetune_schedule(600, cfg) == Schedule(60, 20, 200, 60 / 256)
    # 60 images: the batch stops at 32 (2 per epoch), so the epochs grow to ceil(200 / 2) = 100
    assert finetune_schedule(60, cfg) == Schedule(32, 100, 200, 32 / 256)
    # fewer images than the smallest batch: one batch of all of them per epoch
    assert finetune_schedule(10, cfg) == Schedule(10, 200, 200, 10 / 256)
    # min_steps 0: the settings as given
    assert finetune_schedule(600, FinetuneConfig(min_steps=0)) == Schedule(256, 20, 60, 1.0)


def test_finetune_learns_separable_classes_and_trains_the_backbone():
    torch.manual_seed(0)
    backbone = _Conv()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = FinetuneConfig(epochs=20, batch_size=8, lr_backbone=0.05, lr_head=0.5, min_steps=0)
    result = finetune_classifier(
        backbone, _ColourSquares(40, 0), _ColourSquares(20, 1), 4, ViewSettings(16, MEAN, STD), cfg, seed=0
    )
    assert result["top1"] == 100.0
    assert not torch.equal(backbone.conv.weight, before["conv.weight"])  # the whole network trains
    assert not torch.equal(backbone.bn.running_mean, before["bn.running_mean"])  # BatchNorm in train mode


def test_finetune_cli_reports_pretrained_and_random_on_the_labelled_fraction(
    tiny_overrides, tmp_path, capsys
):
    from equissl.cli import main
    from equissl.config import build_config
    from equissl.launch.trainer import pretrain

    pretrain(build_config(None, [*tiny_overrides, "trainer.max_steps=2"]))
    run = tmp_path / "run"
    settings = ["epochs=1", "batch_size=16", "min_steps=4", "min_batch_size=4"]
    assert main(["finetune", "--run", str(run), "--fraction", "0.25", *settings]) == 0
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "random init" in printed
    report = json.loads((run / "eval" / "finetune_fraction-0.25.json").read_text())
    assert report["evaluation"] == "finetune" and report["protocol"] == "fraction=0.25"
    # 10 classes x 2 train objects x 4 views = 8 images per class; 0.25 of 8 = 2 per class
    assert report["labelled_per_class"] == [2] * 10 and report["labelled_images"] == 20
    # 20 images x 1 epoch / 4 steps = batches of 5, learning rates x 5/16
    assert report["schedule"] == {"batch_size": 5, "epochs": 1, "steps": 4, "lr_scale": 5 / 16}
    for model in ("pretrained", "random init"):
        assert 0.0 <= report["results"][model]["top1"] <= 100.0
    assert main(["finetune", "--run", str(run), "--fraction", "0", "epochs=1"]) == 2
    assert "fraction" in capsys.readouterr().err
