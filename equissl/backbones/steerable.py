"""Group-equivariant (steerable) CNNs for the rotation groups C_N and the dihedral groups D_N.

Fields are *regular representations*: a feature map has shape (B, C, |G|, H, W), one channel per field
and group element. The network is built from

- :class:`LiftingConv2d` -- image (B, C_in, H, W) -> regular fields; the filter for group element ``g``
  is the base filter transformed by ``g`` (``Group.transform_image``);
- :class:`GroupConv2d` -- regular -> regular fields; the filter for output element ``g`` is the base
  filter transformed by ``g`` spatially *and* with its input group axis permuted by ``h -> g^-1 h``;
- :class:`GroupBatchNorm` -- batch norm whose statistics and affine parameters are shared over the
  group axis (so it commutes with the group action);
- :class:`SteerableResNet` -- a small group-equivariant ResNet; ``forward`` pools over the group axis
  (max or mean) and then over space, giving invariant features.

Both convolutions materialise an ordinary ``Conv2d`` weight of shape (C_out|G|, C_in|G|, k, k), with
channel index ``c * |G| + g`` (the *filter expansion*). For C4 / D4 (and their subgroups) the expanded
weight is a permutation-with-repetition of the base weight's entries, computed once at construction as an
index: the expansion is one ``index_select`` (its backward one ``index_add``); other groups rotate the
filters by interpolation on every expansion. The expansion is cached (:meth:`_FilterBank.expanded_weight`):
without gradient (eval, EMA targets) it is recomputed only when the weights change, and with gradient one
expansion serves every forward pass until its backward has run or the weights change, i.e. once per
optimizer step in training. :meth:`SteerableResNet.export` returns a plain module of ``nn.Conv2d`` /
``nn.BatchNorm2d`` / ``nn.ReLU`` / pooling that computes the same function (in eval mode: the exported BN
has per-channel statistics, so in train mode it would normalise each (c, g) separately and stop being
equivariant).

Group elements are indexed ``m * N + k`` for ``r^k f^m`` (rotation by ``k * 360/N`` degrees
counter-clockwise as displayed, after a left-right mirror ``f`` when ``m = 1``); C_N uses only m = 0.
The action on a feature map is ``(g . F)[c, h] = T_g F[c, g^-1 h]`` (spatial transform ``T_g`` and the
left regular representation on the group axis), see :meth:`Group.transform_regular`.

Exactness. Rotations by multiples of 90 degrees and mirrors are pixel permutations (``torch.rot90``,
``torch.flip``), so C4, D4 (and C2, D2, D1) networks are equivariant to float precision. Other angles
(N = 8, 16, ...) rotate filters -- and, in tests, images -- by bicubic interpolation and are only
approximately equivariant; such filters are restricted to a disk and default to 5x5. For N divisible by
4 the C4 subgroup stays exact because rotations are composed as ``rot90^q`` after an interpolated
residual rotation of less than 90 degrees.

Input sides. A stride-2 convolution samples its input at rows and columns 0, 2, 4, ...; a quarter turn or
a mirror maps that grid onto itself only when the side is odd (index i goes to S - 1 - i). On an even side
every stride-2 stage therefore first averages each 2 x 2 neighbourhood at stride 1
(:class:`OddSides`, side S -> S - 1): the windows of an even grid map onto windows under the group, so
the average is equivariant, and the side it leaves is odd. With this (``exact_downsampling=True``, the
default) the network is exactly equivariant at every square input side; odd sides are computed exactly as
without it. Cost: one 2 x 2 average of the stage's input per stride-2 stage at even sides (a box filter of
one pixel, which also low-passes what the stride then subsamples), and one row and column fewer on that
stage's input. ``exact_downsampling=False`` subsamples even sides directly, the earlier behaviour: exact
only for sides with ``(S - 1) % 2**s == 0`` (17, 33, 65 for s = 2 stride-2 stages), see
:meth:`SteerableResNet.is_equivariant_size`. Measured cost and errors: docs/backbones.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.config import BackboneConfig
from equissl.groups import Group, parse_group
from equissl.registry import BACKBONES

# ----------------------------------------------------------------------------------------------------
# Layers on regular fields (tensors (B, C, |G|, H, W)).


def _disk_mask(kernel_size: int) -> Tensor:
    """(k, k) 0/1: taps within radius (k - 1)/2 + 0.5 of the centre (drops the corners of k >= 5)."""
    t = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
    return ((t[:, None] ** 2 + t[None, :] ** 2).sqrt() <= (kernel_size - 1) / 2 + 0.5).float()


class _Expansion:
    """One cached filter expansion: the tensor, the weight state it was computed from, and whether its
    autograd graph can still be used (False once its backward has run, or if it was built without one)."""

    __slots__ = ("key", "live", "tensor")

    def __init__(self, key: tuple, tensor: Tensor, live: list[bool]) -> None:
        self.key, self.tensor, self.live = key, tensor, live


class _FilterBank(nn.Module):
    """Shared by the two convolutions: a base filter, its expansion over the group, and the expansion cache.

    When some group elements rotate by interpolation (N not in 1, 2, 4), filters are restricted to a disk
    before and after the rotation, so that no tap is lost to or gained from the square's corners (a
    rotation-invariant support; it commutes with the exact 90-degree rotations and mirrors). When every
    element acts by a pixel permutation, ``expansion_index`` holds, for every entry of the expanded weight,
    the base-weight entry it copies (found by expanding a tensor of entry numbers with the same code).
    """

    weight: nn.Parameter

    def _init_filters(self, group: Group, kernel_size: int) -> None:
        mask = None if group.all_exact else _disk_mask(kernel_size)
        self.register_buffer("mask", mask, persistent=False)
        index = None
        if group.all_exact:
            entries = torch.arange(self.weight.numel()).view(self.weight.shape)
            index = self._transform(entries).reshape(-1)
        self.register_buffer("expansion_index", index, persistent=False)
        self._expansion: _Expansion | None = None

    def __getstate__(self) -> dict:
        # A cached expansion is a non-leaf tensor, which deepcopy (EMA targets) and pickling refuse.
        state = super().__getstate__()
        state["_expansion"] = None
        return state

    def _masked(self, weight: Tensor) -> Tensor:
        return weight if self.mask is None else weight * self.mask

    def _transform(self, weight: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The expanded weight computed from ``weight`` (or a tensor of its entry numbers) by the group."""
        raise NotImplementedError

    def _expanded_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute_expansion(self) -> Tensor:
        if self.expansion_index is None:
            return self._transform(self.weight)
        return self.weight.reshape(-1).index_select(0, self.expansion_index).view(self._expanded_shape())

    def expanded_weight(self) -> Tensor:
        """The expanded Conv2d weight, cached (module docstring).

        Reused while the weight is unchanged (same storage, same in-place version, dtype and device) and,
        when gradients are recorded, only while the cached tensor's graph is unused by a backward pass.
        """
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        recording = torch.is_grad_enabled() and weight.requires_grad
        cached = self._expansion
        if cached is not None and cached.key == key and (cached.live[0] or not recording):
            return cached.tensor
        tensor = self._compute_expansion()
        live = [recording]
        if recording:
            # A flag list, not the entry: the hook must not hold the tensor (no reference cycle).
            tensor.register_hook(lambda grad: live.__setitem__(0, False))
        self._expansion = _Expansion(key, tensor, live)
        return tensor

    def to_conv2d(self) -> nn.Conv2d:
        w = self._compute_expansion().detach()
        conv = nn.Conv2d(
            w.shape[1], w.shape[0], w.shape[-1], self.stride, self.padding, bias=self.bias is not None
        )
        conv.weight.data.copy_(w)
        if self.bias is not None:
            conv.bias.data.copy_(self.expanded_bias().detach())
        return conv

    def expanded_bias(self) -> Tensor | None:
        return None if self.bias is None else self.bias.repeat_interleave(self.group.order)


def _transform_stack(weight: Tensor, group: Group) -> Tensor:
    """Stack ``T_g weight`` over g on a new axis 1: (C_out, ..., k, k) -> (C_out, |G|, ..., k, k)."""
    return torch.stack([group.transform_image(weight, g) for g in range(group.order)], dim=1)


class LiftingConv2d(_FilterBank):
    """Image -> regular fields: ``out[c, g] = x * (T_g psi_c)`` (cross-correlation)."""

    def __init__(
        self,
        in_channels: int,
        out_fields: int,
        group: Group,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("equivariant convolutions need an odd kernel_size (a filter centre)")
        self.group, self.stride = group, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.out_fields = out_fields
        self.weight = nn.Parameter(torch.empty(out_fields, in_channels, kernel_size, kernel_size))
        # Fan-in equals that of the expanded Conv2d, so the usual ResNet initialisation carries over.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None
        self._init_filters(group, kernel_size)

    def _expanded_shape(self) -> tuple[int, ...]:
        return (self.out_fields * self.group.order, *self.weight.shape[1:])

    def _transform(self, weight: Tensor) -> Tensor:
        """(C_out |G|, C_in, k, k), output channel ``c * |G| + g``."""
        w = self._masked(_transform_stack(self._masked(weight), self.group))
        return w.reshape(self._expanded_shape())

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, |G|, H', W')."""
        y = F.conv2d(x, self.expanded_weight(), self.expanded_bias(), self.stride, self.padding)
        return y.view(y.shape[0], self.out_fields, self.group.order, *y.shape[-2:])


class GroupConv2d(_FilterBank):
    """Regular -> regular fields: ``out[c, g] = sum_{c', h} F[c', h] * (T_g psi[c, c', g^-1 h])``."""

    def __init__(
        self,
        in_fields: int,
        out_fields: int,
        group: Group,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("equivariant convolutions need an odd kernel_size (a filter centre)")
        self.group, self.stride = group, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.in_fields, self.out_fields = in_fields, out_fields
        self.weight = nn.Parameter(torch.empty(out_fields, in_fields, group.order, kernel_size, kernel_size))
        nn.init.kaiming_normal_(
            self.weight.view(out_fields, -1, kernel_size, kernel_size), mode="fan_out", nonlinearity="relu"
        )
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None
        self._init_filters(group, kernel_size)

    def _expanded_shape(self) -> tuple[int, ...]:
        order, k = self.group.order, self.weight.shape[-1]
        return (self.out_fields * order, self.in_fields * order, k, k)

    def _transform(self, weight: Tensor) -> Tensor:
        """(C_out |G|, C_in |G|, k, k), channels ``c * |G| + g`` on both sides."""
        order = self.group.order
        spatial = self._masked(
            _transform_stack(self._masked(weight), self.group)
        )  # (C_out, G, C_in, G, k, k)
        gather = self.group.regular_permutation.to(weight.device)  # [g, h] = g^-1 h
        index = gather.view(1, order, 1, order, 1, 1).expand(spatial.shape)
        return torch.gather(spatial, 3, index).reshape(self._expanded_shape())

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, |G|, H, W) -> (B, C_out, |G|, H', W')."""
        b = x.shape[0]
        y = F.conv2d(
            x.reshape(b, -1, *x.shape[-2:]),
            self.expanded_weight(),
            self.expanded_bias(),
            self.stride,
            self.padding,
        )
        return y.view(b, self.out_fields, self.group.order, *y.shape[-2:])


class OddSides(nn.Module):
    """Makes even spatial sides odd, equivariantly: a 2 x 2 average at stride 1 along each even axis
    (side S -> S - 1); odd axes pass unchanged. Input (B, ..., H, W) with any leading dims; no parameters.

    Before a stride-2 stage it keeps C4 / D4 networks exact at even sides (module docstring).
    """

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        kernel = (2 - height % 2, 2 - width % 2)
        if kernel == (1, 1):
            return x
        lead = x.shape[:-2]
        out = F.avg_pool2d(x.reshape(-1, 1, height, width), kernel, stride=1)
        return out.view(*lead, *out.shape[-2:])


class GroupBatchNorm(nn.BatchNorm3d):
    """Batch norm over (B, |G|, H, W) per field: (B, C, |G|, H, W) in and out."""

    def to_batchnorm2d(self, order: int) -> nn.BatchNorm2d:
        """Per-channel BatchNorm2d over C |G| channels with the shared statistics repeated (eval-mode equal)."""
        bn = nn.BatchNorm2d(
            self.num_features * order, eps=self.eps, momentum=self.momentum, affine=self.affine
        )
        with torch.no_grad():
            if self.affine:
                bn.weight.copy_(self.weight.repeat_interleave(order))
                bn.bias.copy_(self.bias.repeat_interleave(order))
            bn.running_mean.copy_(self.running_mean.repeat_interleave(order))
            bn.running_var.copy_(self.running_var.repeat_interleave(order))
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class GroupBasicBlock(nn.Module):
    """ResNet basic block on regular fields; the shortcut is a 1x1 group conv + BN when shapes change."""

    def __init__(
        self,
        in_fields: int,
        out_fields: int,
        group: Group,
        stride: int = 1,
        kernel_size: int = 3,
        exact_downsampling: bool = True,
    ) -> None:
        super().__init__()
        # A strided block sees odd sides only (module docstring, "Input sides"); no parameters.
        self.odd_sides = OddSides() if stride != 1 and exact_downsampling else None
        self.conv1 = GroupConv2d(in_fields, out_fields, group, kernel_size, stride)
        self.bn1 = GroupBatchNorm(out_fields)
        self.conv2 = GroupConv2d(out_fields, out_fields, group, kernel_size, 1)
        self.bn2 = GroupBatchNorm(out_fields)
        self.downsample = None
        if stride != 1 or in_fields != out_fields:
            self.downsample = nn.Sequential(
                GroupConv2d(in_fields, out_fields, group, 1, stride, padding=0), GroupBatchNorm(out_fields)
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.odd_sides is not None:
            x = self.odd_sides(x)
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)

    def export(self, order: int) -> PlainBasicBlock:
        downsample = None
        if self.downsample is not None:
            downsample = nn.Sequential(
                self.downsample[0].to_conv2d(), self.downsample[1].to_batchnorm2d(order)
            )
        return PlainBasicBlock(
            self.conv1.to_conv2d(),
            self.bn1.to_batchnorm2d(order),
            self.conv2.to_conv2d(),
            self.bn2.to_batchnorm2d(order),
            downsample,
            OddSides() if self.odd_sides is not None else None,
        )


class PlainBasicBlock(nn.Module):
    """The exported block: ordinary Conv2d / BatchNorm2d / ReLU with a residual connection (and, in a
    strided block, the parameter-free :class:`OddSides` before it)."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        bn1: nn.BatchNorm2d,
        conv2: nn.Conv2d,
        bn2: nn.BatchNorm2d,
        downsample: nn.Module | None,
        odd_sides: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.odd_sides = odd_sides

    def forward(self, x: Tensor) -> Tensor:
        if self.odd_sides is not None:
            x = self.odd_sides(x)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class PlainGroupResNet(nn.Module):
    """What :meth:`SteerableResNet.export` returns: torchvision-like names, only standard layers."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        bn1: nn.BatchNorm2d,
        layers: list[nn.Sequential],
        fields: int,
        order: int,
        group_pool: str,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = conv1, bn1, nn.ReLU()
        for i, layer in enumerate(layers):
            self.add_module(f"layer{i + 1}", layer)
        self.num_layers = len(layers)
        # Group pooling: view channels c*|G| + g as (C, |G|) and reduce the |G| axis.
        pool3d = nn.AdaptiveMaxPool3d if group_pool == "max" else nn.AdaptiveAvgPool3d
        self.group_pool = nn.Sequential(
            nn.Unflatten(1, (fields, order)), pool3d((1, None, None)), nn.Flatten(1, 2)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.group_pool(self.forward_features(x))), 1)


# ----------------------------------------------------------------------------------------------------
# The backbone.


@dataclass
class SteerableConfig(BackboneConfig):
    # Empty: the group in the registered name (steerable_c4 -> "c4"). Otherwise "c<N>" or "d<N>".
    group: str = ""
    stem_width: int = 16  # fields (channels per group element) of the lifting layer
    widths: tuple[int, ...] = (16, 32, 64)  # fields per stage; stage i > 0 has stride 2
    depths: tuple[int, ...] = (1, 1, 1)  # basic blocks per stage
    # Odd kernel sides; 0: 3 when the group acts exactly (C4, D4), else 5 (a 3x3 filter cannot be
    # rotated by 45 degrees in any useful sense).
    stem_kernel: int = 0  # lifting conv
    kernel_size: int = 0  # group convs in the blocks
    group_pool: Literal["max", "mean"] = "max"
    # True: even sides are averaged 2 x 2 before each stride-2 stage, exact at every side; False: the
    # earlier direct subsampling, exact only when (side - 1) % 2**stride2_stages == 0 (module docstring).
    exact_downsampling: bool = True

    tiny_input_size: ClassVar[int] = 17

    @classmethod
    def tiny(cls) -> SteerableConfig:
        """A seconds-fast setting for tests (input side 17)."""
        return cls(stem_width=4, widths=(4, 8), depths=(1, 1))


class SteerableResNet(nn.Module):
    """A group-equivariant ResNet: lifting conv, GroupBasicBlock stages, group pool, spatial mean.

    ``forward_features`` returns the equivariant map *flattened* to (B, C |G|, h, w) (channel
    ``c * |G| + g``, the layout of the exported plain network); ``forward_group_features`` returns the
    same tensor as (B, C, |G|, h, w). ``num_features`` is C (the pooled, invariant width).
    """

    def __init__(
        self,
        group: Group,
        stem_width: int = 16,
        widths: tuple[int, ...] = (16, 32, 64),
        depths: tuple[int, ...] = (1, 1, 1),
        stem_kernel: int = 0,
        kernel_size: int = 0,
        group_pool: Literal["max", "mean"] = "max",
        exact_downsampling: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {depths} must be non-empty and of equal length")
        if group_pool not in ("max", "mean"):
            raise ValueError(f"group_pool must be 'max' or 'mean', got {group_pool!r}")
        self.group = group
        self.group_pool = group_pool
        self.exact_downsampling = exact_downsampling
        self.num_features = widths[-1]
        self.num_stride2 = len(widths) - 1
        default_kernel = 3 if group.all_exact else 5
        stem_kernel, kernel_size = stem_kernel or default_kernel, kernel_size or default_kernel
        self.conv1 = LiftingConv2d(3, stem_width, group, stem_kernel)
        self.bn1 = GroupBatchNorm(stem_width)
        in_fields = stem_width
        self.num_layers = len(widths)
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [
                GroupBasicBlock(
                    in_fields if j == 0 else width,
                    width,
                    group,
                    2 if i > 0 and j == 0 else 1,
                    kernel_size,
                    exact_downsampling,
                )
                for j in range(depth)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_fields = width

    def is_equivariant_size(self, height: int, width: int) -> bool:
        """Whether a (height, width) input gives exact equivariance to 90-degree rotations: every square
        side with ``exact_downsampling``, else sides with ``(S - 1) % 2**stride2_stages == 0``."""
        if height != width:
            return False
        return self.exact_downsampling or (height - 1) % (2**self.num_stride2) == 0

    def forward_group_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> regular fields (B, C, |G|, h, w)."""
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C |G|, h, w), channel ``c * |G| + g``."""
        y = self.forward_group_features(x)
        return y.reshape(y.shape[0], -1, *y.shape[-2:])

    def pool_group(self, fields: Tensor) -> Tensor:
        """(B, C, |G|, h, w) -> invariant-in-g map (B, C, h, w)."""
        return fields.amax(dim=2) if self.group_pool == "max" else fields.mean(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C) group-pooled, spatially averaged (invariant) features."""
        return self.pool_group(self.forward_group_features(x)).mean(dim=(-2, -1))

    @torch.no_grad()
    def export(self) -> PlainGroupResNet:
        """An equivalent network of plain Conv2d / BatchNorm2d / ReLU / pooling (equal in eval mode)."""
        order = self.group.order
        layers = [
            nn.Sequential(*[block.export(order) for block in getattr(self, f"layer{i + 1}")])
            for i in range(self.num_layers)
        ]
        plain = PlainGroupResNet(
            self.conv1.to_conv2d(),
            self.bn1.to_batchnorm2d(order),
            layers,
            self.num_features,
            order,
            self.group_pool,
        )
        return plain.train(self.training)

    export_formats = ("safetensors",)
    export_note = (
        "safetensors only: the equivalent plain-conv network's weights (ONNX has no rot90); its strided "
        "blocks first average even input sides 2 x 2 (PlainBasicBlock.odd_sides)"
    )

    def export_state_dict(self) -> dict[str, Tensor]:
        """State dict of :meth:`export` (expanded plain-conv weights; ``conv1.weight``, ``layer1.0.bn1.*``...)."""
        return {k: v.detach().clone() for k, v in self.export().state_dict().items()}


def _register(name: str, default_group: str) -> None:
    @BACKBONES.register(
        name, SteerableConfig, description=f"steerable ResNet equivariant to {default_group.upper()}"
    )
    def build(cfg: SteerableConfig) -> SteerableResNet:
        group = parse_group(cfg.group or default_group)
        return SteerableResNet(
            group,
            cfg.stem_width,
            tuple(cfg.widths),
            tuple(cfg.depths),
            cfg.stem_kernel,
            cfg.kernel_size,
            cfg.group_pool,
            cfg.exact_downsampling,
        )


for _name, _group in (("steerable_c4", "c4"), ("steerable_d4", "d4"), ("steerable_c8", "c8")):
    _register(_name, _group)

__all__ = [
    "GroupBasicBlock",
    "GroupBatchNorm",
    "GroupConv2d",
    "LiftingConv2d",
    "OddSides",
    "PlainGroupResNet",
    "SteerableConfig",
    "SteerableResNet",
]
