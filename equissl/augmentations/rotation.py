"""Four-fold (90-degree) image rotations, as E-SSL's rotation-prediction task uses them.

Convention: rotation index ``k`` in {0, 1, 2, 3} means ``torch.rot90(x, k, dims=(2, 3))``, a rotation by
``k * 90`` degrees *counter-clockwise as the image is displayed* (row 0 at the top): the top-right corner
moves to the top-left. The angle parameter is ``k * pi / 2`` radians in the same (counter-clockwise)
sense. Rotating by ``-k`` (``torch.rot90(x, -k, dims=(2, 3))``) undoes it exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equissl.augmentations.image import chunk_index


def _check_square(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"90-degree rotations in a batch need square images, got {tuple(x.shape[-2:])}")


def rotate_four_ways(x: Tensor) -> tuple[Tensor, Tensor]:
    """Every image under all four rotations.

    x: (B, C, H, H). Returns ``x_rot`` (4B, C, H, H), rotation-major: rows ``k*B .. (k+1)*B - 1`` hold
    ``torch.rot90(x, k, dims=(2, 3))``; and ``labels`` (4B,) int64 with those ``k``.
    """
    _check_square(x)
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def rotate_by_index(x: Tensor, rotation_index: Tensor) -> Tensor:
    """Rotate image b by ``rotation_index[b] * 90`` degrees counter-clockwise; indices are taken mod 4."""
    _check_square(x)
    index = rotation_index.detach().cpu().remainder(4)
    out = x.clone()
    for k in range(1, 4):
        rows = (index == k).nonzero().squeeze(1).to(x.device)
        if rows.numel():
            out[rows] = torch.rot90(x.index_select(0, rows), k, dims=(2, 3))
    return out


class RandomFourFoldRotation(nn.Module):
    """``rot(x, generator, shared_chunks=0) -> (x_rot, params)`` with a uniformly drawn 90-degree rotation.

    params: ``rotation_index`` (B,) int64 in {0, 1, 2, 3} and ``angle`` (B,) float32 radians
    (``rotation_index * pi / 2``, counter-clockwise as displayed). ``shared_chunks = n > 0`` draws one
    rotation per contiguous chunk, as in :mod:`equissl.augmentations.image`.
    """

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, shared_chunks: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        batch_size = x.shape[0]
        index = chunk_index(batch_size, shared_chunks)
        draws = batch_size if shared_chunks == 0 else shared_chunks
        device = generator.device if generator is not None else torch.device("cpu")
        rotation = torch.randint(0, 4, (draws,), generator=generator, device=device)[index.to(device)]
        rotation = rotation.to(x.device)
        params = {"rotation_index": rotation, "angle": rotation.float() * (math.pi / 2)}
        return rotate_by_index(x, rotation), params
