"""BatchNorm over the global batch (``trainer.sync_batchnorm=true``), on every device.

On CUDA every BatchNorm of the model becomes torch's ``nn.SyncBatchNorm`` (fused NCCL kernels). Elsewhere
(CPU, gloo: ``nn.SyncBatchNorm`` runs on GPUs only) it becomes :class:`GlobalBatchNorm`, whose
training-mode statistics are those of the batch of all processes together, through the autograd
all-gather. Either way 2 processes with B/2 images compute what 1 process computes with B images, and
parameter and buffer names are unchanged, so checkpoints and exports are unaffected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from equissl.distributed import gather_with_grad, is_distributed, world_size


def _global_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` (C,) over processes, with gradient to every process (see gather_with_grad)."""
    return gather_with_grad(x.unsqueeze(0)).sum(0)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm{1,2,3}d whose training statistics span every process (two-pass mean / variance)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()  # the sampler gives every rank equal batches
        mean = _global_sum(x.sum(dims)) / count
        var = _global_sum(((x - mean.view(shape)) ** 2).sum(dims)) / count
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), factor)
        return y


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every ``_BatchNorm`` replaced by a :class:`GlobalBatchNorm` sharing its
    parameters and buffers (scale-only norms keep ``bias=None``)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        new_child = convert_to_global_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with global-batch BatchNorms for ``device``: torch's ``nn.SyncBatchNorm`` on CUDA,
    :class:`GlobalBatchNorm` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_to_global_batchnorm(module)
