"""``custom``: the user's own ``nn.Module`` as the backbone (Python API: ``equissl.pretrain(...,
backbone=module)``).

Any module that maps images (B, 3, H, W) to a feature vector (B, D) will do. Its width ``num_features``
is found by a dummy forward (:func:`feature_width`). A run's config records only the module's class and
width: loading never executes code, so a module cannot be rebuilt from a config file. The module is
*attached* for the duration of a call (:func:`attached`); building the ``custom`` backbone then wraps a
deep copy of it, so the user's module keeps its weights and the run trains (and checkpoints) the copy.
Building it with nothing attached is a :class:`~equissl.errors.UserError` that says to pass the module.

The wrapper follows the backbone contract (:mod:`equissl.backbones.base`): ``forward`` is the module's
output, ``forward_features`` the module's own when it has one, else that output as a 1 x 1 map;
``export_state_dict()`` the module's own state dict; exports as safetensors or ONNX.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from equissl.config import BackboneConfig, NonNegativeInt
from equissl.errors import UserError
from equissl.registry import BACKBONES

_ATTACHED: list[nn.Module] = []  # a stack: the innermost ``attached`` module is built


@dataclass
class CustomBackboneConfig(BackboneConfig):
    name: str = "custom"
    module: str = ""  # the module's class, module.QualName (a record: never imported)
    num_features: NonNegativeInt = 0  # found by a dummy forward when the module is attached


@contextlib.contextmanager
def attached(module: nn.Module) -> Iterator[nn.Module]:
    """Make ``module`` the one the ``custom`` backbone wraps, for the duration of the ``with`` block."""
    if not isinstance(module, nn.Module):
        raise UserError(f"backbone= takes a torch.nn.Module, got {type(module).__name__}")
    _ATTACHED.append(module)
    try:
        yield module
    finally:
        _ATTACHED.pop()


def class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


@torch.no_grad()
def feature_width(module: nn.Module, image_size: int) -> int:
    """D of ``module``'s (B, D) output on two zero images of ``image_size`` pixels (in eval mode, on the
    module's device; its training mode is restored)."""
    parameter = next(iter(module.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    training = module.training
    module.eval()
    try:
        out = module(torch.zeros(2, 3, image_size, image_size, device=device, dtype=dtype))
    except Exception as error:
        raise UserError(
            f"your backbone {class_path(module)} failed on a (2, 3, {image_size}, {image_size}) image batch: "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        module.train(training)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(
            f"your backbone {class_path(module)} must map images (B, 3, H, W) to features (B, D); it returned "
            f"{shape} (pool and flatten a spatial map, e.g. end with nn.AdaptiveAvgPool2d(1), nn.Flatten())"
        )
    return int(out.shape[1])


class CustomBackbone(nn.Module):
    """The backbone contract around the user's module (module docstring)."""

    export_formats = ("safetensors", "onnx")
    export_note = "your own module exports its state_dict (safetensors) or its graph (ONNX)"

    def __init__(self, module: nn.Module, num_features: int) -> None:
        super().__init__()
        self.module = module
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def forward_features(self, x: Tensor) -> Tensor:
        own = getattr(self.module, "forward_features", None)
        if own is not None:
            return own(x)
        return self.module(x)[:, :, None, None]

    def export_state_dict(self) -> dict[str, Tensor]:
        """The module's own state dict (its keys, as ``module.load_state_dict`` takes them)."""
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


@BACKBONES.register(
    "custom",
    CustomBackboneConfig,
    description="your own nn.Module (Python API: pretrain(..., backbone=module))",
)
def build_custom(cfg: CustomBackboneConfig) -> CustomBackbone:
    if not _ATTACHED:
        what = f" ({cfg.module})" if cfg.module else ""
        raise UserError(
            f"this run's backbone is your own nn.Module{what}, which a config cannot rebuild: pass it from "
            "Python, e.g. equissl.load_backbone(run_dir, backbone=MyNet()) or equissl.probe(run_dir, "
            "backbone=MyNet())"
        )
    module = _ATTACHED[-1]
    width = cfg.num_features or feature_width(module, 32)
    return CustomBackbone(copy.deepcopy(module), width)
