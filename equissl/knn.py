"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., 2018, InstDisc protocol).

A leaf module (torch only): the offline `equissl knn` and the online val kNN of the trainer use it.

Cosine similarity on L2-normalised features; each of the k nearest train neighbours votes for its
label with weight ``exp(similarity / temperature)``; the class with the largest summed vote wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.errors import UserError


@torch.no_grad()
def knn_predict(
    train_x: Tensor,
    train_y: Tensor,
    query_x: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """(N, D), (N,), (M, D) -> predicted labels (M,)."""
    if k < 1 or k > len(train_x):
        raise UserError(f"knn k={k} must lie in [1, {len(train_x)}] (the train split's size)")
    num_classes = int(train_y.max()) + 1
    train_x = F.normalize(train_x.float(), dim=1)
    predictions = []
    for queries in F.normalize(query_x.float(), dim=1).split(chunk):
        similarity, index = (queries @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes, device=queries.device)
        votes.scatter_add_(1, train_y[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_top1(
    train_x: Tensor, train_y: Tensor, query_x: Tensor, query_y: Tensor, k: int = 20, temperature: float = 0.07
) -> float:
    """Top-1 accuracy in percent."""
    predicted = knn_predict(train_x, train_y, query_x, k, temperature)
    return 100.0 * (predicted == query_y).float().mean().item()
