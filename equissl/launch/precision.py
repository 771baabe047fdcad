"""``trainer.precision``, ``trainer.channels_last`` and ``trainer.compile``: how the step computes.

- ``fp32``: float32 throughout. ``fp64``: the model and the views in float64 (numerical checks only).
- ``bf16``: autocast to bfloat16 (accelerate's autocast); losses stay float32
  (:mod:`equissl.ssl.losses.precision`). No loss scaling: bfloat16 has float32's exponent range.
- ``fp16``: autocast to float16 with a dynamic loss scale (``torch.amp.GradScaler``), on CUDA and on
  CPU alike. accelerate's own fp16 mode is not used because it neither autocasts nor scales on the CPU,
  and its optimizer wrapper would step inside ``optimizer.step()``, before the trainer's finite check.
  The scaler's state (scale and growth tracker) is in every checkpoint (``scaler.pt``), so a resume
  continues with the same scale and stays bit-identical. A step whose unscaled gradients overflow is the
  scaler's business, not a fault: the scale is halved, the step is not taken (nor counted), and the run
  goes on with the next batch (``train/overflow_steps`` counts them); a non-finite *loss* is still a
  fault (``trainer.skip_nonfinite_steps``).

``channels_last`` stores the model's 4-D weights and the views' images in NHWC order (faster
convolutions on recent GPUs and on CPUs with oneDNN); the maths is unchanged, results agree to float
rounding. ``compile`` wraps the objective's forward in ``torch.compile`` (``trainer.compile_mode``:
``default``, ``reduce-overhead`` -- CUDA graphs, for small batches --, ``max-autotune`` or
``max-autotune-no-cudagraphs``; ``trainer.compile_backend=aot_eager`` traces without generating
kernels, to check in seconds that a model compiles); the state-dict keys are unchanged, so checkpoints,
resumes and exports do not notice. Compilation takes tens of seconds at the first step (and after a shape change).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import Tensor, nn


def accelerate_mixed_precision(precision: str) -> str:
    """The ``mixed_precision`` handed to accelerate: only bf16 is left to it (see the module docstring)."""
    return "bf16" if precision == "bf16" else "no"


def fp16_autocast(precision: str, device: torch.device):
    """A float16 autocast context for ``fp16`` (accelerate's context handles bf16), else a no-op."""
    if precision != "fp16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for ``fp16`` (torch's defaults: initial scale 2^16, growth every 2,000
    overflow-free steps); None for every other precision."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def map_tensors(value, fn):
    """``fn`` applied to every tensor inside (nested lists / dicts / dataclasses of) ``value``."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value


def as_float64(value):
    """Floating tensors inside ``value`` (see :func:`map_tensors`) as float64 (``fp64`` runs)."""
    return map_tensors(value, lambda t: t.double() if t.is_floating_point() else t)


def as_channels_last(value):
    """4-D floating tensors (images) inside ``value`` in channels-last memory format."""

    def convert(t: Tensor) -> Tensor:
        if t.dim() == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t

    return map_tensors(value, convert)


def compile_objective(objective: nn.Module, mode: str, backend: str = "inductor") -> None:
    """Compile ``objective``'s forward in place (``nn.Module.compile``: parameter names are kept);
    ``mode`` is inductor's (other backends take none)."""
    objective.compile(backend=backend, mode=mode if backend == "inductor" else None)
