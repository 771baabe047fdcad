import json

import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from equissl.cli import main
from equissl.config import build_config
from equissl.launch.trainer import pretrain
from equissl.runs import load_backbone, load_run

RECIPE = "simclr_resnet18_shapes3d"


def test_exported_backbone_loads_into_torchvision_strict_and_gives_the_same_features(
    tiny_overrides, tmp_path
):
    overrides = [*tiny_overrides, "backbone.stem=imagenet", "trainer.max_steps=2"]
    pretrain(build_config(RECIPE, overrides))
    out = tmp_path / "backbone.safetensors"
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(out)]) == 0

    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()  # fc excluded: the export holds the backbone only
    resnet.load_state_dict(load_file(str(out)), strict=True)
    config, checkpoint = load_run(tmp_path / "run")
    trained = load_backbone(config, checkpoint)
    resnet.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(resnet(x), trained(x), atol=1e-6)
        # and the weights really are the trained ones, not a fresh init
        assert not torch.allclose(
            torchvision.models.resnet18(num_classes=1).conv1.weight, resnet.conv1.weight
        )

    metadata = json.loads((tmp_path / "backbone.safetensors.json").read_text())
    assert metadata["input_size"] == [3, 32, 32]
    assert metadata["normalization"]["mean"] == list(config.augment.mean)
    assert metadata["objective"] == "simclr" and metadata["config"]["trainer"]["max_steps"] == 2
    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["equissl"]) == metadata


def test_probe_cli_reports_pretrained_and_random(tiny_overrides, tmp_path, capsys):
    pretrain(build_config(RECIPE, [*tiny_overrides, "trainer.max_steps=2"]))
    assert main(["probe", "--run", str(tmp_path / "run"), "--compare-random", "probe.epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "random init" in printed
    report = json.loads((tmp_path / "run" / "eval" / "probe_fast.json").read_text())
    for model in ("pretrained", "random init"):
        assert 0.0 <= report["results"][model]["linear"] <= 100.0
    assert (tmp_path / "run" / "eval" / "probe_fast.png").stat().st_size > 10_000


def test_eval_of_a_run_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["probe", "--run", str(tmp_path / "nothing")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_probe_of_an_essl_run_reports_rotation_accuracy(tiny_overrides, tmp_path, capsys):
    overrides = [*tiny_overrides, "objective.rotation_hidden_dims=[32]", "trainer.max_steps=2"]
    pretrain(build_config("essl_resnet18_shapes3d", overrides))
    assert main(["probe", "--run", str(tmp_path / "run"), "probe.epochs=2"]) == 0
    assert "rotation_acc (val, whole image at 16 px)" in capsys.readouterr().out  # the small-crop size
    report = json.loads((tmp_path / "run" / "eval" / "probe_fast.json").read_text())
    accuracy = report["objective_metrics_val"]["rotation_acc"]
    assert 0.0 <= accuracy <= 100.0
    assert abs(accuracy * 160 / 100 - round(accuracy * 160 / 100)) < 1e-6  # 40 val images x 4 rotations
