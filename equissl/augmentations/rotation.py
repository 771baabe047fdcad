"""A random four-fold (90-degree) rotation augmentation that returns its parameters.

The rotations themselves and their convention are :func:`equissl.groups.rotate_by_index`: index ``k``
means ``torch.rot90(x, k, dims=(2, 3))``, ``k * 90`` degrees counter-clockwise as displayed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from equissl.augmentations.image import chunk_index
from equissl.groups import rotate_by_index


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
