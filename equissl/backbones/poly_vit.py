"""Polyphase-anchored Vision Transformer (Ding et al. 2023, "Reviving Shift Equivariance in Vision
Transformers"), built on timm's ``VisionTransformer``.

Two changes make a ViT exactly invariant to circular shifts of its input:

1. *Polyphase anchoring* before patchifying. The input (B, C, H, W), H and W multiples of the patch size
   p, has p x p polyphase components ``x[:, :, i::p, j::p]``. The one with the largest L2 norm is
   circularly shifted to offset (0, 0) (``torch.argmax``'s first-maximum rule breaks exact ties, in
   row-major (i, j) order). A circular shift of the input by s then changes the anchored input only by
   a multiple of p, i.e. the patch tokens are circularly permuted on the token grid. (Near-ties between
   component norms, at the level of float rounding, can still flip the choice; for natural or random
   images this does not happen in practice.)
2. *Circular convolutional position encoding* instead of the absolute position embedding: a depth-wise
   3x3 convolution with circular padding on the token grid, added residually (``x + conv(x)``, the PEG
   of CPVT), applied once to the patch tokens right after the patch embedding -- where timm adds the
   absolute embedding (``_pos_embed``) and where the official code's ``PosConv`` sits. The class token is
   concatenated after it. It commutes with circular shifts of the token grid.

Self-attention, MLPs and norms are permutation-equivariant over tokens, so the class token and any
permutation-invariant pooling are shift-*invariant*; every readout offered is: ``token`` (class token),
``avg`` (mean of patch tokens) and ``map`` (timm's latent attention pool, without position embedding).
The patch tokens themselves are shift-*equivariant* up to the circular permutation of the grid (the
official ``invariance=True`` variant additionally rolls the largest-norm patch to the origin; not needed
for invariant pooled features, so not done here).

``forward_features`` returns tokens (B, num_prefix_tokens + h*w, C) (prefix = class token, timm
convention); ``forward`` returns (B, embed_dim). Keys are timm's (``cls_token``, ``patch_embed.proj.*``,
``blocks.N.*``, ``norm.*``/``fc_norm.*``, ``attn_pool.*``) plus ``pos_conv.*``, which replaces
``pos_embed``; :func:`checkpoint_filter_fn` adapts a timm ViT state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from equissl.config import BackboneConfig
from equissl.groups import circular_shift
from equissl.registry import BACKBONES

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def polyphase_offsets(x: Tensor, patch_size: int) -> Tensor:
    """(B, 2) long offsets (i, j) in [0, p) of the largest-norm polyphase component ``x[:, :, i::p, j::p]``."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"input {h}x{w} is not a multiple of the patch size {p}")
    # float64: the argmax compares sums taken in different orders for shifted inputs.
    grid = x.detach().to(torch.float64).reshape(b, c, h // p, p, w // p, p)
    energy = grid.square().sum(dim=(1, 2, 4)).reshape(b, p * p)  # (B, p*p), row-major (i, j)
    index = energy.argmax(dim=1)  # first maximum on exact ties
    return torch.stack((index // p, index % p), dim=1)


def polyphase_anchor(x: Tensor, patch_size: int) -> Tensor:
    """Circularly shift each image so its largest-norm polyphase component sits at patch offset (0, 0)."""
    return circular_shift(x, -polyphase_offsets(x, patch_size))


class PolyViT(VisionTransformer):
    """timm ``VisionTransformer`` with polyphase anchoring and a circular conv position encoding."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        global_pool: Literal["token", "avg", "map"] = "token",
        anchor: bool = True,
        drop_path_rate: float = 0.0,
        **kwargs,
    ) -> None:
        if global_pool not in ("token", "avg", "map"):
            raise ValueError(f"global_pool must be 'token', 'avg' or 'map', got {global_pool!r}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            class_token=True,
            pos_embed="none",
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        self.anchor = anchor
        self.timm_kwargs = {
            "img_size": img_size,
            "patch_size": patch_size,
            "global_pool": global_pool,
            "anchor": anchor,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
        }
        self.pos_conv = nn.Conv2d(
            embed_dim, embed_dim, 3, padding=1, groups=embed_dim, padding_mode="circular"
        )

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def _pos_embed(self, x: Tensor) -> Tensor:
        """(B, h, w, C) patch tokens -> (B, prefix + h*w, C) with the circular conv encoding."""
        grid = x.permute(0, 3, 1, 2)
        grid = grid + self.pos_conv(grid)
        x = grid.flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        return self.pos_drop(torch.cat(prefix + [x], dim=1))

    def forward_features(self, x: Tensor, **kwargs) -> Tensor:
        """(B, C, H, W), H and W multiples of the patch size -> tokens (B, 1 + (H/p)(W/p), embed_dim)."""
        if self.anchor:
            x = polyphase_anchor(x, self.patch_size)
        return super().forward_features(x, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, embed_dim) pooled (shift-invariant) features."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def export_state_dict(self) -> dict[str, Tensor]:
        """timm ViT key names, with ``pos_conv.*`` in place of ``pos_embed`` (and no ``head``)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    export_formats = ("safetensors", "timm", "onnx")
    export_note = ""

    def timm_model(self) -> tuple[str, dict]:
        """Our registered ``equissl_poly_vit_<size>`` (:mod:`equissl.export.timm_models`) and the kwargs that
        rebuild this model (its widths are explicit, so a non-standard width still loads)."""
        dims = {key: self.timm_kwargs[key] for key in ("embed_dim", "depth", "num_heads")}
        size = next((name for name, standard in SIZES.items() if standard == dims), "tiny")
        return f"equissl_poly_vit_{size}", dict(self.timm_kwargs)


def checkpoint_filter_fn(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapt a timm ViT state dict: drop the absolute ``pos_embed`` and the classifier ``head``.

    Load the result with ``strict=False``; ``pos_conv.*`` stays at its initialisation.
    """
    return {k: v for k, v in state_dict.items() if k != "pos_embed" and not k.startswith("head.")}


@dataclass
class PolyViTConfig(BackboneConfig):
    img_size: int = 224  # nominal; any size that is a multiple of patch_size works
    patch_size: int = 16
    global_pool: Literal["token", "avg", "map"] = "token"
    anchor: bool = True  # False: plain patchify (ablation), no longer shift-invariant
    embed_dim: int = 0  # 0: the size's default (tiny 192, small 384, base 768)
    depth: int = 0  # 0: the size's default (12)
    num_heads: int = 0  # 0: the size's default (3, 6, 12)
    drop_path_rate: float = 0.0

    tiny_input_size: ClassVar[int] = 32

    @classmethod
    def tiny(cls) -> PolyViTConfig:
        """A seconds-fast setting for tests (32 px input, 16 tokens of width 32)."""
        return cls(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _register(size: str) -> None:
    @BACKBONES.register(
        f"poly_vit_{size}",
        PolyViTConfig,
        description=f"ViT-{size[0].upper()}, polyphase-anchored: exact shift invariance",
    )
    def build(cfg: PolyViTConfig) -> PolyViT:
        dims = {k: getattr(cfg, k) or v for k, v in SIZES[size].items()}
        kwargs = {
            "img_size": cfg.img_size,
            "patch_size": cfg.patch_size,
            "global_pool": cfg.global_pool,
            "anchor": cfg.anchor,
            **dims,
        }
        return PolyViT(drop_path_rate=cfg.drop_path_rate, **kwargs)


for _size in SIZES:
    _register(_size)
