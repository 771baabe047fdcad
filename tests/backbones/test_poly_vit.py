"""Polyphase-anchored ViT: exact invariance to circular shifts; timm's plain ViT is not invariant."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from equissl.backbones.poly_vit import (
    PolyViT,
    PolyViTConfig,
    checkpoint_filter_fn,
    polyphase_anchor,
    polyphase_offsets,
)
from equissl.eval.equivariance import random_shifts, shift_consistency
from equissl.groups import circular_shift
from equissl.registry import BACKBONES

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def test_circular_shift_is_per_sample_roll() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 12, generator=g)
    shifts = random_shifts(3, 20, g)
    out = circular_shift(x, shifts)
    for b in range(3):
        assert torch.equal(out[b], torch.roll(x[b], tuple(shifts[b].tolist()), dims=(1, 2)))


def test_anchor_turns_shifts_into_patch_multiples() -> None:
    g = torch.Generator().manual_seed(1)
    p = 4
    x = torch.randn(5, 3, 16, 16, generator=g)
    shifts = random_shifts(5, 16, g)
    anchored, anchored_shifted = polyphase_anchor(x, p), polyphase_anchor(circular_shift(x, shifts), p)
    offsets = polyphase_offsets(anchored, p)
    assert torch.equal(offsets, torch.zeros_like(offsets))  # anchored: the max component at (0, 0)
    for b in range(5):  # the anchored inputs differ by a shift that is a multiple of p
        found = [
            (dy, dx)
            for dy in range(0, 16, p)
            for dx in range(0, 16, p)
            if torch.equal(torch.roll(anchored[b], (dy, dx), dims=(1, 2)), anchored_shifted[b])
        ]
        assert len(found) == 1


def test_tie_breaking_is_deterministic() -> None:
    x = torch.ones(2, 3, 8, 8)  # every component has the same norm: the first (0, 0) wins
    assert torch.equal(polyphase_offsets(x, 4), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        polyphase_offsets(torch.ones(1, 3, 10, 8), 4)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("global_pool", ["token", "avg", "map"])
def test_pooled_features_shift_invariant(global_pool: str, mode: str) -> None:
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    model = getattr(PolyViT(global_pool=global_pool, **TINY), mode)()
    x = torch.randn(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = model(x)
        for _ in range(2):
            shifted = model(circular_shift(x, random_shifts(8, 31, g)))
            assert relative_error(out, shifted) < 1e-4
    stats = shift_consistency(model, x, g, max_shift=31)
    assert stats["consistency"] == 1.0 and stats["max_relative_change"] < 1e-4, stats


def test_patch_tokens_shift_equivariant() -> None:
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model = PolyViT(**TINY).eval()
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        tokens = model.forward_features(x)[:, 1:].reshape(2, 4, 4, -1)
        shift = random_shifts(2, 31, g)
        shifted = model.forward_features(circular_shift(x, shift))[:, 1:].reshape(2, 4, 4, -1)
    for b in range(2):  # the token grid is circularly permuted by some multiple-of-p shift
        diffs = [
            relative_error(tokens[b], torch.roll(shifted[b], (dy, dx), dims=(0, 1)))
            for dy in range(4)
            for dx in range(4)
        ]
        assert min(diffs) < 1e-4


def test_plain_vit_and_unanchored_are_not_invariant(capsys) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 3, 32, 32, generator=g)
    torch.manual_seed(0)
    plain = VisionTransformer(num_classes=0, **TINY).eval()
    torch.manual_seed(0)
    poly = PolyViT(**TINY).eval()
    torch.manual_seed(0)
    unanchored = PolyViT(anchor=False, **TINY).eval()
    results = {
        name: shift_consistency(m, x, torch.Generator().manual_seed(5), max_shift=31)
        for name, m in (("plain", plain), ("poly", poly), ("unanchored", unanchored))
    }
    with capsys.disabled():
        print(f"\nshift consistency (16 inputs, max shift 31 px): {results}")
    assert results["poly"]["consistency"] == 1.0 and results["poly"]["max_relative_change"] < 1e-4
    assert results["plain"]["relative_change"] > 1e-2
    assert results["unanchored"]["relative_change"] > 1e-2


def test_registered_sizes_and_export() -> None:
    for size, width in (("tiny", 192), ("small", 384), ("base", 768)):
        entry = BACKBONES.get(f"poly_vit_{size}")
        assert entry.config_cls is PolyViTConfig
    model = BACKBONES.build("poly_vit_tiny", PolyViTConfig(img_size=32, patch_size=8, depth=1))
    assert model.num_features == 192 and len(model.blocks) == 1
    assert model(torch.randn(2, 3, 48, 32)).shape == (2, 192)  # any multiple of the patch size
    state = model.export_state_dict()
    assert "pos_embed" not in state and "pos_conv.weight" in state and "blocks.0.attn.qkv.weight" in state
    # timm weights load once pos_embed / head are filtered out
    timm_vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3)
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(timm_vit.state_dict()), strict=False)
    assert set(missing) == {"pos_conv.weight", "pos_conv.bias"} and not unexpected
