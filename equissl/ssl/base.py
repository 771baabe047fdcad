"""The objective contract: an ``nn.Module`` that owns its backbone and heads and turns Views into a loss.

Two classes:

- :class:`Objective`, what every method implements for training (``required_views``, ``forward``,
  ``on_step_end``) and offers for evaluation (``representations``, ``evaluation_metrics``);
- :class:`EquivariantObjective`, an objective with an equivariant part and a predictor of how that part
  moves under a known transformation (SIE, EquiCaps, seq-JEPA). ``equissl equivariance --run`` measures
  any such objective by part and through its predictor (PRE, MRR, H@k); it decides by this class, not by
  looking for methods.
"""

from __future__ import annotations

from torch import Tensor, nn

from equissl.types import StepOutput, Views, ViewSpec


class Objective(nn.Module):
    """Base class of every pretraining objective.

    Subclasses set ``required_views`` (what the data pipeline must produce) and implement ``forward``.
    ``self.backbone`` is what the probes and the export use.
    """

    required_views: ViewSpec = ViewSpec()

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, views: Views) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook called after each optimizer step (EMA targets, schedules of loss weights).

        step: optimizer steps done so far (1-based); total_steps: ``trainer.max_steps``.
        """

    def set_epoch_length(self, steps_per_epoch: int) -> None:
        """Hook called once by the trainer before the first step: optimizer steps in one pass over the
        training data at the run's global batch. Objectives with schedules in epochs (DINO) keep it.
        Default: ignored."""

    def before_optimizer_step(self, step: int) -> None:
        """Hook called when the gradients of optimizer step ``step`` (0-based: steps done so far) are
        complete (accumulated, all-reduced, clipped), before the optimizer uses them; e.g. DINO drops its
        last layer's gradients during the first epoch. Default: nothing."""

    def constant_lr_parameters(self) -> list[str]:
        """Names (as in ``self.named_parameters()``) of parameters whose learning rate stays at the base
        value, without warmup or decay (SimSiam's predictor). Default: none."""
        return []

    def evaluation_metrics(self, images: Tensor) -> dict[str, Tensor]:
        """Method-specific metrics on eval views (B, 3, H, W), normalised, no augmentation.

        Returns per-sample values (B,) so that ``equissl probe`` can average them over a split
        (E-SSL: rotation-prediction accuracy). Default: none.
        """
        return {}

    def representations(self, images: Tensor) -> dict[str, Tensor]:
        """Representations of normalised images (B, 3, H, W) to evaluate, by part name.

        Default: ``{"full": backbone(images)}`` (B, num_features). Objectives with an invariant and an
        equivariant part add ``"inv"`` and ``"equi"`` (see :class:`EquivariantObjective`). Called in eval
        mode under ``torch.no_grad()``.
        """
        return {"full": self.backbone(images)}


class EquivariantObjective(Objective):
    """An objective whose representation has an equivariant part and a predictor of its motion.

    The evaluation protocol (``equissl equivariance --run``, :mod:`equissl.eval.equivariance_report`):

    ``representations(images)``
        ``{"inv": (B, Di), "equi": (B, De), "full": (B, D), "equi_embedding": (B, E)}``: the invariant and
        equivariant parts, the backbone's pooled features, and the space the predictor acts in.
    ``action_from_latents(latents_1, latents_2) -> (B, A)``
        the predictor's action for the transformation from view 1 to view 2, from (B, 7) latents
        (:mod:`equissl.latents`).
    ``predict_equivariant(equi_embedding, action) -> (B, E)``
        the predicted ``equi_embedding`` of the target view.
    ``object_representations(reps, latents) -> reps``
        the representations of the V views of one object (latents (V, 7)) rewritten with context from
        the object's other views (seq-JEPA: ``inv`` aggregates a sequence of views, as in training).
        Default: unchanged.
    """

    def representations(self, images: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def action_from_latents(self, latents_1: Tensor, latents_2: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict_equivariant(self, equi_embedding: Tensor, action: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def object_representations(self, reps: dict[str, Tensor], latents: Tensor) -> dict[str, Tensor]:
        return reps
