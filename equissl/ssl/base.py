"""The objective contract: an ``nn.Module`` that owns its backbone and heads and turns Views into a loss."""

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
        """Hook called after each optimizer step (EMA targets, schedules of loss weights)."""

    def evaluation_metrics(self, images: Tensor) -> dict[str, Tensor]:
        """Method-specific metrics on eval views (B, 3, H, W), normalised, no augmentation.

        Returns per-sample values (B,) so that ``equissl probe`` can average them over a split
        (E-SSL: rotation-prediction accuracy). Default: none.
        """
        return {}
