"""``equissl equivariance --backbone NAME``: measured symmetry of a backbone beside its plain counterpart.

- ViTs: circular-shift consistency (Ding et al., 2023) of the pooled features, polyphase-anchored ViT
  versus timm's plain ViT of the same size.
- Steerable C_N / D_N networks: equivariance error ``max|f(g x) - g f(x)| / max|f(x)|`` of the feature
  fields (regular representation) and invariance error of the pooled output, for randomly drawn group
  elements, versus a torchvision ResNet-18's pooled output under the same image transformations.
- Any other backbone: shift consistency of its pooled output.
- A symmetrized backbone (``backbone.frame`` / ``backbone.canonicalizer`` set): the invariance error of
  its pooled output and the equivariance error of its spatial map under random group elements, beside the
  same figures of the bare inner backbone (the very same weights) -- ``symmetry`` in the report.

Inputs are random (uniform noise), in eval() mode, with a fixed seed.
"""

from __future__ import annotations

import dataclasses

import torch

from equissl.errors import UserError
from equissl.eval.equivariance import (
    equivariance_error,
    image_action,
    invariant_action,
    random_group_element,
    regular_action,
    shift_consistency,
)
from equissl.registry import BACKBONES


def _build(name: str, tiny: bool, overrides: list[str] | tuple[str, ...] = (), size: int = 0):
    """(model in eval mode, its config, input side): the registered backbone's defaults (``tiny``: its
    test-size setting) with ``backbone.*`` overrides, symmetrized as they say."""
    from equissl.backbones.symmetry import symmetrize
    from equissl.config import check_backbone_symmetry, parse_settings

    entry = BACKBONES.get(name)
    base = entry.config_cls.tiny() if tiny and hasattr(entry.config_cls, "tiny") else entry.config_cls()
    cfg = parse_settings(
        entry.config_cls, overrides, base=dataclasses.replace(base, name=name), section="backbone"
    )
    check_backbone_symmetry(cfg)
    model = symmetrize(entry.factory(cfg), cfg).eval()
    if not size:
        size = getattr(cfg, "tiny_input_size", 32) if tiny else getattr(cfg, "img_size", 65)
    return model, cfg, size


def _plain_vit(model, cfg, size: int) -> torch.nn.Module:
    """timm's plain ViT with the same widths, depth, heads, patch size and readout."""
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=size,
        patch_size=cfg.patch_size,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
        global_pool=cfg.global_pool,
    ).eval()


@torch.no_grad()
def shift_report(model, plain, size: int, batch: int, generator: torch.Generator) -> dict:
    x = torch.rand(batch, 3, size, size, generator=generator)
    state = generator.get_state()
    ours = shift_consistency(model, x, generator, max_shift=size // 2)
    generator.set_state(state)  # the plain model sees the very same shifts
    return {"ours": ours, "plain": shift_consistency(plain, x, generator, max_shift=size // 2)}


@torch.no_grad()
def group_report(model, size: int, batch: int, draws: int, generator: torch.Generator) -> dict:
    from torchvision.models import resnet18

    plain = resnet18(num_classes=1).eval()
    plain.fc = torch.nn.Identity()
    group = model.group
    x = torch.rand(batch, 3, size, size, generator=generator)
    rows = {"features": [], "invariant": [], "plain_invariant": []}
    for _ in range(draws):
        g = random_group_element(group, generator, exclude_identity=True)
        rows["features"].append(
            equivariance_error(
                model.forward_group_features, x, image_action(group, g), regular_action(group, g)
            )
        )
        rows["invariant"].append(equivariance_error(model, x, image_action(group, g), invariant_action()))
        rows["plain_invariant"].append(
            equivariance_error(plain, x, image_action(group, g), invariant_action())
        )
    return {
        "group": f"{group.kind}{group.n}",
        "input_size": size,
        **{f"max_{key}_error": max(values) for key, values in rows.items()},
    }


@torch.no_grad()
def symmetry_report(model, size: int, batch: int, draws: int, generator: torch.Generator) -> dict:
    """Invariance error of the pooled output and equivariance error of the spatial map (both
    ``max|f(g x) - g f(x)| / max|f(x)|``) of a symmetrized backbone and of its bare inner backbone, the
    largest over ``draws`` random non-identity elements of its group."""
    group, bare = model.group, model.backbone
    x = torch.rand(batch, 3, size, size, generator=generator)
    rows: dict[str, list[float]] = {key: [] for key in ("invariant", "map", "bare_invariant", "bare_map")}
    for _ in range(draws):
        g = random_group_element(group, generator, exclude_identity=True)
        act = image_action(group, g)
        for prefix, f in (("", model), ("bare_", bare)):
            rows[prefix + "invariant"].append(equivariance_error(f, x, act, invariant_action()))
            rows[prefix + "map"].append(equivariance_error(f.forward_features, x, act, act))
    return {
        "kind": model.kind,
        "group": model.group_name,
        "input_size": size,
        **{f"max_{key}_error": max(values) for key, values in rows.items()},
    }


def backbone_equivariance(
    name: str,
    tiny: bool = False,
    batch: int = 8,
    draws: int = 8,
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
    size: int = 0,
) -> dict:
    """Figures for backbone ``name`` (registry name) with ``backbone.*`` ``overrides``, as a JSON-able dict;
    ``size``: the input side (0: the backbone's default)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if BACKBONES.get(name).meta.get("probe", "linear") != "linear":
        raise UserError(f"backbone {name!r} takes point clouds; --backbone measures image backbones")
    model, cfg, size = _build(name, tiny, overrides, size)
    report: dict = {"backbone": name, "tiny": tiny, "settings": list(overrides)}
    if hasattr(model, "export_symmetry"):
        report["symmetry"] = symmetry_report(model, size, batch, draws, generator)
    elif hasattr(model, "group"):
        if not model.is_equivariant_size(size, size):
            size += 1  # steerable nets are exact on odd sizes with (S - 1) divisible by the stride
        report["group_equivariance"] = group_report(model, size, batch, draws, generator)
    elif name.startswith("poly_vit"):
        report["shift_consistency"] = shift_report(
            model, _plain_vit(model, cfg, size), size, batch, generator
        )
    else:
        report["shift_consistency"] = {
            "ours": shift_consistency(model, torch.rand(batch, 3, size, size, generator=generator), generator)
        }
    return report
