"""Our backbones as timm model names, so ``timm.create_model`` builds them and loads our exports.

Importing this module (``import equissl.export``) registers ``equissl_poly_vit_{tiny,small,base}``:
the polyphase-anchored ViT of :mod:`equissl.backbones.poly_vit`, whose keys are timm's ViT keys with
``pos_conv.*`` in place of ``pos_embed``. They have no hosted weights; load an export with::

    timm.create_model("equissl_poly_vit_tiny", pretrained=True,
                      pretrained_cfg_overlay=dict(file="backbone.safetensors"), **metadata["timm_kwargs"])

ResNets need no registration: our ResNet keys are timm's ``resnet18/34/50`` keys (``conv1``, ``bn1``,
``layerN.i.*``, ``downsample.0/1``); only the classifier ``fc`` is absent from an export.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from equissl.backbones.poly_vit import SIZES, PolyViT


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 0,  # a backbone: forward gives pooled features, there is no head to load
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "see equissl",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"equissl_poly_vit_{size}.untrained": _cfg() for size in SIZES})


def _identity_filter(state_dict: dict, model) -> dict:
    """Exports already carry the model's own key names (``pos_conv.*``, no ``pos_embed``)."""
    return state_dict


def _poly_vit(num_classes: int = 0, **kwargs) -> PolyViT:
    if num_classes:
        raise ValueError("equissl_poly_vit_* are backbones (num_classes=0); put a head on their features")
    return PolyViT(**kwargs)


def _create(size: str, pretrained: bool, **kwargs) -> PolyViT:
    kwargs = {**SIZES[size], **kwargs}
    return build_model_with_cfg(
        _poly_vit, f"equissl_poly_vit_{size}", pretrained, pretrained_filter_fn=_identity_filter, **kwargs
    )


@register_model
def equissl_poly_vit_tiny(pretrained: bool = False, **kwargs) -> PolyViT:
    return _create("tiny", pretrained, **kwargs)


@register_model
def equissl_poly_vit_small(pretrained: bool = False, **kwargs) -> PolyViT:
    return _create("small", pretrained, **kwargs)


@register_model
def equissl_poly_vit_base(pretrained: bool = False, **kwargs) -> PolyViT:
    return _create("base", pretrained, **kwargs)
