"""The backbone contract, checked for every registered backbone (timm ``tests/test_models.py`` style).

How a backbone is made small here: if its config class has a ``tiny()`` classmethod, that config is
used, else the default config; ``custom`` (the user's own module) wraps the tests' tiny backbone. The input is ``model.example_input(batch_size, generator)`` when the
module defines it (non-image backbones), else a random (B, 3, S, S) image with
S = ``config_cls.tiny_input_size`` (default 32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import pytest
import torch

from equissl.backbones.base import Backbone
from equissl.backbones.custom import attached
from equissl.registry import BACKBONES
from tests.helpers import TinyBackbone

BATCH = 2


@functools.cache  # built once per module; tests set the mode and clear gradients
def build_tiny(name: str):
    entry = BACKBONES.get(name)
    tiny = getattr(entry.config_cls, "tiny", None)
    cfg = tiny() if tiny is not None else entry.config_cls()
    cfg = dataclasses.replace(cfg, name=name)
    torch.manual_seed(0)
    with attached(TinyBackbone()) if name == "custom" else contextlib.nullcontext():
        model = BACKBONES.build(name, cfg)
    generator = torch.Generator().manual_seed(0)
    if hasattr(model, "example_input"):
        x = model.example_input(BATCH, generator)
    else:
        size = getattr(entry.config_cls, "tiny_input_size", 32)
        x = torch.randn(BATCH, 3, size, size, generator=generator)
    return model, x


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_shapes_and_finite(name: str, mode: str) -> None:
    model, x = build_tiny(name)
    getattr(model, mode)()
    assert isinstance(model, Backbone)
    assert isinstance(model.num_features, int) and model.num_features > 0
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model(x)
    assert features.ndim in (3, 4) and features.shape[0] == BATCH, features.shape
    assert pooled.shape == (BATCH, model.num_features)
    assert torch.isfinite(features).all() and torch.isfinite(pooled).all()


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model, x = build_tiny(name)
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    # A random projection, so that no parameter's gradient cancels by symmetry (e.g. a plain sum
    # after a normalisation layer).
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_export_state_dict(name: str) -> None:
    model, _ = build_tiny(name)
    state = model.export_state_dict()
    assert state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    assert not any(k.startswith("module.") for k in state)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_declared_export_formats_round_trip_through_safetensors(name: str, tmp_path) -> None:
    from safetensors.torch import load_file

    from equissl.export.formats import FORMATS, export_backbone

    model, _ = build_tiny(name)
    known = {*FORMATS, "openpcdet"}
    assert "safetensors" in model.export_formats and set(model.export_formats) <= known, model.export_formats
    assert isinstance(model.export_note, str)
    assert BACKBONES.get(name).meta.get("probe", "linear") in ("linear", "bev")
    out = export_backbone(model.eval(), {"backbone": name}, tmp_path / "backbone.safetensors")
    loaded, expected = load_file(str(out)), model.export_state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    refused = sorted(known - set(model.export_formats) - {"openpcdet"})
    if refused:
        with pytest.raises(ValueError, match="cannot export"):
            export_backbone(model, {"backbone": name}, tmp_path / "x.out", refused[0])
