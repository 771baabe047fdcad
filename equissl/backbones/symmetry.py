"""Exact symmetry for any image backbone: frame averaging and learned canonicalization.

Both wrap a backbone ``f`` and keep the backbone contract (``num_features``, ``forward``,
``forward_features``, the export methods), so objectives, probes and exports use them unchanged. The
group ``G`` acts on the pixel grid through :class:`equissl.groups.Group` (``T_g``: mirror, then turn),
on the input and on the spatial map alike; quarter turns and mirrors are pixel permutations, so the
guarantees below hold to float rounding. Inputs must be square.

**Frame averaging** (:class:`FrameAveraged`, ``backbone.frame``; Puny et al., ICLR 2022, with the whole
group as the frame)::

    forward(x)          = 1/|G| sum_g f(T_g x)                  exactly invariant: forward(T_h x) = forward(x)
    forward_features(x) = 1/|G| sum_g T_g^-1 f_map(T_g x)       exactly equivariant: map(T_h x) = T_h map(x)

The |G| transformed copies go through the backbone as one batch (|G| times the compute); in train mode
BatchNorm statistics are taken over the whole orbit, which is the same set for ``x`` and ``T_h x``.

**Learned canonicalization** (:class:`Canonicalized`, ``backbone.canonicalizer``; Mondal et al.,
NeurIPS 2023, "Equivariant Adaptation of Large Pretrained Models"). A small steerable network
(:class:`CanonicalizationNetwork`, built from the lifting and group convolutions of
:mod:`equissl.backbones.steerable`) gives pose logits ``a(x)`` (B, |G|) that move with the input,
``a(T_h x)[g] = a(x)[h^-1 g]``; ``g*(x) = argmax a(x)``, so ``g*(T_h x) = h g*(x)``, and::

    forward(x)          = f(T_{g*}^-1 x)                        invariant: T_{h g*}^-1 T_h x = T_{g*}^-1 x
    forward_features(x) = T_{g*} f_map(T_{g*}^-1 x)             equivariant

One backbone forward plus the small network: about 1x the compute. Exact for the group's pixel
permutations (C4: quarter turns; D4: quarter turns and mirrors); C8 adds 45-degree turns by bicubic
interpolation (zero outside the image), approximately invariant to those, exactly to quarter turns. The
argmax takes the first maximum, so an input whose logits tie exactly (a constant image) is not turned.

Training follows the official code (``equiadapt``): the pose is the argmax one-hot, with a
straight-through gradient through ``softmax(beta * a)`` in train mode; the optional prior loss is the
cross-entropy of ``a`` toward the identity pose (index 0), weighted by ``canonicalizer_prior`` (the
paper's classification runs use 100), and the logged ``canonicalizer/identity`` is the fraction of inputs
left unturned. Deviations from the official code: (1) it turns the image by the one-hot's *angle* with
kornia's bilinear rotation (after edge padding) so its gradient reaches the network through the angle;
here the input is turned by exact pixel permutations and the straight-through one-hot weights the |G|
turned inputs (``sum_g w_g T_g^-1 x``, equal to ``T_{g*}^-1 x`` in value), so the gradient reaches the
network through those weights; (2) its network crops the input to 80% and resizes it; here the input is
average-pooled (``adaptive_avg_pool2d``, whose windows are mirror-symmetric, so equivariance is kept) to
at most ``canonicalizer_size`` pixels; (3) no dropout in the network, "same" zero padding.

A symmetrized backbone exports its inner backbone's weights (timm, torchvision, ... keys, so they load
into the consumer's model) with metadata naming the frame or canonicalizer (and the canonicalizer's own
weights beside them); its ONNX export is the whole symmetrized model.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.backbones.steerable import GroupBatchNorm, GroupConv2d, LiftingConv2d
from equissl.config import BackboneConfig
from equissl.groups import Group, parse_group

# Members of the export contract (equissl.backbones.base) a wrapper forwards to its inner backbone.
_EXPORT_API = (
    "timm_model",
    "torchvision_state_dict",
    "torchvision_builder",
    "torchvision_classifier",
    "torchvision_kwargs",
    "depth",
)


def _check_square(x: Tensor, group: Group) -> None:
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"{group.kind}{group.n} symmetrization needs square images (B, C, S, S), got {tuple(x.shape)}"
        )


def _check_map(fmap: Tensor) -> None:
    if fmap.ndim != 4 or fmap.shape[-1] != fmap.shape[-2]:
        raise ValueError(
            "a symmetrized backbone's forward_features needs the inner backbone's square spatial map "
            f"(B, C, h, h), got {tuple(fmap.shape)}"
        )


class _Symmetrized(nn.Module):
    """What both wrappers share: the inner backbone as ``self.backbone`` and the export contract."""

    kind = ""

    def __init__(self, backbone: nn.Module, group: Group) -> None:
        super().__init__()
        self.backbone = backbone
        self.group = group
        self.num_features = backbone.num_features

    @property
    def group_name(self) -> str:
        return f"{self.group.kind.lower()}{self.group.n}"

    def __getattr__(self, name: str) -> Any:
        if name in _EXPORT_API:  # the export formats of the inner backbone write its weights
            return getattr(self.backbone, name)
        return super().__getattr__(name)

    def export_state_dict(self) -> dict[str, Tensor]:
        """The inner backbone's weights with its origin library's keys."""
        return self.backbone.export_state_dict()

    @property
    def export_formats(self) -> tuple[str, ...]:
        return tuple(self.backbone.export_formats)

    @property
    def export_note(self) -> str:
        return self.backbone.export_note

    def export_symmetry(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(metadata naming the symmetrization, extra weights to write beside the export (may be empty))."""
        raise NotImplementedError


class FrameAveraged(_Symmetrized):
    """Frame averaging over the whole group (module docstring): |G| forwards in one batch."""

    kind = "frame"

    def orbit(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (|G| B, C, S, S), element-major: rows ``g B .. (g + 1) B - 1`` hold ``T_g x``."""
        _check_square(x, self.group)
        return torch.cat([self.group.transform_image(x, g) for g in range(self.group.order)])

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, num_features), invariant to the group."""
        return self.backbone(self.orbit(x)).unflatten(0, (self.group.order, -1)).mean(dim=0)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C, h, h), equivariant: each copy's map is turned back before the mean."""
        maps = self.backbone.forward_features(self.orbit(x))
        _check_map(maps)
        maps = maps.unflatten(0, (self.group.order, -1))
        back = [self.group.transform_image(maps[g], self.group.inverse(g)) for g in range(self.group.order)]
        return torch.stack(back).mean(dim=0)

    def export_symmetry(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {
            "kind": "frame_averaging",
            "group": self.group_name,
            "paper": "Puny et al., Frame Averaging for Invariant and Equivariant Network Design, ICLR 2022",
            "apply": "features(x) = mean over g in the group of backbone(T_g x), T_g from "
            "equissl.groups.Group (mirror left-right, then turn counter-clockwise); "
            "equissl.backbones.symmetry.FrameAveraged rebuilds it",
        }, {}


class CanonicalizationNetwork(nn.Module):
    """A small C_N / D_N-equivariant network giving pose logits (B, |G|).

    Lifting convolution, then ``layers - 1`` group convolutions on regular fields (GroupBatchNorm and ReLU
    between them, none after the last), all ``width`` fields, ``kernel`` x ``kernel``, stride 1; the logits
    are the last fields' mean over fields and space (as the official network reads its group
    activations). The input is first average-pooled to at most ``size`` x ``size``.
    """

    def __init__(
        self, group: Group, width: int = 8, layers: int = 3, kernel: int = 5, size: int = 32
    ) -> None:
        super().__init__()
        self.group, self.size = group, size
        convs: list[nn.Module] = [LiftingConv2d(3, width, group, kernel)]
        convs += [GroupConv2d(width, width, group, kernel) for _ in range(layers - 1)]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(GroupBatchNorm(width) for _ in range(layers - 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> pose logits (B, |G|); ``logits(T_h x)[g] = logits(x)[h^-1 g]``."""
        if x.shape[-1] > self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        for conv, norm in zip(self.convs[:-1], self.norms):
            x = F.relu(norm(conv(x)))
        return self.convs[-1](x).mean(dim=(1, 3, 4))


class Canonicalized(_Symmetrized):
    """Learned canonicalization (module docstring): the backbone sees the input in its predicted pose."""

    kind = "canonicalizer"

    def __init__(
        self,
        backbone: nn.Module,
        group: Group,
        width: int = 8,
        layers: int = 3,
        kernel: int = 5,
        size: int = 32,
        beta: float = 1.0,
        prior_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone, group)
        self.canonicalizer = CanonicalizationNetwork(group, width, layers, kernel, size)
        self.settings = {"width": width, "layers": layers, "kernel": kernel, "size": size}
        self.beta, self.prior_weight = beta, prior_weight
        # Prior terms and identity fractions of the training forwards since the objective last took them
        # (bounded: a caller that never takes them keeps no more than a few graphs alive).
        self._pending: deque[tuple[Tensor | None, Tensor]] = deque(maxlen=16)

    @property
    def onnx_opset(self) -> int:
        """C8 turns the input by interpolation (``affine_grid``), an ONNX operator since opset 20."""
        return 17 if self.group.all_exact else 20

    def pose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, S, S) -> pose logits (B, |G|) and pose weights (B, |G|): the one-hot of the first argmax,
        with a straight-through gradient through ``softmax(beta * logits)`` while training."""
        _check_square(x, self.group)
        # float32 whatever the autocast dtype: a bf16 convolution of a turned input differs from the turned
        # convolution by far more than float32 rounding, enough to flip near-tied argmaxes.
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.canonicalizer(x.float())
        elements = torch.arange(self.group.order, device=x.device)
        weights = (logits.argmax(dim=1, keepdim=True) == elements).to(x.dtype)
        if self.training and torch.is_grad_enabled():
            soft = torch.softmax(self.beta * logits.float(), dim=1).to(x.dtype)
            weights = weights + (soft - soft.detach())  # exactly the one-hot in value (0 added, not s - s)
            self._record(logits)
        return logits, weights

    def _record(self, logits: Tensor) -> None:
        identity = (logits.detach().argmax(dim=1) == 0).float().mean()
        prior = None
        if self.prior_weight > 0 and logits.requires_grad:
            prior = F.cross_entropy(logits.float(), torch.zeros_like(logits[:, 0], dtype=torch.long))
        self._pending.append((prior, identity))

    def _turn(self, x: Tensor, weights: Tensor, inverse: bool) -> Tensor:
        """``sum_g w_g T_g^{+-1} x`` (B, C, S, S): in value the turn by each sample's chosen element, as the
        weights are 0 / 1; elementwise products, so the selection is exact in any precision."""
        out = None
        for g in range(self.group.order):
            turned = self.group.transform_image(x, self.group.inverse(g) if inverse else g)
            term = weights[:, g, None, None, None] * turned
            out = term if out is None else out + term
        return out

    def canonicalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, S, S) -> the input turned to its canonical pose ``T_{g*}^-1 x``, and the pose weights."""
        _, weights = self.pose(x)
        return self._turn(x, weights, inverse=True), weights

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, num_features), invariant to the group."""
        return self.backbone(self.canonicalize(x)[0])

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C, h, h), equivariant: the canonical pose's map turned back by ``g*``."""
        canonical, weights = self.canonicalize(x)
        maps = self.backbone.forward_features(canonical)
        _check_map(maps)
        return self._turn(maps, weights, inverse=False)

    def take_auxiliary_losses(self) -> tuple[Tensor | None, dict[str, Tensor]]:
        """(weighted prior loss to add to the objective's loss, or None; metrics) over the training forwards
        since the last call, which are then forgotten. :class:`equissl.ssl.base.Objective` calls it."""
        pending, self._pending = list(self._pending), deque(maxlen=self._pending.maxlen)
        if not pending:
            return None, {}
        metrics = {"canonicalizer/identity": torch.stack([identity for _, identity in pending]).mean()}
        priors = [prior for prior, _ in pending if prior is not None]
        if not priors:
            return None, metrics
        prior = torch.stack(priors).mean()
        metrics["loss/canonicalizer_prior"] = prior.detach()
        return self.prior_weight * prior, metrics

    def export_symmetry(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        weights = {
            f"canonicalizer.{k}": v.detach().contiguous() for k, v in self.canonicalizer.state_dict().items()
        }
        return {
            "kind": "canonicalization",
            "group": self.group_name,
            "paper": "Mondal et al., Equivariant Adaptation of Large Pretrained Models, NeurIPS 2023",
            "canonicalizer": dict(self.settings),
            "apply": "features(x) = backbone(T_g^-1 x), g = argmax of the canonicalization network's pose "
            "logits; equissl.backbones.symmetry.Canonicalized rebuilds it with the canonicalizer weights",
        }, weights


def symmetrize(backbone: nn.Module, cfg: BackboneConfig) -> nn.Module:
    """``backbone`` wrapped as ``cfg.frame`` / ``cfg.canonicalizer`` say (unchanged when both are none)."""
    if cfg.frame != "none":
        return FrameAveraged(backbone, parse_group(cfg.frame))
    if cfg.canonicalizer != "none":
        return Canonicalized(
            backbone,
            parse_group(cfg.canonicalizer),
            width=cfg.canonicalizer_width,
            layers=cfg.canonicalizer_layers,
            kernel=cfg.canonicalizer_kernel,
            size=cfg.canonicalizer_size,
            beta=cfg.canonicalizer_beta,
            prior_weight=cfg.canonicalizer_prior,
        )
    return backbone
