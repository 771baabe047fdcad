"""Figures of ``equissl equivariance --run``: predicted against true relative rotation angle, and
retrieval examples of the objective's predictor.

- :func:`angle_figure` -- for each representation part, the rotation-prediction head's val pairs (the
  pairs of the rotation R^2): the angle of the predicted quaternion of ``R1^-1 R2`` against the true one
  (degrees, :func:`equissl.eval.rotation_metrics.rotation_angle`); a representation that encodes the
  rotation puts the points on the diagonal.
- :func:`retrieval_examples` / :func:`retrieval_figure` -- for objectives with a predictor (SIE, seq-JEPA,
  EquiCaps), a few val queries of the MRR protocol (an object's first view, the action to another of its
  views): the query view, the target view the prediction should retrieve, and the views whose embeddings
  lie nearest the prediction among all val views (cosine unless ``normalize_predictions=false``), each
  marked with its object and its pose error to the target (the angle of ``R_target^-1 R_retrieved``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor

from equissl.eval import rotation_metrics as rm
from equissl.latents import absolute_quat
from equissl.ssl.base import EquivariantObjective


def angle_figure(angles: dict[str, tuple[Tensor, Tensor]], out: Path, title: str) -> Path:
    """``angles[part] = (true, predicted)`` (P,) degrees -> one scatter per part, with the diagonal."""
    fig, axes = plt.subplots(1, len(angles), figsize=(4.6 * len(angles), 4.6), squeeze=False)
    for axis, (part, (true, predicted)) in zip(axes[0], angles.items()):
        axis.scatter(true.numpy(), predicted.numpy(), s=5, alpha=0.5)
        axis.plot([0, 180], [0, 180], color="black", linewidth=1, linestyle="--")
        correlation = torch.corrcoef(torch.stack([true.double(), predicted.double()]))[0, 1]
        axis.set_title(f"{part}: Pearson r = {float(correlation):.2f} ({len(true)} val pairs)")
        axis.set_xlabel("true relative rotation angle (deg)")
        axis.set_ylabel("predicted angle (deg)")
        axis.set_xlim(0, 180)
        axis.set_ylim(0, 180)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pair_angles(predictions: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(true, predicted) rotation angles in degrees of the val pairs a rotation regression filled in."""
    true = torch.rad2deg(rm.rotation_angle(predictions["val_target"])).float()
    predicted = torch.rad2deg(rm.rotation_angle(predictions["val_pred"])).float()
    return true, predicted


def _pose_error_deg(quats_a: Tensor, quats_b: Tensor) -> Tensor:
    """Angle (degrees) of the rotation between two absolute poses, row by row (q and -q alike)."""
    dots = (F.normalize(quats_a.double(), dim=-1) * F.normalize(quats_b.double(), dim=-1)).sum(-1).abs()
    return torch.rad2deg(2 * torch.acos(dots.clamp(max=1.0))).float()


@torch.no_grad()
def retrieval_examples(
    objective: EquivariantObjective,
    data: dict[str, Tensor],
    count: int = 4,
    top: int = 5,
    normalize: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """``count`` queries (seeded, target != source) with the rows of their source, target and ``top``
    nearest views to the prediction: ``{"source", "target", "retrieved": [rows], "same_object": [bool],
    "pose_error_deg": [float]}``; rows index ``data`` (one split of the equivariance extraction)."""
    source, target = rm.predictor_queries(data["objects"])
    moved = torch.nonzero(source != target).flatten()
    if len(moved) == 0:
        return []
    chosen = moved[torch.randperm(len(moved), generator=torch.Generator().manual_seed(seed))[:count]]
    source, target = source[chosen], target[chosen]
    latents, embeddings = data["latents"], data["equi_embedding"]
    action = objective.action_from_latents(latents[source].to(device), latents[target].to(device))
    predicted = objective.predict_equivariant(embeddings[source].to(device), action).float().cpu()
    queries, keys = predicted, embeddings.float()
    if normalize:
        queries, keys = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    nearest = (queries @ keys.T).topk(min(top, len(keys)), dim=1).indices
    quats = absolute_quat(latents)
    examples = []
    for row, (s, t) in enumerate(zip(source.tolist(), target.tolist())):
        retrieved = nearest[row]
        examples.append(
            {
                "source": s,
                "target": t,
                "retrieved": retrieved.tolist(),
                "same_object": (data["objects"][retrieved] == data["objects"][t]).tolist(),
                "pose_error_deg": _pose_error_deg(
                    quats[retrieved], quats[t].expand(len(retrieved), 4)
                ).tolist(),
            }
        )
    return examples


def retrieval_figure(examples: list[dict], data: dict[str, Tensor], dataset, out: Path, title: str) -> Path:
    """A row per example: query view | target view | the retrieved views (titles: object match, pose error).
    ``dataset``: the split's 3DIEBench-format dataset (``object_views``), for the images."""
    views: dict[int, dict[int, Tensor]] = {}

    def image(row: int) -> Tensor:
        obj, view = int(data["objects"][row]), int(data["views"][row])
        if obj not in views:
            item = dataset.object_views(obj)
            views[obj] = {int(v): img for v, img in zip(item["views"], item["images"])}
        return views[obj][view].permute(1, 2, 0).numpy()

    columns = 2 + max(len(e["retrieved"]) for e in examples)
    fig, axes = plt.subplots(
        len(examples), columns, figsize=(1.7 * columns, 1.9 * len(examples)), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for row, example in enumerate(examples):
        axes[row][0].imshow(image(example["source"]))
        axes[row][0].set_title(f"query\nobj {int(data['objects'][example['source']])}", fontsize=8)
        axes[row][1].imshow(image(example["target"]))
        axes[row][1].set_title("target\n(to retrieve)", fontsize=8)
        for k, (hit, same, error) in enumerate(
            zip(example["retrieved"], example["same_object"], example["pose_error_deg"])
        ):
            axis = axes[row][2 + k]
            axis.imshow(image(hit))
            match = "same obj" if same else f"obj {int(data['objects'][hit])}"
            axis.set_title(
                f"#{k + 1} {match}\npose err {error:.0f} deg", fontsize=8, color="green" if same else "red"
            )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
