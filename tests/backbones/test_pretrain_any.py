"""timm and torchvision backbones (bare, frame-averaged, canonicalized) through the whole platform: every
image objective trains with them, and a SimCLR run pretrains, probes and exports through the command
line, each export loading into its consumer with ``strict=True`` and giving the trained features."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file

from equissl.cli import main
from equissl.config import build_config
from equissl.launch.trainer import pretrain
from equissl.recipes import resolve_recipe
from equissl.runs import load_backbone, load_run
from tests.test_recipes import tiny_data

RECIPE = "simclr_resnet18_shapes3d"
CONVNEXT = "name: timm, model_name: test_convnext"
VIT = "name: timm, model_name: test_vit, kwargs: {dynamic_img_size: true}"

# One recipe per image objective, each with a timm or torchvision backbone made symmetric one way or another.
OBJECTIVE_BACKBONES = {
    "simclr_resnet18_shapes3d": f"{{{CONVNEXT}, frame: c4}}",
    "vicreg_resnet18_shapes3d": "{name: torchvision, model_name: mobilenet_v3_small, kwargs: {width_mult: 0.25}, "
    "canonicalizer: c4, canonicalizer_width: 4, canonicalizer_prior: 1.0}",
    "essl_resnet18_shapes3d": f"{{{VIT}, canonicalizer: c8, canonicalizer_width: 4}}",
    "sie_resnet18_shapes3d": "{name: timm, model_name: test_efficientnet, frame: d4}",  # 256 features
    "care_resnet18_shapes3d": "{name: timm, model_name: test_resnet, kwargs: {zero_init_last: false}, "
    "canonicalizer: d4, canonicalizer_width: 4}",
    "seqjepa_resnet18_shapes3d": f"{{{CONVNEXT}, canonicalizer: c4, canonicalizer_width: 4}}",
    "equicaps_resnet18_shapes3d": f"{{{VIT}, frame: c4}}",
}


def _without_resnet_keys(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("backbone.")]


@pytest.mark.parametrize("recipe", sorted(OBJECTIVE_BACKBONES))
def test_every_image_objective_trains_with_a_symmetrized_timm_or_torchvision_backbone(
    recipe, tiny_shapes3d_root, tmp_path
):
    path = resolve_recipe(recipe)
    overrides = [
        *_without_resnet_keys(tiny_data(path, tiny_shapes3d_root, None)),
        f"backbone={OBJECTIVE_BACKBONES[recipe]}",
        *(["objective.equi_dim=64"] if recipe.startswith("sie") else []),  # of the backbone's 256 features
        "trainer.max_steps=1",
        "trainer.progress=false",
        "trainer.precision=fp32",
        f"trainer.run_dir={tmp_path}/run",
    ]
    result = pretrain(build_config(path, overrides))
    assert result.status == "finished" and math.isfinite(result.last_metrics["loss"])
    config, checkpoint = load_run(tmp_path / "run")
    load_backbone(config, checkpoint)  # the wrapped backbone's keys load back strictly
    if "canonicalizer" in OBJECTIVE_BACKBONES[recipe]:
        assert 0.0 <= result.last_metrics["canonicalizer/identity"] <= 1.0


RUNS = {
    "timm-vit": ("{name: timm, model_name: test_vit, kwargs: {img_size: 32}}", "timm"),
    "torchvision-mobilenet_v3_small": (
        "{name: torchvision, model_name: mobilenet_v3_small, kwargs: {width_mult: 0.25}}",
        "torchvision",
    ),
    "timm-convnext-frame-c4": (f"{{{CONVNEXT}, frame: c4}}", "timm"),
}


def _consumer(fmt: str, metadata: dict, out: Path) -> torch.nn.Module:
    """The export loaded by its consumer's own code, with ``strict=True``."""
    if fmt == "timm":
        model = timm.create_model(metadata["timm_model"], num_classes=0, **metadata["timm_kwargs"])
        model.load_state_dict(load_file(str(out)), strict=True)
        return model.eval()
    model = getattr(torchvision.models, metadata["torchvision_model"])(**metadata["torchvision_kwargs"])
    setattr(model, metadata["torchvision_classifier"], torch.nn.Identity())
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    return model.eval()


@pytest.mark.parametrize("case", list(RUNS))
def test_pretrain_probe_and_export_through_the_command_line(case, tiny_overrides, tmp_path, capsys):
    backbone, fmt = RUNS[case]
    run = tmp_path / "run"
    overrides = [*_without_resnet_keys(tiny_overrides), f"backbone={backbone}", "trainer.max_steps=2"]
    assert main(["pretrain", "--config", RECIPE, *overrides]) == 0
    assert main(["probe", "--run", str(run), "probe.epochs=2", "probe.weight_decays=[0.0]"]) == 0
    assert "linear" in capsys.readouterr().out
    config, checkpoint = load_run(run)
    trained = load_backbone(config, checkpoint)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained(x)

    out = tmp_path / f"backbone.{fmt}"
    assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out)]) == 0
    metadata = json.loads(Path(f"{out}.json").read_text())
    consumer = _consumer(fmt, metadata, out)
    inner = getattr(trained, "backbone", trained)  # a symmetrized run exports its inner backbone
    with torch.no_grad():
        assert torch.allclose(torch.flatten(consumer(x), 1), inner(x), atol=1e-5)
    if inner is not trained:
        assert metadata["symmetry"]["kind"] == "frame_averaging" and metadata["symmetry"]["group"] == "c4"

    ort = pytest.importorskip("onnxruntime")
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "b.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5 * float(expected.abs().max()))
