"""Any torchvision classifier by builder name behind the backbone contract:
``backbone: {name: torchvision, model_name: <torchvision.models builder>, kwargs: {...}}``.

The module holds ``torchvision.models.get_model(model_name, weights=None, **kwargs)`` as ``self.model``
with its classifier (``fc``, ``classifier``, ``heads`` or ``head``, by family) replaced by
``nn.Identity()``:

- ``forward`` is torchvision's own forward without the classifier, flattened: the pooled trunk features
  the classifier would read (width ``num_features``, the classifier's input width). A consumer that loads
  the export into ``torchvision.models.<model_name>()`` with the same attribute set to ``nn.Identity()``
  computes exactly these features.
- ``forward_features`` is the trunk's last spatial map (B, C, h, w): the layer before global pooling
  (Swin's normalised map permuted to channels first; the ViT's encoder output without the class token,
  reshaped to the patch grid).
- ``export_state_dict`` / ``torchvision_state_dict`` are the model's torchvision keys, classifier absent:
  they load with ``strict=True`` into the builder's model minus its classifier.

Families: ResNet / ResNeXt / Wide ResNet, RegNet, ConvNeXt, EfficientNet (v1, v2), MobileNet v2 / v3,
MNASNet, ShuffleNet v2, DenseNet, ViT, Swin (v1, v2). Others (VGG, AlexNet, SqueezeNet, GoogLeNet,
Inception, MaxViT) fold pooling into their classifier or have auxiliary heads and are refused.
Weights are never downloaded (``weights=None``); ``pretrained_file`` loads a local state dict.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models

from equissl.backbones.timm_backbone import check_input_sides, tokens_to_map
from equissl.config import BackboneConfig
from equissl.errors import ConfigError, UserError
from equissl.registry import BACKBONES


def _resnet_map(m: models.ResNet, x: Tensor) -> Tensor:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _shufflenet_map(m: models.ShuffleNetV2, x: Tensor) -> Tensor:
    return m.conv5(m.stage4(m.stage3(m.stage2(m.maxpool(m.conv1(x))))))


def _vit_map(m: models.VisionTransformer, x: Tensor) -> Tensor:
    """The encoder's output tokens (after its final LayerNorm) without the class token, on the patch grid."""
    height, width = x.shape[-2:]
    tokens = m._process_input(x)
    tokens = torch.cat([m.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    return tokens_to_map(m.encoder(tokens), 1, height, width)


# torchvision class -> (classifier attribute, the trunk's last spatial map). Keyed by class, so every
# builder of a family (resnet18 ... wide_resnet101_2, regnet_x_400mf ... regnet_y_128gf) is covered.
FAMILIES: dict[type, tuple[str, Callable[[nn.Module, Tensor], Tensor]]] = {
    models.ResNet: ("fc", _resnet_map),
    models.RegNet: ("fc", lambda m, x: m.trunk_output(m.stem(x))),
    models.ConvNeXt: ("classifier", lambda m, x: m.features(x)),
    models.EfficientNet: ("classifier", lambda m, x: m.features(x)),
    models.MobileNetV2: ("classifier", lambda m, x: m.features(x)),
    models.MobileNetV3: ("classifier", lambda m, x: m.features(x)),
    models.MNASNet: ("classifier", lambda m, x: m.layers(x)),
    models.ShuffleNetV2: ("fc", _shufflenet_map),
    models.DenseNet: ("classifier", lambda m, x: F.relu(m.features(x))),
    models.VisionTransformer: ("heads", _vit_map),
    models.SwinTransformer: ("head", lambda m, x: m.permute(m.norm(m.features(x)))),
}

_RESERVED_KWARGS = {
    "weights": "weights are never downloaded; set backbone.pretrained_file to a local file",
    "num_classes": "a backbone has no classifier; heads belong to the objective",
}


@dataclass
class TorchvisionConfig(BackboneConfig):
    model_name: str = ""  # a torchvision.models builder, e.g. resnet50, convnext_tiny, mobilenet_v3_small
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed on to the builder
    pretrained_file: str = ""  # a local state dict (.safetensors or torch file) of the whole classifier

    tiny_input_size: ClassVar[int] = 32

    @classmethod
    def tiny(cls) -> TorchvisionConfig:
        """A seconds-fast setting for tests: MobileNet v3 small at a quarter of its width."""
        return cls(name="torchvision", model_name="mobilenet_v3_small", kwargs={"width_mult": 0.25})

    def check(self, config) -> None:
        """Name, kwargs, family and input sizes, checked before any work on the ``meta`` device."""
        check_kwargs(self.kwargs)
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise ConfigError(f"backbone.pretrained_file {self.pretrained_file!r} does not exist")
        try:
            with torch.device("meta"):
                model = build_model(self.model_name, self.kwargs)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 -- a builder that needs real values: checked when built instead
            return
        _, spatial_map = _family(model, self.model_name)
        check_input_sides(
            lambda x: spatial_map(model.eval(), x),
            sorted({config.augment.crop_size, config.data.image_size}),
            f"torchvision {self.model_name!r}",
            lambda size: f" (ViT: set backbone.kwargs.image_size={size})",
        )


def build_model(model_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``torchvision.models.<model_name>(weights=None, **kwargs)``; a refused setting is a ConfigError."""
    build = builder(model_name)
    check_kwargs(kwargs)
    try:
        return build(weights=None, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"backbone.kwargs: torchvision {model_name!r} refuses them: {error}") from None


def builder(model_name: str) -> Callable[..., nn.Module]:
    """The ``torchvision.models`` builder of ``model_name``, or a ConfigError naming the key."""
    names = models.list_models(module=models)
    if model_name not in names:
        close = difflib.get_close_matches(model_name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"backbone.model_name: torchvision has no classification model {model_name!r}{hint} "
            "(torchvision.models.list_models(module=torchvision.models) lists them)"
        )
    return models.get_model_builder(model_name)


def check_kwargs(kwargs: dict[str, Any]) -> None:
    for key, why in _RESERVED_KWARGS.items():
        if key in kwargs:
            raise ConfigError(f"backbone.kwargs.{key}: not accepted: {why}")


def _family(model: nn.Module, model_name: str) -> tuple[str, Callable[[nn.Module, Tensor], Tensor]]:
    for cls in type(model).__mro__:
        if cls in FAMILIES:
            return FAMILIES[cls]
    known = ", ".join(sorted(cls.__name__ for cls in FAMILIES))
    raise ConfigError(
        f"backbone.model_name: {model_name!r} ({type(model).__name__}) is not a supported torchvision "
        f"family (its classifier folds in pooling or it has auxiliary heads); supported: {known}"
    )


def _first_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear))


def load_pretrained_file(model: nn.Module, classifier: str, model_name: str, path: str) -> None:
    """A torchvision state dict (with or without the ``classifier`` keys) into ``model``, strictly."""
    if not Path(path).is_file():
        raise UserError(f"backbone.pretrained_file {path!r} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any unreadable file is the user's to fix
        raise UserError(f"backbone.pretrained_file {path!r} cannot be read: {error}") from None
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"backbone.pretrained_file {path!r} does not fit torchvision {model_name!r}: "
            + " ".join(str(error).split())[:400]
        ) from None


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier without its classifier (module docstring)."""

    def __init__(
        self, model_name: str, kwargs: dict[str, Any] | None = None, pretrained_file: str = ""
    ) -> None:
        super().__init__()
        self.model_name, self.kwargs = model_name, dict(kwargs or {})
        model = build_model(model_name, self.kwargs)
        self.classifier_name, self._map = _family(model, model_name)
        classifier = getattr(model, self.classifier_name)
        self.num_features = _first_linear(classifier).in_features
        setattr(model, self.classifier_name, nn.Identity())
        if pretrained_file:
            load_pretrained_file(model, self.classifier_name, model_name, pretrained_file)
        self.model = model

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> the trunk's last map (B, C, h, w), channels first."""
        return self._map(self.model, x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_features): torchvision's forward with the classifier removed."""
        return torch.flatten(self.model(x), 1)

    def export_state_dict(self) -> dict[str, Tensor]:
        """torchvision keys of the builder's model, without its classifier."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # -- what the export needs (equissl.backbones.base) -------------------------------------------------
    export_formats = ("safetensors", "torchvision", "onnx")
    export_note = ""

    def torchvision_builder(self) -> str:
        return self.model_name

    def torchvision_classifier(self) -> str:
        return self.classifier_name

    def torchvision_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def torchvision_state_dict(self) -> dict[str, Tensor]:
        return {k: v.contiguous() for k, v in self.export_state_dict().items()}


@BACKBONES.register(
    "torchvision", TorchvisionConfig, description="any torchvision classifier's trunk by builder name"
)
def build_torchvision(cfg: TorchvisionConfig) -> TorchvisionBackbone:
    return TorchvisionBackbone(cfg.model_name, cfg.kwargs, cfg.pretrained_file)
