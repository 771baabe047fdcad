"""Self-distillation: DINO's cross entropy between a centred, sharpened teacher and the student
(Caron et al., ICCV 2021), and the update of the teacher's centre.

Pure functions: the teacher's outputs are taken as given, so the stop-gradient is the caller's (a teacher
computed under ``torch.no_grad()``); the centre is returned, not updated in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.distributed import all_reduce_mean
from equissl.ssl.losses.precision import full_precision, upcast


def _check(student: Sequence[Tensor], teacher: Sequence[Tensor], center: Tensor) -> None:
    if not teacher or len(student) < len(teacher):
        raise ValueError(
            f"dino_loss: needs at least one teacher crop and as many student crops, got "
            f"{len(student)} student and {len(teacher)} teacher crops"
        )
    shapes = {tuple(t.shape) for t in (*student, *teacher)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"dino_loss: every crop's output must be one (B, K) shape, got {sorted(shapes)}")
    if center.shape[-1] != student[0].shape[1]:
        raise ValueError(f"dino_loss: center {tuple(center.shape)} does not match K = {student[0].shape[1]}")


@full_precision
def dino_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    center: Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """DINO's loss: ``mean over pairs (t, s), s != t, of mean_b H(P_t(b), P_s(b))``.

    student: S crops' head outputs (B, K) each, the teacher's crops first (crop i of the student and of
    the teacher is the same view for i < T); teacher: T crops' head outputs (B, K) (the global views);
    center: (K,) or (1, K). ``P_t = softmax((teacher - center) / teacher_temperature)`` (centring and
    sharpening), ``P_s = softmax(student / student_temperature)``, ``H(p, q) = -sum_k p_k log q_k``. Pairs
    of a crop with itself are skipped: T * (S - 1) pairs (2 globals, 8 locals: 18).
    """
    _check(student, teacher, center)
    if student_temperature <= 0 or teacher_temperature <= 0:
        raise ValueError("dino_loss: temperatures must be > 0")
    center = upcast(center).reshape(1, -1)
    targets = [F.softmax((upcast(t) - center) / teacher_temperature, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(upcast(s) / student_temperature, dim=-1) for s in student]
    total, pairs = student[0].new_zeros((), dtype=log_probs[0].dtype), 0
    for t, target in enumerate(targets):
        for s, log_prob in enumerate(log_probs):
            if s == t:
                continue
            total = total + (-target * log_prob).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def dino_center_update(center: Tensor, teacher: Sequence[Tensor], momentum: float = 0.9) -> Tensor:
    """The new centre ``momentum * center + (1 - momentum) * mean of the teacher outputs``.

    teacher: the T crops' raw teacher outputs (B, K) of this step (before centring); the mean runs over
    every row of every rank (all-reduced), as the official ``update_center``. Returns (1, K), float32.
    """
    rows = torch.cat([upcast(t).detach() for t in teacher], dim=0)
    batch_center = all_reduce_mean(rows.mean(dim=0, keepdim=True))
    return momentum * upcast(center).reshape(1, -1) + (1 - momentum) * batch_center
