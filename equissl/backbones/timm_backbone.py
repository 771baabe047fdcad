"""Any timm model by name behind the backbone contract: ``backbone: {name: timm, model_name: ..., kwargs: {...}}``.

- The model is ``timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)``: never a
  download. ``pretrained_file`` loads local weights (safetensors, or a torch file read with
  ``weights_only=True``) through the model family's own ``checkpoint_filter_fn`` (e.g. a ViT's position
  embedding resampled to ``img_size``); the pretrained classifier is dropped and every other key must fit.
- ``forward`` is timm's ``forward_head(forward_features(x), pre_logits=True)``, of width ``num_features``
  (timm's ``head_hidden_size`` where the head widens the features, e.g. MobileNetV3's ``conv_head``).
- ``forward_features`` is a spatial map (B, C, h, w) whatever the family: channels-last maps (Swin,
  MambaOut) are permuted, and token models (ViT, DeiT, EVA, ...) lose their prefix tokens (class,
  registers) and are reshaped to their patch grid, so objectives that need a map (EquiCaps) work.
- ``export_state_dict`` has timm's own keys: the ``timm`` export loads with ``timm.create_model(model_name,
  num_classes=0, **kwargs).load_state_dict(..., strict=True)``.

The module holds the timm model as ``self.model``; checkpoints therefore store ``model.<timm key>``.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from equissl.config import BackboneConfig
from equissl.errors import ConfigError, UserError
from equissl.registry import BACKBONES

if TYPE_CHECKING:
    from equissl.config import Config

# Settings of timm.create_model that a backbone fixes itself.
_RESERVED_KWARGS = {
    "pretrained": "weights are never downloaded; set backbone.pretrained_file to a local file",
    "pretrained_cfg": "set backbone.pretrained_file to a local file",
    "pretrained_cfg_overlay": "set backbone.pretrained_file to a local file",
    "num_classes": "a backbone has no classifier (num_classes=0); heads belong to the objective",
    "features_only": "a backbone gives pooled features and a map; features_only changes the model's outputs",
}


@dataclass
class TimmConfig(BackboneConfig):
    model_name: str = ""  # any name of timm.list_models(), e.g. convnext_atto, vit_tiny_patch16_224
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed on to timm.create_model
    pretrained_file: str = ""  # local weights (.safetensors, or a torch file); empty: random init

    tiny_input_size: ClassVar[int] = 32

    @classmethod
    def tiny(cls) -> TimmConfig:
        """A seconds-fast setting for tests: timm's own test-size ResNet (its last BatchNorm of each block not
        zero-initialised, so that every parameter gets a gradient from the first step)."""
        return cls(name="timm", model_name="test_resnet", kwargs={"zero_init_last": False})

    def check(self, config: Config) -> None:
        """Name, kwargs and input sizes, checked before any work: the model is built on the ``meta``
        device (no memory, no initialisation cost) and run on the crop and image sizes."""
        check_model_name(self.model_name)
        check_kwargs(self.kwargs)
        if self.pretrained_file and not Path(self.pretrained_file).is_file():
            raise ConfigError(f"backbone.pretrained_file {self.pretrained_file!r} does not exist")
        sizes = sorted({config.augment.crop_size, config.data.image_size})
        dry_run(self.model_name, self.kwargs, sizes)


def check_model_name(model_name: str) -> None:
    import timm

    if not model_name:
        raise ConfigError(
            "backbone.model_name: set a timm model name, e.g. convnext_atto or vit_tiny_patch16_224 "
            "(timm.list_models() lists them)"
        )
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
        raise ConfigError(f"backbone.model_name: timm has no model {model_name!r}{hint}")


def check_kwargs(kwargs: dict[str, Any]) -> None:
    for key, why in _RESERVED_KWARGS.items():
        if key in kwargs:
            raise ConfigError(f"backbone.kwargs.{key}: not accepted: {why}")


def dry_run(model_name: str, kwargs: dict[str, Any], sizes: list[int]) -> None:
    """Build on the meta device and run ``forward_features`` on each square input side; a refusal of the
    kwargs or of a size is a ConfigError. Families whose construction or forward needs real values on
    the way (rare) are skipped here and fail, if at all, when built."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise ConfigError(f"backbone.kwargs: timm model {model_name!r} refuses them: {error}") from None
    except Exception:  # noqa: BLE001 -- e.g. an initialiser that reads values: no dry run possible
        return
    check_input_sides(
        model.eval().forward_features,
        sizes,
        f"timm model {model_name!r}",
        lambda size: (
            f". ViT-style models: set backbone.kwargs.img_size={size}, or "
            "backbone.kwargs.dynamic_img_size=true when the sizes differ"
        ),
    )


def check_input_sides(
    forward: Callable[[Tensor], Tensor], sides: Iterable[int], model: str, hint: Callable[[int], str]
) -> None:
    """Run ``forward`` of a model built on the meta device on a (2, 3, S, S) input for each side S; a
    refusal is a ConfigError naming the model (``model``), the side and ``hint(S)`` (how to fix it).
    Operators without a meta kernel end the check silently: the real build will tell."""
    for size in sides:
        try:
            forward(torch.empty(2, 3, size, size, device="meta"))
        except NotImplementedError:
            return
        except (AssertionError, RuntimeError, ValueError) as error:
            if "meta" in str(error):
                return
            raise ConfigError(
                f"backbone: {model} cannot take {size}x{size} inputs (augment.crop_size / data.image_size): "
                f"{str(error).rstrip('.')}{hint(size)}"
            ) from None


def load_pretrained_file(model: nn.Module, path: str) -> None:
    """Load local weights into a timm model (``num_classes=0``), strictly but for the pretrained classifier.

    The file is read by timm (safetensors, or ``torch.load(weights_only=True)``; EMA / ``state_dict`` /
    ``model`` containers and ``module.`` prefixes handled) and passed through the family's
    ``checkpoint_filter_fn`` as timm's own pretrained loading does.
    """
    from timm.models import load_state_dict

    if not Path(path).is_file():
        raise UserError(f"backbone.pretrained_file {path!r} does not exist")
    try:
        state = load_state_dict(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any unreadable file is the user's to fix
        raise UserError(f"backbone.pretrained_file {path!r} cannot be read: {error}") from None
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except TypeError:  # older filters take the state dict only
            state = filter_fn(state)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    own = model.state_dict()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        for key in (f"{name}.weight", f"{name}.bias"):
            if key not in own:
                state.pop(key, None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"backbone.pretrained_file {path!r} does not fit timm model "
            f"{model.pretrained_cfg.get('architecture', type(model).__name__)!r}: "
            f"missing keys {list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}"
        )


def tokens_to_map(tokens: Tensor, prefix: int, height: int, width: int) -> Tensor:
    """(B, prefix + h*w, C) tokens of a (height, width) input -> (B, C, h, w) patch-grid map.

    The grid keeps the input's aspect ratio: h = sqrt(n * height / width), rounded.
    """
    patches = tokens[:, prefix:]
    n = patches.shape[1]
    h = max(1, round(math.sqrt(n * height / width)))
    w = n // h
    if h * w != n:
        raise ValueError(f"{n} patch tokens do not form a grid for a {height}x{width} input")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class TimmBackbone(nn.Module):
    """A timm model (``self.model``) read out as the backbone contract says (module docstring)."""

    def __init__(
        self, model_name: str, kwargs: dict[str, Any] | None = None, pretrained_file: str = ""
    ) -> None:
        super().__init__()
        import timm

        check_model_name(model_name)
        self.model_name, self.kwargs = model_name, dict(kwargs or {})
        check_kwargs(self.kwargs)
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **self.kwargs)
        except TypeError as error:
            raise ConfigError(f"backbone.kwargs: timm model {model_name!r} refuses them: {error}") from None
        if pretrained_file:
            load_pretrained_file(self.model, pretrained_file)
        self.num_features = int(getattr(self.model, "head_hidden_size", 0) or self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")).upper().endswith("NHWC")

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> spatial map (B, C, h, w): channels first, token models on their patch grid."""
        features = self.model.forward_features(x)
        if features.ndim == 3:
            return tokens_to_map(features, self.num_prefix_tokens, x.shape[-2], x.shape[-1])
        if self.channels_last:
            return features.permute(0, 3, 1, 2)
        return features

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, num_features): timm's ``forward_head(..., pre_logits=True)``."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def export_state_dict(self) -> dict[str, Tensor]:
        """timm's keys (no ``model.`` prefix); the classifier is absent (``num_classes=0``)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    export_formats = ("safetensors", "timm", "onnx")
    export_note = ""

    def timm_model(self) -> tuple[str, dict]:
        """How ``timm.create_model`` rebuilds it: the name and the kwargs it was built with."""
        return self.model_name, dict(self.kwargs)


@BACKBONES.register("timm", TimmConfig, description="any timm model by name (backbone.model_name)")
def build_timm(cfg: TimmConfig) -> TimmBackbone:
    return TimmBackbone(cfg.model_name, cfg.kwargs, cfg.pretrained_file)
