"""timm and torchvision models by name behind the backbone contract, over a handful of families each.

For every case: forward in train and eval mode (pooled (B, num_features), map (B, C, h, w), finite),
every parameter gets a gradient, and the export loads into the consumer's own model -- ``timm.create_model``
or ``torchvision.models.<name>()`` minus its classifier -- with ``strict=True`` and gives the same
features. Tiny sizes (32 px inputs, timm's ``test_*`` models) keep this to seconds.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from equissl.backbones.timm_backbone import TimmBackbone
from equissl.backbones.torchvision_backbone import TorchvisionBackbone
from equissl.errors import UserError
from equissl.export.formats import export_backbone

SIZE, BATCH = 32, 2
TIMM = [
    ("test_convnext", {}),  # ConvNeXt
    ("test_vit", {"img_size": SIZE}),  # ViT: tokens reshaped to the patch grid
    ("test_efficientnet", {}),  # EfficientNet
    ("mobilenetv3_small_050", {}),  # MobileNet v3: conv_head widens the pooled features
    ("regnetx_002", {"zero_init_last": False}),  # RegNet (zero-initialised last BN: no gradient at init)
    ("test_mambaout", {}),  # a channels-last (NHWC) map
]
# Builders whose models are small; ConvNeXt, Swin and ViT builders have fixed (large) sizes, so their
# families are checked on tiny instances of the same classes below.
TORCHVISION = [
    ("resnet18", {}),
    ("mobilenet_v3_small", {"width_mult": 0.25}),
    ("regnet_x_400mf", {}),
    ("efficientnet_b0", {}),
]
CASES = [("timm", *case) for case in TIMM] + [("torchvision", *case) for case in TORCHVISION]
IDS = [f"{library}-{name}" for library, name, _ in CASES]


@functools.cache
def build(library: str, name: str, kwargs_items: tuple) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    cls = TimmBackbone if library == "timm" else TorchvisionBackbone
    model = cls(name, dict(kwargs_items))
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return model, x


def _case(library, name, kwargs):
    return build(library, name, tuple(sorted(kwargs.items())))


def _trained_copy(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` moved off its initialisation: BatchNorm statistics from a train-mode pass, weights
    nudged."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        model(x)
        generator = torch.Generator().manual_seed(2)
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(("library", "name", "kwargs"), CASES, ids=IDS)
def test_contract_forward_and_gradients(library, name, kwargs):
    model, x = _case(library, name, kwargs)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            pooled, fmap = model(x), model.forward_features(x)
        assert pooled.shape == (BATCH, model.num_features)
        assert fmap.ndim == 4 and fmap.shape[0] == BATCH and fmap.shape[-1] == fmap.shape[-2], fmap.shape
        assert torch.isfinite(pooled).all() and torch.isfinite(fmap).all()
    model.train().zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("name", "kwargs"), TIMM, ids=[name for name, _ in TIMM])
def test_timm_export_loads_strictly_into_create_model(name, kwargs, tmp_path):
    model, x = _case("timm", name, kwargs)
    trained = _trained_copy(model, x)
    out = export_backbone(trained, {"backbone": "timm"}, tmp_path / "b.safetensors", "timm")
    metadata = json.loads((tmp_path / "b.safetensors.json").read_text())
    assert (metadata["timm_model"], metadata["timm_kwargs"]) == (name, kwargs)
    consumer = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    consumer.load_state_dict(load_file(str(out)), strict=True)
    # and through timm's own pretrained loading, as the metadata's load line says
    loaded = timm.create_model(
        name,
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay={"file": str(out), "num_classes": 0},
        **kwargs,
    )
    with torch.no_grad():
        expected = trained(x)
        assert torch.allclose(consumer.eval()(x), expected, atol=1e-5)
        assert torch.allclose(loaded.eval()(x), expected, atol=1e-5)
        fresh = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
        assert not torch.allclose(fresh(x), expected, atol=1e-3)  # the weights really travelled


@pytest.mark.parametrize(("name", "kwargs"), TORCHVISION, ids=[name for name, _ in TORCHVISION])
def test_torchvision_export_loads_strictly_into_the_builder_minus_its_classifier(name, kwargs, tmp_path):
    model, x = _case("torchvision", name, kwargs)
    trained = _trained_copy(model, x)
    out = export_backbone(trained, {"backbone": "torchvision"}, tmp_path / "b.pth", "torchvision")
    metadata = json.loads((tmp_path / "b.pth.json").read_text())
    classifier = metadata["torchvision_classifier"]
    assert (
        metadata["torchvision_model"] == name
        and f"{classifier} = nn.Identity()" in metadata["consumer"]["load"]
    )
    consumer = getattr(torchvision.models, name)(**kwargs)
    setattr(consumer, classifier, torch.nn.Identity())
    consumer.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.allclose(torch.flatten(consumer.eval()(x), 1), trained(x), atol=1e-5)


def test_onnx_exports_run_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    for library, name, kwargs in (("timm", "test_vit", {"img_size": SIZE}), ("torchvision", "resnet18", {})):
        model, _ = _case(library, name, kwargs)
        metadata = {"backbone": library, "input_size": [3, SIZE, SIZE]}
        out = export_backbone(model.eval(), metadata, tmp_path / f"{name}.onnx", "onnx")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        x = torch.randn(3, 3, SIZE, SIZE)
        (features,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = model(x)
        assert (torch.from_numpy(features) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_token_models_give_their_patch_grid():
    model, x = _case("timm", "test_vit", {"img_size": SIZE})
    with torch.no_grad():
        tokens = model.model.forward_features(x)
        fmap = model.forward_features(x)
    prefix = model.num_prefix_tokens
    grid = SIZE // model.model.patch_embed.patch_size[0]
    assert prefix >= 1 and fmap.shape == (BATCH, tokens.shape[-1], grid, grid)
    # token (row, column) -> map[:, :, row, column]: the patch at row 1, column 0 is token prefix + grid
    assert torch.equal(fmap[:, :, 1, 0], tokens[:, prefix + grid])


def test_pretrained_file_loads_timm_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(5)
    source = timm.create_model("test_convnext", pretrained=False)  # with its 1000-class head, as hub files
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(6)
    model = TimmBackbone("test_convnext", pretrained_file=str(path)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(
            model(x), source.eval().forward_head(source.forward_features(x), pre_logits=True)
        )
    torch.save(source.state_dict(), tmp_path / "weights.pth")  # a torch file, read with weights_only=True
    assert torch.equal(
        TimmBackbone("test_convnext", pretrained_file=str(tmp_path / "weights.pth")).model.stem[0].weight,
        source.stem[0].weight,
    )
    with pytest.raises(UserError, match="missing.pth"):
        TimmBackbone("test_convnext", pretrained_file=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="does not fit"):
        TimmBackbone("test_vit", pretrained_file=str(path))


def test_pretrained_file_loads_torchvision_weights_strictly(tmp_path):
    torch.manual_seed(5)
    source = torchvision.models.mobilenet_v3_small(width_mult=0.25).eval()
    torch.save(source.state_dict(), tmp_path / "mnv3.pth")  # the whole classifier, as torchvision's files
    model = TorchvisionBackbone("mobilenet_v3_small", {"width_mult": 0.25}, str(tmp_path / "mnv3.pth")).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = torch.flatten(source.avgpool(source.features(x)), 1)
        assert torch.allclose(model(x), expected, atol=1e-6)
    with pytest.raises(UserError, match="does not fit"):
        TorchvisionBackbone("mobilenet_v3_small", {"width_mult": 0.5}, str(tmp_path / "mnv3.pth"))


def _tiny_family_members() -> list[torch.nn.Module]:
    from torchvision.models.convnext import CNBlockConfig

    return [
        torchvision.models.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]),
        torchvision.models.SwinTransformer([2, 2], 8, [1, 1], [2, 2], [2, 2]),
        torchvision.models.VisionTransformer(SIZE, 8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32),
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["ConvNeXt", "Swin", "ViT"])
def test_torchvision_family_maps_and_pooled_features_on_tiny_members(index, monkeypatch):
    """The ConvNeXt, Swin and ViT families through the builder path, with the builder returning a tiny
    member of the family: map (B, C, h, w), pooled = the classifier's input, every parameter trained."""
    member = _tiny_family_members()[index]
    classifier = {0: "classifier", 1: "head", 2: "heads"}[index]
    inputs = {}  # the classifier's input, read by a hook on the original model
    getattr(member, classifier).register_forward_hook(lambda m, args, out: inputs.update(x=args[0]))
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        member.eval()(x)
    monkeypatch.setattr(
        "equissl.backbones.torchvision_backbone.builder", lambda name: lambda weights=None, **kw: member
    )
    model = TorchvisionBackbone(f"tiny_{classifier}").eval()
    with torch.no_grad():
        pooled, fmap = model(x), model.forward_features(x)
    assert torch.allclose(pooled, torch.flatten(inputs["x"], 1), atol=1e-6)
    assert pooled.shape == (BATCH, model.num_features) and fmap.ndim == 4 and fmap.shape[-1] == fmap.shape[-2]
    model.train().zero_grad(set_to_none=True)
    (model(x) * torch.randn(BATCH, model.num_features)).sum().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]


@pytest.mark.parametrize(
    ("backbone", "hint"),
    [
        ("{name: timm, model_name: vit_tiny_patch16_224}", "set backbone.kwargs.img_size=64"),
        ("{name: torchvision, model_name: vit_b_16}", "(ViT: set backbone.kwargs.image_size=64)"),
    ],
)
def test_a_model_that_cannot_take_the_crop_size_is_refused_before_work_with_the_fix(backbone, hint):
    """Checked on the meta device while the config is built: the model, the side and how to fix it."""
    from equissl.config import build_config
    from equissl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot take 64x64 inputs") as error:
        build_config("simclr_resnet18_shapes3d", [f"backbone={backbone}"])
    assert str(error.value).startswith("backbone: ") and hint in str(error.value)
