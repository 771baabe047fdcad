"""Equivariance of backbones, measured: shift consistency and group-equivariance error.

- :func:`shift_consistency` -- Ding et al. / Chaman & Dokmanic "consistency": the fraction of inputs
  whose top prediction (argmax of the model's output) is the same under two random circular shifts,
  plus the relative change of the output.
- :func:`equivariance_error` -- ``max|f(g x) - g f(x)| / max|f(x)|`` for given input / output actions
  (escnn's ``check_equivariance`` in one number).
- group helpers: random elements of C_N / D_N (indices into :class:`equissl.groups.Group`)
  and the actions on images and on regular-representation feature maps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from equissl.groups import Group, circular_shift


def random_shifts(batch_size: int, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, 2) long shifts (rows, columns), each uniform in [-max_shift, max_shift]."""
    return torch.randint(-max_shift, max_shift + 1, (batch_size, 2), generator=generator)


@torch.no_grad()
def shift_consistency(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    generator: torch.Generator | None = None,
    max_shift: int = 32,
) -> dict[str, float]:
    """Compare ``model`` on two independent random circular shifts of each input.

    ``x`` (B, C, H, W); ``model(x)`` (B, K) logits or features. Returns ``consistency`` (fraction of the
    B inputs whose argmax over K agrees), ``relative_change`` (mean over inputs of
    ``|f(s1 x) - f(s2 x)| / |f(s1 x)|``, L2 norms) and ``max_relative_change``.
    """
    first = circular_shift(x, random_shifts(x.shape[0], max_shift, generator))
    second = circular_shift(x, random_shifts(x.shape[0], max_shift, generator))
    out_first = model(first).flatten(1)
    out_second = model(second).flatten(1)
    agree = (out_first.argmax(dim=1) == out_second.argmax(dim=1)).double().mean()
    change = (out_first - out_second).norm(dim=1) / out_first.norm(dim=1).clamp_min(1e-12)
    return {
        "consistency": agree.item(),
        "relative_change": change.mean().item(),
        "max_relative_change": change.max().item(),
    }


@torch.no_grad()
def equivariance_error(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    group_action_in: Callable[[Tensor], Tensor],
    group_action_out: Callable[[Tensor], Tensor],
) -> float:
    """``max|f(g x) - g f(x)| / max|f(x)|`` for one group element g given by its two actions."""
    fx = f(x)
    return (
        (f(group_action_in(x)) - group_action_out(fx)).abs().max() / fx.abs().max().clamp_min(1e-12)
    ).item()


def random_group_element(
    group: Group, generator: torch.Generator | None = None, exclude_identity: bool = False
) -> int:
    """Index of a uniformly drawn element of ``group`` (``exclude_identity``: never index 0)."""
    low = 1 if exclude_identity and group.order > 1 else 0
    return int(torch.randint(low, group.order, (), generator=generator))


def random_cyclic_element(
    n: int, generator: torch.Generator | None = None, exclude_identity: bool = False
) -> tuple[Group, int]:
    """(C_N, index of a random rotation ``r^k``)."""
    group = Group("C", n)
    return group, random_group_element(group, generator, exclude_identity)


def random_dihedral_element(
    n: int, generator: torch.Generator | None = None, exclude_identity: bool = False
) -> tuple[Group, int]:
    """(D_N, index of a random ``r^k f^m``)."""
    group = Group("D", n)
    return group, random_group_element(group, generator, exclude_identity)


def image_action(group: Group, element: int) -> Callable[[Tensor], Tensor]:
    """``x -> T_g x`` on (..., S, S) images (exact for multiples of 90 degrees, else bicubic)."""
    return lambda x: group.transform_image(x, element)


def regular_action(group: Group, element: int, group_dim: int = 2) -> Callable[[Tensor], Tensor]:
    """``F -> g . F`` on regular fields (B, C, |G|, h, w): spatial ``T_g`` and ``h -> g^-1 h`` on the group axis."""
    return lambda features: group.transform_regular(features, element, group_dim)


def invariant_action() -> Callable[[Tensor], Tensor]:
    """The trivial action, for invariant outputs."""
    return lambda y: y
