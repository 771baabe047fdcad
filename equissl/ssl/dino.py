"""DINO (Caron et al., ICCV 2021): self-distillation with no labels.

A student (backbone + DINO head) matches, on every crop, the output distribution of a momentum teacher
(EMA copy, no gradient) on the *other* global crops: ``dino_loss`` (:mod:`equissl.ssl.losses.distillation`)
with the teacher centred (``c <- m c + (1 - m) mean(teacher outputs)``, m = 0.9, over the global batch)
and sharpened (temperature 0.04 -> 0.07, linear warm-up over the first 30 epochs; student 0.1).

Multi-crop: 2 global crops (``augment.crop_size``, scale ``global_crop_scale``) seen by student and
teacher, ``local_crops`` local crops (``local_crop_size``, scale ``local_crop_scale``) seen by the student
only; the view maker makes them (``ViewSpec.crops``) and the student runs each size as one batch (its
``MultiCropWrapper``). Head: ``MLP(in, 2048, 2048, 256)`` with GELU, L2 normalisation, then a
weight-normalised linear layer ``256 -> 65536`` without bias whose norm is fixed at 1 (``norm_last_layer``).
That last layer gets no update during the first ``freeze_last_layer_epochs`` epochs (its gradients are
dropped before the optimizer step, :meth:`DINO.before_optimizer_step`). The teacher follows the student
with momentum 0.996 raised to 1 by a cosine over the run (:mod:`equissl.ssl.ema`).

State: the centre, the teacher's weights and the number of optimizer steps taken are in the state dict,
so a resumed run continues bit-identically.

Fidelity notes (paper vs facebookresearch/dino):
- Teacher temperature: the paper warms it up from 0.04 to 0.07 over 30 epochs (our defaults); the code's
  defaults keep 0.04 throughout (``warmup_teacher_temp_epochs=0``, ``teacher_temp=0.04``), its README
  recommends the paper's values for long runs. The code indexes the warm-up by epoch (constant within an
  epoch), as we do (epoch = optimizer steps // steps per epoch).
- Crops: the code's defaults are global scale (0.4, 1), 8 local crops of 96 px at scale (0.05, 0.4) (the
  paper's ablations use (0.32, 1)); its ResNet-50 recipe uses (0.14, 1) / (0.05, 0.14).
- Head BN: none for ViTs; the code's ResNet-50 recipe has ``use_bn_in_head`` (``head_batchnorm=True``).
- ``norm_last_layer=False`` (the code's option for stabler ViT-B training) lets the last layer's norm
  train.
- Gradient clipping: the code clips each parameter's gradient to norm 3.0; ``trainer.clip_grad_norm``
  clips the global norm. Not offered per parameter.
- Weight decay: the code raises it from 0.04 to 0.4 with a cosine; ``optim.weight_decay`` is constant
  here. Not offered (the recipes use 0.04, the start value).
- Augmentations: the code blurs global crop 1 always, global crop 2 with p=0.1 (and solarises it with
  p=0.2), local crops with p=0.5: ``augment.view_blur_prob=[1.0, 0.1] augment.view_solarize_prob=[0.0,
  0.2] augment.blur_prob=0.5`` (the per-view lists set the global crops; the paper-budget recipe sets
  them).
- The centre is updated from the teacher's outputs of both global crops after the loss, as the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.config import NonNegativeFloat, ObjectiveConfig
from equissl.errors import ConfigError
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.ema import MomentumSchedule, ema_momentum, ema_update, frozen_copy
from equissl.ssl.losses import dino_center_update, dino_loss
from equissl.types import CropGroup, StepOutput, Views, ViewSpec


@dataclass
class DINOConfig(ObjectiveConfig):
    name: str = "dino"
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    head_batchnorm: bool = False  # the code's use_bn_in_head (its ResNet-50 recipe)
    norm_last_layer: bool = True
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_temperature_epochs: int = 30
    center_momentum: float = 0.9
    ema_base: float = 0.996
    ema_schedule: MomentumSchedule = "cosine"
    # > 0: the base momentum from the run's length, 1 - 1 / (ema_time_constant * max_steps), replacing
    # ema_base (ssl/ema.py run_base; for runs far shorter than the paper's)
    ema_time_constant: NonNegativeFloat = 0.0
    freeze_last_layer_epochs: int = 1
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 8
    local_crop_size: int = 96
    local_crop_scale: tuple[float, float] = (0.05, 0.4)


class WeightNormLinear(nn.Module):
    """``y = x (g v / |v|)^T`` per output row, no bias: the weight-normalised last layer of DINO's head.

    ``weight_v`` (K, d) trains; ``weight_g`` (K, 1) starts at 1 and trains only when ``train_norm``.
    """

    def __init__(self, in_dim: int, out_dim: int, train_norm: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=train_norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim): ``[Linear -> (BN) -> GELU] x (layers - 1) -> Linear(bottleneck)``, L2
    normalisation, :class:`WeightNormLinear` (the official ``DINOHead``; linears truncated-normal 0.02, zero
    biases)."""

    def __init__(self, in_dim: int, cfg: DINOConfig) -> None:
        super().__init__()
        if cfg.head_layers < 1:
            raise ConfigError(f"objective.head_layers must be >= 1, got {cfg.head_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(cfg.head_layers - 1):
            layers.append(nn.Linear(width, cfg.hidden_dim))
            if cfg.head_batchnorm:
                layers.append(nn.BatchNorm1d(cfg.hidden_dim))
            layers.append(nn.GELU())
            width = cfg.hidden_dim
        layers.append(nn.Linear(width, cfg.bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(
            cfg.bottleneck_dim, cfg.out_dim, train_norm=not cfg.norm_last_layer
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temperature(cfg: DINOConfig, epoch: int) -> float:
    """Linear warm-up from ``warmup_teacher_temperature`` at epoch 0 to ``teacher_temperature`` at epoch
    ``warmup_teacher_temperature_epochs - 1`` (the code's ``np.linspace`` over the warm-up epochs), then
    constant."""
    warmup = cfg.warmup_teacher_temperature_epochs
    if epoch >= warmup:
        return cfg.teacher_temperature
    if warmup == 1:
        return cfg.warmup_teacher_temperature
    fraction = epoch / (warmup - 1)
    return cfg.warmup_teacher_temperature + fraction * (
        cfg.teacher_temperature - cfg.warmup_teacher_temperature
    )


def dino_crops(cfg: DINOConfig) -> tuple[CropGroup, ...]:
    """The multi-crop groups: 2 global crops (size from ``augment.crop_size``) and the local ones."""
    groups = [CropGroup("global", 2, 0, tuple(cfg.global_crop_scale))]
    if cfg.local_crops:
        groups.append(CropGroup("small", cfg.local_crops, cfg.local_crop_size, tuple(cfg.local_crop_scale)))
    return tuple(groups)


class DINO(Objective):
    def __init__(self, backbone: nn.Module, cfg: DINOConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or DINOConfig()
        if min(cfg.student_temperature, cfg.teacher_temperature, cfg.warmup_teacher_temperature) <= 0:
            raise ConfigError("objective.*_temperature must be > 0")
        if not 0 <= cfg.center_momentum <= 1 or not 0 <= cfg.ema_base <= 1:
            raise ConfigError("objective.center_momentum and objective.ema_base must be in [0, 1]")
        if cfg.local_crops < 0 or cfg.local_crop_size < 1:
            raise ConfigError("objective.local_crops must be >= 0 and objective.local_crop_size >= 1")
        self.cfg = cfg
        self.required_views = ViewSpec("image", num_views=2, num_small=cfg.local_crops, crops=dino_crops(cfg))
        self.head = DINOHead(backbone.num_features, cfg)
        self.target_backbone = frozen_copy(backbone)
        self.target_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self.register_buffer("momentum", torch.tensor(float(cfg.ema_base), dtype=torch.float64))
        # self.steps_per_epoch: set by the trainer (Objective.set_steps_per_epoch); 0: unknown, epoch 0

    # -- hooks -----------------------------------------------------------------------------------
    def _epoch_of(self, step: int) -> int:
        """The epoch (0-based) that optimizer step ``step`` (0-based) falls in."""
        return math.floor(step / self.steps_per_epoch + 1e-9) if self.steps_per_epoch else 0

    def epoch(self) -> int:
        return self._epoch_of(int(self.steps_done))

    def last_layer_frozen(self, step: int) -> bool:
        """True while optimizer step ``step`` (0-based) lies in the first ``freeze_last_layer_epochs``."""
        if not self.steps_per_epoch:
            return self.cfg.freeze_last_layer_epochs > 0
        return self._epoch_of(step) < self.cfg.freeze_last_layer_epochs

    def before_optimizer_step(self, step: int) -> None:
        """Drop the last layer's gradients while it is frozen (the code's ``cancel_gradients_last_layer``:
        ``grad = None``, so the optimizer leaves it, its moments and its weight decay alone)."""
        if self.last_layer_frozen(step):
            for parameter in self.head.last_layer.parameters():
                parameter.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        cfg = self.cfg
        tau = ema_momentum(
            step - 1, total_steps, cfg.ema_base, cfg.ema_schedule, time_constant=cfg.ema_time_constant
        )
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_head, self.head, tau)
        self.momentum.fill_(tau)
        self.steps_done.fill_(step)

    # -- training --------------------------------------------------------------------------------
    def student(self, crops: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Head outputs (B, K) of every crop, and the backbone features of crop 0; crops of one size go
        through the backbone as one batch."""
        batch = crops[0].shape[0]
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape == crops[start].shape:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        features = torch.cat(features)
        return list(self.head(features).split(batch)), features[:batch]

    def forward(self, views: Views) -> StepOutput:
        if len(views.images) != 2 or len(views.small) != self.cfg.local_crops:
            raise ValueError(
                f"DINO needs 2 global and {self.cfg.local_crops} local crops, got "
                f"{len(views.images)} and {len(views.small)}"
            )
        student, features = self.student([*views.images, *views.small])
        with torch.no_grad():  # stop-gradient: the teacher only follows the student by EMA
            teacher = list(
                self.target_head(self.target_backbone(torch.cat(views.images))).split(features.shape[0])
            )
        temperature = teacher_temperature(self.cfg, self.epoch())
        loss = dino_loss(student, teacher, self.center, self.cfg.student_temperature, temperature)
        if self.training:
            self.center.copy_(dino_center_update(self.center, teacher, self.cfg.center_momentum))
        metrics = {
            "loss/dino": loss.detach(),
            "teacher_temperature": temperature,
            "ema_momentum": self.momentum.detach().float(),
        }
        return StepOutput(loss=loss, metrics=metrics, features=features.detach())


@OBJECTIVES.register(
    "dino", DINOConfig, description="DINO (Caron et al. 2021): multi-crop self-distillation, momentum teacher"
)
def build_dino(cfg: DINOConfig, backbone: nn.Module) -> DINO:
    return DINO(backbone, cfg)
