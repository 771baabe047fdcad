"""Every export format, loaded by its consumer's own loading code where it installs here (torchvision,
timm, onnxruntime), else checked against the consumer's exact key names and shapes (detectron2, mmdet)."""

import json
import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from equissl.cli import main
from equissl.config import build_config
from equissl.export.formats import detectron2_key, export_backbone, export_metadata
from equissl.launch.trainer import pretrain
from equissl.runs import load_backbone, load_run
from tests.conftest import TINY_DATA

RECIPE = "simclr_resnet18_shapes3d"


@pytest.fixture(scope="module")
def resnet_run(tiny_shapes3d_root, module_tmp_path):
    """A 2-step SimCLR ResNet-18 run with the detectors' 7x7 stem; returns (run_dir, trained backbone)."""
    run_dir = module_tmp_path / "run"
    overrides = [
        f"data.root={tiny_shapes3d_root}",
        *TINY_DATA,
        "augment.crop_size=32",
        "augment.small_crop_size=16",
        "backbone.stem=imagenet",
        "objective.proj_hidden_dim=64",
        "objective.proj_out_dim=32",
        "trainer.batch_size=8",
        "trainer.max_steps=2",
        "trainer.checkpoint_every=2",
        "trainer.progress=false",
        f"trainer.run_dir={run_dir}",
    ]
    pretrain(build_config(RECIPE, overrides))
    config, checkpoint = load_run(run_dir)
    return run_dir, load_backbone(config, checkpoint)


def _export(run_dir, fmt, out):
    assert main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    metadata = json.loads(out.with_name(out.name + ".json").read_text())
    assert metadata["export_format"] == fmt and metadata["objective"] == "simclr"
    assert metadata["input_size"] == [3, 32, 32] and len(metadata["config_hash"]) == 16
    assert metadata["source_checkpoint"].endswith("step-00000002")
    return metadata


def _images(n=2, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_torchvision_export_loads_into_faster_rcnn_bodies_with_equal_features(resnet_run, tmp_path):
    run_dir, trained = resnet_run
    out = tmp_path / "r18.pth"
    _export(run_dir, "torchvision", out)
    state = torch.load(out, weights_only=True)
    x = _images()
    with torch.no_grad():
        expected = trained.forward_features(x)
        # resnet18 FPN variant (trainable BN, as fine-tuned by `equissl finetune-det`)
        fpn = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d)
        fpn.body.load_state_dict(state, strict=True)
        assert torch.allclose(fpn.body.eval()(x)["3"], expected, atol=1e-5)
        # torchvision's default: FrozenBatchNorm2d (drops num_batches_tracked while loading)
        frozen = resnet_fpn_backbone(backbone_name="resnet18", weights=None)
        frozen.body.load_state_dict(state, strict=True)
        assert torch.allclose(frozen.body(x)["3"], expected, atol=1e-4)
    # ResNet-50 Faster R-CNN accepts exactly the key set and shapes of a ResNet-50 export
    body = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.body
    r50 = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    body.load_state_dict(r50, strict=True)


def test_timm_export_loads_with_create_model_for_resnet(resnet_run, tmp_path):
    run_dir, trained = resnet_run
    out = tmp_path / "r18_timm.safetensors"
    metadata = _export(run_dir, "timm", out)
    assert metadata["timm_model"] == "resnet18"
    # pretrained_cfg num_classes=0 makes timm load strictly
    model = timm.create_model(
        "resnet18",
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay={"file": str(out), "num_classes": 0},
    ).eval()
    x = _images()
    with torch.no_grad():
        assert torch.allclose(model(x), trained(x), atol=1e-5)
    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["equissl"])["timm_model"] == "resnet18"


def test_timm_export_of_the_polyphase_vit_loads_under_our_timm_name(tmp_path):
    config = build_config(
        None,
        [
            "backbone.name=poly_vit_tiny",
            "backbone.img_size=32",
            "backbone.patch_size=8",
            "backbone.embed_dim=32",
            "backbone.depth=2",
            "backbone.num_heads=2",
        ],
    )
    trained = load_backbone(config, None, seed=3)
    out = export_backbone(trained, export_metadata(config, tmp_path), tmp_path / "vit.safetensors", "timm")
    metadata = json.loads((tmp_path / "vit.safetensors.json").read_text())
    assert metadata["timm_model"] == "equissl_poly_vit_tiny"
    model = timm.create_model(
        metadata["timm_model"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(out)},
        **metadata["timm_kwargs"],
    ).eval()
    fresh = timm.create_model(metadata["timm_model"], **metadata["timm_kwargs"]).eval()
    x = _images(size=32)
    with torch.no_grad():
        assert torch.allclose(model(x), trained(x), atol=1e-5)
        assert not torch.allclose(fresh(x), trained(x), atol=1e-3)


def test_detectron2_export_has_the_converter_layout(resnet_run, tmp_path):
    run_dir, trained = resnet_run
    out = tmp_path / "r18.pkl"
    metadata = _export(run_dir, "detectron2", out)
    with open(out, "rb") as handle:
        payload = pickle.load(handle, encoding="latin1")  # how detectron2 reads .pkl
    assert payload["__author__"] == "equissl" and payload["matching_heuristics"] is True
    model = payload["model"]
    assert all(isinstance(v, np.ndarray) for v in model.values())
    # exact detectron2 names and shapes of an R18 (BasicBlock) backbone
    expected = {
        "stem.conv1.weight": (64, 3, 7, 7),
        "stem.conv1.norm.weight": (64,),
        "stem.conv1.norm.running_var": (64,),
        "res2.0.conv1.weight": (64, 64, 3, 3),
        "res2.1.conv2.norm.bias": (64,),
        "res3.0.shortcut.weight": (128, 64, 1, 1),
        "res3.0.shortcut.norm.running_mean": (128,),
        "res5.1.conv2.weight": (512, 512, 3, 3),
        "res5.0.conv1.norm.weight": (512,),
    }
    for key, shape in expected.items():
        assert model[key].shape == shape, key
    assert len(model) == 5 + 8 * 10 + 3 * 5  # stem, 8 blocks of 2 conv+norm, 3 shortcuts (weight + 4 norm)
    assert not any(
        k.startswith(("layer", "bn", "fc")) or "downsample" in k or "num_batches" in k for k in model
    )
    state = trained.export_state_dict()
    np.testing.assert_array_equal(
        model["res4.1.conv1.norm.running_mean"], state["layer3.1.bn1.running_mean"].numpy()
    )
    assert detectron2_key("layer2.0.downsample.1.weight") == "res3.0.shortcut.norm.weight"
    d2 = metadata["detectron2_config"]
    assert d2["MODEL.PIXEL_MEAN"] == [123.675, 116.28, 103.53] and d2["INPUT.FORMAT"] == "RGB"
    assert d2["MODEL.PIXEL_STD"] == [58.395, 57.12, 57.375] and d2["MODEL.RESNETS.DEPTH"] == 18
    assert (
        d2["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 64
        and payload["equissl"]["config_hash"] == metadata["config_hash"]
    )


def test_mmdet_export_has_backbone_prefixed_resnet_keys(resnet_run, tmp_path):
    run_dir, trained = resnet_run
    out = tmp_path / "r18_mmdet.pth"
    metadata = _export(run_dir, "mmdet", out)
    checkpoint = torch.load(out, weights_only=True)
    state = checkpoint["state_dict"]
    assert all(k.startswith("backbone.") for k in state)
    # mmengine's Pretrained init with prefix='backbone.' strips the prefix; what remains must be exactly
    # mmdet ResNet-18's keys (conv1, bn1, layerN.i.convK/bnK, downsample.0/1), i.e. torchvision's
    stripped = {k[len("backbone.") :]: v for k, v in state.items()}
    reference = torchvision.models.resnet18().state_dict()
    assert set(stripped) == {k for k in reference if not k.startswith("fc.")}
    exported = trained.export_state_dict()
    for key, value in stripped.items():
        assert value.shape == reference[key].shape and torch.equal(value, exported[key])
    assert "backbone.layer2.0.downsample.1.running_var" in state and "backbone.layer4.1.bn2.weight" in state
    assert checkpoint["meta"]["config_hash"] == metadata["config_hash"]
    assert metadata["mmdet_config"]["model.backbone"]["init_cfg"]["prefix"] == "backbone."


def test_onnx_export_runs_in_onnxruntime_with_equal_features(resnet_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run_dir, trained = resnet_run
    out = tmp_path / "r18.onnx"
    metadata = _export(run_dir, "onnx", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _images(n=3, size=32)  # another batch size than the export's example
    (features,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(features, trained(x).numpy(), atol=1e-4)
    assert (
        json.loads(session.get_modelmeta().custom_metadata_map["equissl"])["config_hash"]
        == metadata["config_hash"]
    )


def test_detector_formats_refuse_a_small_image_stem(tmp_path):
    from equissl.backbones.resnet import ResNet

    metadata = {"backbone": "resnet18", "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    for fmt in ("torchvision", "timm", "detectron2", "mmdet"):
        with pytest.raises(ValueError, match="imagenet"):
            export_backbone(ResNet("resnet18", stem="strided"), metadata, tmp_path / f"x.{fmt}", fmt)
