"""CARE (Gupta, Robinson, Lim, Villar, Jegelka, ICLR 2024): Contrastive Augmentation-induced Rotational
Equivariance.

``loss = InfoNCE(z, z') + w * L_equi(z, z')``: besides SimCLR's contrastive term, the *angles* between the
L2-normalised embeddings of the images of a batch must be the same in the two views,
``(z_i . z_j - z'_i . z'_j)^2`` for ``i != j``. When every image of a group goes through the same
augmentation ``a`` (and every image of view 2 through the same ``a'``), a zero loss means ``a`` and ``a'``
act on the embedding sphere as one orthogonal map for the whole group (the paper's Proposition: equal
Gram matrices <=> related by an orthogonal transformation). The batch is split into ``num_chunks``
contiguous chunks and ``L_equi`` is the mean over chunks of the per-chunk loss. Within a chunk every image
shares one augmentation draw per view (the augmentation API's batch-shared mode): ``chunk_pairs=
"per_chunk"`` draws one pair per chunk (``ViewSpec(shared_chunks=num_chunks)``), ``"shared"`` one pair for
the whole batch (``ViewSpec(shared_chunks=1)``), as the official code does.

Fidelity notes (paper vs Sharut/CARE, ``cifar10_cifar100_stl10/main.py`` and ``utils.py``):

- Scale of ``L_equi``: the paper defines it as an expectation over pairs of inputs,
  ``E_a E_{x,x'} [f(a x)^T f(a x') - f(x)^T f(x')]^2``; its estimate on a chunk of n is the mean over the
  n(n-1) ordered pairs ``i != j`` (``equivariance_scale="pair_mean"``, default). The official code computes
  ``2 * mean_i sum_{j != i} (...)^2``, i.e. ``2 (n - 1)`` times that (62x for the default chunks of 32):
  ``equivariance_scale="official"``. The weight ``w = 0.01`` (README, STL-10) was tuned with the official
  scale, so with ``"pair_mean"`` the same ``w`` weighs the term 2(n-1) times less.
- Views: the official code computes InfoNCE on two independently (per-sample) augmented views and
  ``L_equi`` on two *further* views of the same images augmented with chunk-shared parameters (four
  forward passes). Our view pipeline gives an objective one set of views, so both terms use the same
  chunk-shared pair (two forward passes); InfoNCE's negatives within a chunk then share augmentations.
- One pair per chunk or per batch: the official code draws the ``L_equi`` pair inside
  ``vmap(process, randomness="same")`` over the stacked chunks (``cifar10_cifar100_stl10/main.py``; the
  ImageNet-100 code likewise per GPU), so every chunk of a step gets the *same* pair -- the chunks only
  decide which Gram entries are compared. The paper's figures come from that code: ``chunk_pairs=
  "shared"``. Our default is ``"per_chunk"`` (one pair per chunk), because here InfoNCE reads the same
  views: ``"shared"`` would give it one augmentation pair per step for the whole batch, where the official
  InfoNCE sees per-sample pairs; ``"per_chunk"`` keeps ``num_chunks`` pairs a step for InfoNCE while each
  chunk's ``L_equi`` still compares images that share their augmentations.
- Projector: the official CIFAR/STL model's ``Linear(512, 512, no bias) -> BN -> ReLU -> Linear(512, 128)``
  (output bias kept), embeddings L2-normalised; temperature 0.5; InfoNCE with 2N - 2 negatives per anchor
  (SimCLR's NT-Xent, mean over the 2N anchors; :func:`equissl.ssl.losses.nt_xent`).
- The two views go through the backbone separately (BatchNorm statistics per view), as the code does.
- Chunks: the code uses ``B // num_chunks`` rows per chunk; we use the augmentation API's partition
  (:func:`equissl.augmentations.image.chunk_index`, sizes differing by at most one), identical when
  ``num_chunks`` divides the batch.
- Base: ``base="simclr"`` (default) is the CIFAR / STL-10 code's SimCLR InfoNCE above. ``base="mocov3"``
  replaces it with MoCo v3's symmetrised momentum InfoNCE (a predictor on the online projections, keys
  from an EMA copy of backbone and projector, :mod:`equissl.ssl.mocov3`; ``temperature``, ``ema_base``,
  ``ema_schedule``, ``pred_hidden_dim``); ``L_equi`` stays on the online projections. The official
  ImageNet-100 code (``imagenet100/model/builder.py``) builds on a momentum encoder too, but MoCo v2's
  (a queue of 65536 negative keys, momentum 0.999, temperature 0.07, shuffled BN), which is not offered.
- Distributed: every rank draws its own chunk parameters, so chunks never span ranks and ``L_equi`` is
  this rank's mean over its chunks (the mean over ranks is the mean over all chunks, as in the official
  ImageNet-100 code's ``--equiv-splits-per-gpu``); InfoNCE draws negatives from the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equissl.augmentations.image import chunk_index
from equissl.config import NonNegativeFloat, ObjectiveConfig
from equissl.errors import ConfigError
from equissl.heads.mlp import projection_mlp
from equissl.registry import OBJECTIVES
from equissl.ssl.base import Objective
from equissl.ssl.ema import MomentumSchedule, ema_momentum, ema_update, frozen_copy
from equissl.ssl.losses import momentum_infonce, nt_xent, upcast
from equissl.ssl.simclr import global_pair
from equissl.types import StepOutput, Views, ViewSpec

EquivarianceScale = Literal["pair_mean", "official"]
ChunkPairs = Literal["per_chunk", "shared"]


def orthogonal_equivariance_loss(
    z_a: Tensor, z_b: Tensor, num_chunks: int, scale: EquivarianceScale = "pair_mean"
) -> Tensor:
    """CARE's ``L_equi``: mismatch of the off-diagonal Gram matrices of the two views, per chunk.

    z_a, z_b: (N, D) embeddings of the two views (L2-normalised here); row i of each comes from image i.
    num_chunks: the rows form ``num_chunks`` contiguous chunks (:func:`chunk_index`), within which each
    view's augmentation is shared; every chunk needs at least 2 rows.
    scale: ``"pair_mean"`` -- per chunk of n, ``1 / (n (n-1)) sum_{i != j} (G_ij - G'_ij)^2`` with
    ``G = Z Z^T`` (the paper's expectation); ``"official"`` -- ``2 / n sum_{i != j} (G_ij - G'_ij)^2``.
    Returns the mean over chunks (a scalar). Zero iff, within every chunk, ``z'_i = Q z_i`` for one
    orthogonal Q (after normalisation).
    """
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"orthogonal_equivariance_loss: expected two (N, D) embeddings of equal shape, got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if scale not in ("pair_mean", "official"):
        raise ValueError(f"scale must be 'pair_mean' or 'official', got {scale!r}")
    n = z_a.shape[0]
    if num_chunks < 1 or n < 2 * num_chunks:
        raise ValueError(
            f"orthogonal_equivariance_loss: {num_chunks} chunks of a batch of {n} leave a chunk "
            "with fewer than 2 rows"
        )
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a, z_b = F.normalize(upcast(z_a), dim=1), F.normalize(upcast(z_b), dim=1)
        index = chunk_index(n, num_chunks, z_a.device)
        total = z_a.new_zeros(())
        for chunk in range(num_chunks):
            rows = (index == chunk).nonzero().squeeze(1)
            a, b = z_a.index_select(0, rows), z_b.index_select(0, rows)
            size = rows.numel()
            difference = a @ a.T - b @ b.T
            squares = difference.pow(2).sum() - torch.diagonal(difference).pow(2).sum()  # off-diagonal only
            total = total + (squares / (size * (size - 1)) if scale == "pair_mean" else 2 * squares / size)
        return total / num_chunks


@dataclass
class CAREConfig(ObjectiveConfig):
    name: str = "care"
    temperature: float = 0.5
    proj_hidden_dims: tuple[int, ...] = (512,)
    proj_out_dim: int = 128
    equivariance_weight: float = 0.01  # w (README / STL-10; the CIFAR-10 script uses 0.03 with 16 chunks)
    num_chunks: int = 8  # batch chunks with shared augmentation parameters (official --equiv-splits)
    equivariance_scale: EquivarianceScale = "pair_mean"  # "official": the code's 2 (n - 1) x larger scale
    # one augmentation pair per chunk, or one for the whole batch as the official code (module docstring)
    chunk_pairs: ChunkPairs = "per_chunk"
    base: Literal["simclr", "mocov3"] = "simclr"  # the invariance term: SimCLR's or MoCo v3's InfoNCE
    pred_hidden_dim: int = 512  # mocov3: the predictor's hidden width
    ema_base: float = 0.99  # mocov3: momentum of the key encoder
    ema_schedule: MomentumSchedule = "cosine"
    # mocov3, > 0: the base momentum from the run's length, 1 - 1 / (ema_time_constant * max_steps), replacing
    # ema_base (ssl/ema.py run_base; for runs far shorter than the paper's)
    ema_time_constant: NonNegativeFloat = 0.0


class CARE(Objective):
    required_views = ViewSpec(source="image", num_views=2, shared_chunks=8)

    def __init__(self, backbone: nn.Module, cfg: CAREConfig | None = None) -> None:
        super().__init__(backbone)
        cfg = cfg or CAREConfig()
        if cfg.temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {cfg.temperature}")
        if cfg.num_chunks < 1:
            raise ConfigError(f"objective.num_chunks must be >= 1, got {cfg.num_chunks}")
        if cfg.equivariance_weight < 0:
            raise ConfigError(f"objective.equivariance_weight must be >= 0, got {cfg.equivariance_weight}")
        if cfg.chunk_pairs not in ("per_chunk", "shared"):
            raise ConfigError(
                f"objective.chunk_pairs must be 'per_chunk' or 'shared', got {cfg.chunk_pairs!r}"
            )
        self.cfg = cfg
        draws = cfg.num_chunks if cfg.chunk_pairs == "per_chunk" else 1
        self.required_views = ViewSpec(source="image", num_views=2, shared_chunks=draws)
        self.projector = projection_mlp(
            backbone.num_features,
            cfg.proj_hidden_dims,
            cfg.proj_out_dim,
            norm="bn",
            last_norm="none",
            last_bias=True,
        )
        if cfg.base == "mocov3":
            out = cfg.proj_out_dim
            self.predictor = projection_mlp(out, [cfg.pred_hidden_dim], out, norm="bn", last_bias=True)
            self.target_backbone = frozen_copy(backbone)
            self.target_projector = frozen_copy(self.projector)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.cfg.base == "mocov3":
            cfg = self.cfg
            tau = ema_momentum(
                step - 1, total_steps, cfg.ema_base, cfg.ema_schedule, time_constant=cfg.ema_time_constant
            )
            ema_update(self.target_backbone, self.backbone, tau)
            ema_update(self.target_projector, self.projector, tau)

    def invariance_loss(self, x_a: Tensor, x_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
        """SimCLR's NT-Xent of the projections, or MoCo v3's momentum InfoNCE (``base``)."""
        if self.cfg.base == "simclr":
            return nt_xent(z_a, z_b, self.cfg.temperature)
        with torch.no_grad():
            k_a = self.target_projector(self.target_backbone(x_a))
            k_b = self.target_projector(self.target_backbone(x_b))
        t = self.cfg.temperature
        return momentum_infonce(self.predictor(z_a), k_b, t) + momentum_infonce(self.predictor(z_b), k_a, t)

    def _check_shared(self, views: Views) -> None:
        """The equivariance term is only meaningful when augmentations are shared within each chunk (and,
        with ``chunk_pairs="shared"``, across the batch)."""
        draws = self.required_views.shared_chunks
        index = chunk_index(views.batch_size, draws)
        for params in views.params[:2]:
            crop = params.get("crop")
            if crop is None:
                continue
            crop = crop.detach().cpu()
            for chunk in range(draws):
                rows = crop[index == chunk]
                if not bool((rows == rows[0]).all()):
                    raise ValueError(
                        f"CARE (chunk_pairs={self.cfg.chunk_pairs}) needs augmentation parameters shared "
                        f"within each of {draws} batch chunk(s) (ViewSpec.shared_chunks)"
                    )

    def forward(self, views: Views) -> StepOutput:
        x_a, x_b = global_pair(views, "CARE")
        self._check_shared(views)
        h_a = self.backbone(x_a)
        z_a, z_b = self.projector(h_a), self.projector(self.backbone(x_b))
        contrastive = self.invariance_loss(x_a, x_b, z_a, z_b)
        equivariance = orthogonal_equivariance_loss(
            z_a, z_b, self.cfg.num_chunks, self.cfg.equivariance_scale
        )
        loss = contrastive + self.cfg.equivariance_weight * equivariance
        name = "loss/nt_xent" if self.cfg.base == "simclr" else "loss/infonce"
        metrics = {name: contrastive.detach(), "loss/equi": equivariance.detach()}
        return StepOutput(loss=loss, metrics=metrics, features=h_a.detach())


@OBJECTIVES.register(
    "care",
    CAREConfig,
    description="CARE (Gupta et al. 2024): InfoNCE + orthogonal equivariance of embeddings",
)
def build_care(cfg: CAREConfig, backbone: nn.Module) -> CARE:
    return CARE(backbone, cfg)
