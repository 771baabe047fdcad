"""Optimizers (SGD, Adam, AdamW, LARS), parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from equissl.config import OptimConfig
from equissl.errors import ConfigError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    The trust ratio ``eta * ||w|| / (||g|| + wd * ||w||)`` multiplies the update of every parameter
    whose group has ``lars_adapt=True``; groups of biases and norms set it to False (as in the
    SimCLR/BYOL/VICReg recipes, which exclude them from both weight decay and adaptation).
    """

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_adapt": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = (
                    p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                )
                if group["lars_adapt"]:
                    param_norm, update_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["eta"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def is_bias_or_norm(name: str, param: nn.Parameter) -> bool:
    """Biases and the affine parameters of norm layers are 1-d; so are learnable scalars/tokens."""
    return param.ndim <= 1 or name.endswith(".bias")


def constant_lr_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that some submodule (an objective) asks to keep at the base learning
    rate through its ``constant_lr_parameters()`` (SimSiam's predictor)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        ask = getattr(module, "constant_lr_parameters", None)
        if callable(ask):
            names.update(f"{prefix}.{name}" if prefix else name for name in ask())
    return names


# The trainer wraps the objective (``PretrainModel.objective``); ``optim.lr_scales`` names modules of the
# objective, so this leading component of a parameter's name is not part of what its keys match.
WRAPPER_PREFIX = "objective."


def lr_scale_of(name: str, scales: dict[str, float]) -> tuple[str | None, float]:
    """(the ``optim.lr_scales`` key that sets parameter ``name``'s multiplier, the multiplier): the longest
    key that is the name's dotted module path or a prefix of it at a dot, else (None, 1)."""
    path = name.removeprefix(WRAPPER_PREFIX)
    matches = [key for key in scales if path == key or path.startswith(key + ".")]
    if not matches:
        return None, 1.0
    key = max(matches, key=len)
    return key, scales[key]


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters in groups: with / without weight decay (and LARS adaptation), each split again
    into scheduled and constant learning rate (``constant_lr: True``, see :func:`constant_lr_names`) and by
    learning-rate multiplier (``lr_scale``, from ``optim.lr_scales``; a key that names no trainable
    parameter is a ConfigError)."""
    constant = constant_lr_names(model)
    buckets: dict[tuple[bool, bool, float], list] = {}
    used = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (cfg.exclude_bias_and_norm and is_bias_or_norm(name, param))
        key, scale = lr_scale_of(name, cfg.lr_scales)
        used.add(key)
        buckets.setdefault((decays, name in constant, scale), []).append(param)
    unused = sorted(set(cfg.lr_scales) - used)
    if unused:
        modules = sorted(
            {name.removeprefix(WRAPPER_PREFIX).split(".")[0] for name, _ in model.named_parameters()}
        )
        raise ConfigError(
            f"optim.lr_scales: {', '.join(map(repr, unused))} names no trainable parameter; expected dotted "
            f"module paths of the objective (its modules: {', '.join(modules)})"
        )
    groups = []
    for (decays, fixed, scale), params in sorted(
        buckets.items(), key=lambda item: (not item[0][0], item[0][1], item[0][2])
    ):
        group = {"params": params, "weight_decay": cfg.weight_decay if decays else 0.0}
        if not decays:
            group["lars_adapt"] = False
        if fixed:
            group["constant_lr"] = True
        if scale != 1.0:
            group["lr_scale"] = scale
        groups.append(group)
    return groups or [{"params": [], "weight_decay": cfg.weight_decay}]


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Base lr scaled by the global batch (processes x accumulation x per-process batch)."""
    ratio = global_batch / cfg.reference_batch
    return {"none": cfg.lr, "linear": cfg.lr * ratio, "sqrt": cfg.lr * math.sqrt(ratio)}[cfg.lr_scaling]


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    lr = scaled_lr(cfg, global_batch)
    for group in groups:
        if "lr_scale" in group:  # the scheduler's base lr of a group is the lr it starts with
            group["lr"] = lr * group["lr_scale"]
    if cfg.name == "sgd":
        for group in groups:
            group.pop("lars_adapt", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    for group in groups:
        group.pop("lars_adapt", None)
    optimizer_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=lr, betas=cfg.betas)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from 0, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _constant(step: int) -> float:
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """Warmup + cosine for every group, except groups marked ``constant_lr`` (kept at the base lr, as
    SimSiam's predictor in its official code's ``--fix-pred-lr``)."""

    def scheduled(step: int) -> float:
        return warmup_cosine(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)

    lambdas = [_constant if group.get("constant_lr") else scheduled for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
