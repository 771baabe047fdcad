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
    steps_per_epoch: float = 0.0  # optimizer steps in one epoch of the training data; 0 until set

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        # A backbone may add terms of its own to every training loss (a canonicalizer's prior toward the
        # identity pose): taken after each forward, whatever the method (``_add_backbone_terms``).
        self.register_forward_hook(_add_backbone_terms)

    def set_steps_per_epoch(self, steps: float) -> None:
        """The trainer tells the objective how many optimizer steps make one epoch (before training), for
        schedules that count epochs (seq-JEPA's per-epoch EMA momentum; DINO's teacher temperature and frozen
        last layer)."""
        if steps <= 0:
            raise ValueError(f"steps per epoch must be > 0, got {steps}")
        self.steps_per_epoch = float(steps)

    def forward(self, views: Views) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook called after each optimizer step (EMA targets, schedules of loss weights).

        step: optimizer steps done so far (1-based); total_steps: ``trainer.max_steps``.
        """

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


def _add_backbone_terms(objective: Objective, args: tuple, output: StepOutput) -> StepOutput | None:
    """Forward hook: ``output`` with the backbone's auxiliary loss and metrics added, when the backbone has
    any (``take_auxiliary_losses() -> (loss or None, metrics)``, e.g.
    :class:`equissl.backbones.symmetry.Canonicalized`); None (unchanged) otherwise."""
    take = getattr(objective.backbone, "take_auxiliary_losses", None)
    if take is None or not isinstance(output, StepOutput):
        return None
    loss, metrics = take()
    if loss is None and not metrics:
        return None
    return StepOutput(
        loss=output.loss if loss is None else output.loss + loss.to(output.loss.dtype),
        metrics={**output.metrics, **metrics},
        features=output.features,
    )


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

    Optionally, for a predictor trained on other embeddings or from several views (seq-JEPA):

    ``representations(images)["target_embedding"]`` (B, E)
        the embedding the predictor is trained to match, where it is not ``equi_embedding`` (seq-JEPA:
        the EMA target encoder's output); the report then also ranks predictions against these.
    ``prediction_context`` (int, default 1) and ``predict_from_context(equi_embeddings, latents, action)``
        the prediction from M = ``prediction_context`` views, as in training: (B, M, E) embeddings of the
        views, their (B, M, 7) latents (for the actions between them) and the (B, A) action from the last
        of them to the target -> (B, E). Default (M = 1): :meth:`predict_equivariant` of the one view.
    """

    prediction_context: int = 1

    def representations(self, images: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def action_from_latents(self, latents_1: Tensor, latents_2: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict_equivariant(self, equi_embedding: Tensor, action: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def object_representations(self, reps: dict[str, Tensor], latents: Tensor) -> dict[str, Tensor]:
        return reps

    def predict_from_context(self, equi_embeddings: Tensor, latents: Tensor, action: Tensor) -> Tensor:
        if equi_embeddings.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__} predicts from one view; got {equi_embeddings.shape[1]} context views"
            )
        return self.predict_equivariant(equi_embeddings[:, 0], action)
