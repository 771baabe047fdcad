"""``equissl equivariance``: invariant / equivariant / full representations of a run, measured on the
object views of a 3DIEBench-format dataset (3DIEBench, shapes3d), saved as JSON and printed as a table.

For each split (train, val) every readable view of every object is embedded once by the run's objective in
eval mode (the view resized to the training crop and normalised, :func:`equissl.eval.features.preprocess`).
Then, per representation part:

- linear classification top-1 (train -> val; :func:`rotation_metrics.linear_classification`);
- rotation-prediction R^2 and colour-prediction R^2 from pairs of views of one object (an MLP fitted on
  train pairs, scored on val pairs; :func:`rotation_metrics.rotation_prediction_r2`);

and, for objectives with a predictor, PRE, MRR and Hits@k on train -> train and val -> val (SIE's
``eval_prediction_errors.py`` / ``eval_MRR_Hk.py`` modes): each object's first view is pushed through the
predictor with the action to each of its views; ``MRR_shuffled`` repeats the MRR with each query given
another query's action, so that a predictor which ignores its action shows as MRR == MRR_shuffled.
Objectives whose predictor is trained against other embeddings, or from several views (seq-JEPA: from M
views to the EMA target's encodings), are also measured that way (``prediction_target``): each object's
first M views are the context, the action goes from the last of them to each of the object's views, and
the candidates are the ``target_embedding`` of every view.

Colour R^2 is skipped (reported as ``None`` with the reason) when the colour latents do not vary in the
training split (a ``data.lighting=fixed`` render), where it is undefined.

The objective contract this module relies on is declared in :mod:`equissl.ssl.base`: every objective's
``representations(images)`` gives at least the ``full`` representation; an
:class:`~equissl.ssl.base.EquivariantObjective` adds ``inv`` / ``equi`` parts, its ``object_representations``
(applied per object), and the predictor (``action_from_latents``, ``predict_equivariant``,
``equi_embedding``) that PRE / MRR / H@k need.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from equissl.build import build_dataset
from equissl.config import Config, ConfigError, ProbeConfig, to_dict
from equissl.eval import rotation_metrics as rm
from equissl.eval.equivariance_plots import angle_figure, pair_angles, retrieval_examples, retrieval_figure
from equissl.eval.features import (
    checkpoint_digest,
    feature_key,
    load_cache,
    preprocess,
    save_cache,
    weights_identity,
)
from equissl.eval.records import write_report
from equissl.latents import COLOUR_LATENTS, absolute_quat
from equissl.runs import checkpoint_step, load_objective, load_run
from equissl.ssl.base import EquivariantObjective, Objective

PARTS = ("inv", "equi", "full")


@dataclass
class EquivarianceEvalConfig:
    """Settings of :func:`evaluate_equivariance` (``key=value`` overrides: :func:`equissl.config.parse_settings`)."""

    regression: rm.RegressionProtocol = field(default_factory=rm.RegressionProtocol)
    probe: ProbeConfig | None = None  # None: the run's probe section
    classification: bool = True
    colour: bool = True
    predictor: bool = True  # PRE / MRR / H@k when the objective has a predictor
    normalize_predictions: bool = True  # cosine retrieval (SIE's default; False = its --no-norm)
    hits_at: tuple[int, ...] = (1, 2, 5, 10)
    max_objects: int = 0  # per split, 0 = all; else that many objects evenly spaced (quick checks)
    batch_size: int = 256  # images per forward pass of the extraction
    num_workers: int = -1  # -1: the run's data.num_workers


# ----------------------------------------------------------------------------------------------------
# Loading and extraction


class _ObjectViews(Dataset):
    """Item i = every readable view of object ``objects[i]``:
    ``(object index, images uint8 (V, 3, H, W), latents (V, 7), label, view numbers (V,))``."""

    def __init__(self, dataset, objects: list[int]) -> None:
        self.dataset, self.objects = dataset, objects

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int):
        item = self.dataset.object_views(self.objects[index])
        return self.objects[index], item["images"], item["latents"], item["label"], item["views"]


def chosen_objects(num_objects: int, max_objects: int) -> list[int]:
    """All objects, or ``max_objects`` of them evenly spaced over the index (which lists objects class by
    class, so every class keeps its share)."""
    if max_objects <= 0 or max_objects >= num_objects:
        return list(range(num_objects))
    return torch.linspace(0, num_objects - 1, max_objects).round().long().unique().tolist()


def _as_list(batch):
    return batch


def _per_object(
    objective: EquivariantObjective, out: dict[str, Tensor], latents: list[Tensor]
) -> dict[str, Tensor]:
    """``objective.object_representations`` applied to each object's rows of ``out`` (object-major)."""
    counts = [len(item) for item in latents]
    pieces = [
        objective.object_representations({key: value[rows] for key, value in out.items()}, lat)
        for rows, lat in zip(torch.arange(sum(counts)).split(counts), latents)
    ]
    return {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}


@torch.no_grad()
def extract_split(
    objective: Objective,
    config: Config,
    split: str,
    settings: EquivarianceEvalConfig,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Representations of every view of every object of ``split``, on the CPU:
    ``{part: (N, D_part), "objects": (N,), "latents": (N, 7), "labels": (N,), "views": (N,)}``, object-major
    (``views``: each row's view number within its object)."""
    dataset = build_dataset(config, split)
    if not hasattr(dataset, "object_views"):
        raise ConfigError(
            f"dataset {config.data.name!r} has no object views: the equivariance evaluation needs "
            "a 3DIEBench-format dataset (3diebench, shapes3d)"
        )
    objects = chosen_objects(dataset.num_objects, settings.max_objects)
    views = getattr(dataset, "views_per_object", 1)
    workers = config.data.num_workers if settings.num_workers < 0 else settings.num_workers
    loader = DataLoader(
        _ObjectViews(dataset, objects),
        batch_size=max(1, settings.batch_size // views),
        num_workers=workers,
        collate_fn=_as_list,
    )
    collected: dict[str, list[Tensor]] = {}
    for batch in loader:
        images = torch.cat([item[1] for item in batch])
        out = objective.representations(preprocess(images.to(device), config))
        if isinstance(objective, EquivariantObjective):
            out = _per_object(objective, out, [item[2] for item in batch])
        extra = {
            "objects": torch.cat([torch.full((len(item[1]),), item[0], dtype=torch.long) for item in batch]),
            "latents": torch.cat([item[2].float() for item in batch]),
            "labels": torch.cat([item[3].reshape(1).expand(len(item[1])) for item in batch]).long(),
            "views": torch.cat([item[4] for item in batch]).long(),
        }
        for key, value in {**out, **extra}.items():
            collected.setdefault(key, []).append(
                value.detach().float().cpu() if value.is_floating_point() else value.cpu()
            )
    return {key: torch.cat(values) for key, values in collected.items()}


def cached_split(
    objective: Objective,
    config: Config,
    split: str,
    settings: EquivarianceEvalConfig,
    cache_dir: Path,
    weights: str,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """:func:`extract_split` memoised in ``cache_dir``, keyed by the weights' content (``weights``, see
    :func:`equissl.eval.features.weights_identity`), the objective's, backbone's and data settings, the
    split, the view and ``max_objects`` -- never by the checkpoint's path."""
    extra = {
        "kind": "equivariance",
        "objective": to_dict(config.objective),
        "max_objects": settings.max_objects,
    }
    key = feature_key(weights, config, split, extra)
    path = Path(cache_dir) / f"equivariance-{split}-{key[:16]}.pt"
    cached = load_cache(path, key)
    if cached is not None:
        return {name: value for name, value in cached.items() if name != "key"}
    data = extract_split(objective, config, split, settings, device)
    save_cache(path, {"key": key, **data})
    return data


# ----------------------------------------------------------------------------------------------------
# Metrics


def _predictions(
    objective: EquivariantObjective,
    embeddings: Tensor,
    latents: Tensor,
    source: Tensor,
    action_from: Tensor,
    action_to: Tensor,
    device: str | torch.device,
    batch_size: int,
) -> Tensor:
    """Predicted embeddings of the rows ``source`` moved by the actions ``action_from[i] -> action_to[i]``."""
    predicted = []
    for rows in torch.arange(len(source)).split(batch_size):
        action = objective.action_from_latents(
            latents[action_from[rows]].to(device), latents[action_to[rows]].to(device)
        )
        predicted.append(
            objective.predict_equivariant(embeddings[source[rows]].to(device), action).float().cpu()
        )
    return torch.cat(predicted)


def _context_predictions(
    objective: EquivariantObjective,
    data: dict[str, Tensor],
    context: Tensor,
    action_from: Tensor,
    action_to: Tensor,
    device: str | torch.device,
    batch_size: int,
) -> Tensor:
    """Predictions from the (Q, M) context rows with the actions ``action_from[i] -> action_to[i]``."""
    embeddings, latents = data["equi_embedding"], data["latents"]
    predicted = []
    for rows in torch.arange(len(context)).split(batch_size):
        action = objective.action_from_latents(
            latents[action_from[rows]].to(device), latents[action_to[rows]].to(device)
        )
        predicted.append(
            objective.predict_from_context(
                embeddings[context[rows]].to(device), latents[context[rows]].to(device), action
            )
            .float()
            .cpu()
        )
    return torch.cat(predicted)


def _retrieval_scores(
    predicted: Tensor,
    shuffled: Tensor,
    candidates: Tensor,
    data: dict[str, Tensor],
    target: Tensor,
    settings: EquivarianceEvalConfig,
) -> dict[str, float]:
    """PRE, MRR, H@k of ``predicted`` and the MRR of ``shuffled`` against ``candidates`` (one per row)."""
    quats = absolute_quat(data["latents"])
    scores = {
        "PRE": rm.prediction_retrieval_error(
            predicted, candidates, quats, quats[target], settings.normalize_predictions
        )
    }

    def ranks_of(prediction: Tensor) -> Tensor:  # rank of each query's true target among its object's views
        return rm.target_ranks(
            prediction,
            candidates,
            data["objects"],
            data["objects"][target],
            target,
            settings.normalize_predictions,
        )

    scores.update(rm.mrr_hits_at_k(ranks_of(predicted), settings.hits_at))
    scores["MRR_shuffled"] = rm.mrr_hits_at_k(ranks_of(shuffled), ())["MRR"]
    scores["queries"] = len(predicted)
    return scores


@torch.no_grad()
def predictor_metrics(
    objective: EquivariantObjective,
    data: dict[str, Tensor],
    settings: EquivarianceEvalConfig,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    seed: int = 0,
) -> dict[str, float]:
    """PRE, MRR and H@k of the objective's predictor on one split (queries and candidates both from it),
    and ``MRR_shuffled``: the MRR when each query is given another query's action (a seeded permutation),
    the control that says whether the predictor uses its action at all (equal MRRs: it does not)."""
    source, target = rm.predictor_queries(data["objects"])
    embeddings, latents = data["equi_embedding"], data["latents"]
    predicted = _predictions(objective, embeddings, latents, source, source, target, device, batch_size)
    other = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    shuffled = _predictions(
        objective, embeddings, latents, source, source[other], target[other], device, batch_size
    )
    return _retrieval_scores(predicted, shuffled, embeddings, data, target, settings)


@torch.no_grad()
def context_predictor_metrics(
    objective: EquivariantObjective,
    data: dict[str, Tensor],
    settings: EquivarianceEvalConfig,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    seed: int = 0,
) -> dict[str, float]:
    """As :func:`predictor_metrics`, for the predictor as trained: each object's first
    ``objective.prediction_context`` views as the context (:func:`rotation_metrics.context_queries`), the
    action from the last of them to each view, candidates ``data["target_embedding"]``."""
    context, target = rm.context_queries(data["objects"], objective.prediction_context)
    last = context[:, -1]
    predicted = _context_predictions(objective, data, context, last, target, device, batch_size)
    other = torch.randperm(len(target), generator=torch.Generator().manual_seed(seed))
    shuffled = _context_predictions(objective, data, context, last[other], target[other], device, batch_size)
    scores = _retrieval_scores(predicted, shuffled, data["target_embedding"], data, target, settings)
    return {**scores, "context_views": context.shape[1]}


def _pair_data(data: dict[str, Tensor], part: str) -> rm.PairData:
    return rm.PairData(features=data[part], objects=data["objects"], latents=data["latents"])


def evaluate_parts(
    objective: Objective,
    train: dict[str, Tensor],
    val: dict[str, Tensor],
    settings: EquivarianceEvalConfig,
    probe: ProbeConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    angles: dict[str, tuple[Tensor, Tensor]] | None = None,
) -> dict:
    """Every metric on the extracted representations of the two splits (see the module docstring);
    ``angles`` (a dict), when given, receives each part's (true, predicted) val-pair rotation angles."""
    parts = [part for part in PARTS if part in train]
    results: dict = {"parts": parts, "classification_top1": {}, "rotation_r2": {}, "colour_r2": {}}
    colour_varies = bool(train["latents"][:, list(COLOUR_LATENTS)].std(0).max() > 0)
    for part in parts:
        if settings.classification:
            results["classification_top1"][part] = rm.linear_classification(
                train[part], train["labels"], val[part], val["labels"], probe, seed
            )
        predictions: dict[str, Tensor] = {}
        results["rotation_r2"][part] = rm.rotation_prediction_r2(
            _pair_data(train, part), _pair_data(val, part), settings.regression, device, predictions
        )
        if angles is not None:
            angles[part] = pair_angles(predictions)
        if settings.colour and colour_varies:
            results["colour_r2"][part] = rm.colour_prediction_r2(
                _pair_data(train, part), _pair_data(val, part), settings.regression, device
            )
        elif settings.colour:
            results["colour_r2"][part] = {"r2": None, "skipped": "the colour latents are constant"}
    if settings.predictor and isinstance(objective, EquivariantObjective) and "equi_embedding" in train:
        results["prediction"] = {
            name: predictor_metrics(objective, data, settings, device, seed=seed)
            for name, data in (("train", train), ("val", val))
        }
    else:
        results["prediction"] = None
    results["prediction_target"] = None
    if results["prediction"] is not None and "target_embedding" in train:
        results["prediction_target"] = {
            name: context_predictor_metrics(objective, data, settings, device, seed=seed)
            for name, data in (("train", train), ("val", val))
        }
    return results


def evaluate_equivariance(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    settings: EquivarianceEvalConfig | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Measure a run's representations; write ``run_dir/eval/equivariance.json`` and return the report.

    run_dir: a pretraining run (holds ``checkpoints/``); checkpoint: a checkpoint directory (default: the
    newest complete one); settings: protocol (:class:`EquivarianceEvalConfig`); device: default CUDA when
    available. Also draws ``equivariance_angles.png`` and, with a predictor, ``equivariance_retrieval.png``
    (:mod:`equissl.eval.equivariance_plots`). Returns ``{"evaluation", "protocol", "run", "checkpoint",
    "checkpoint_sha256", "step", "objective", "dataset", "results", "settings", "figures", "seconds", "json"}`` with ``results`` as :func:`evaluate_parts`; :func:`format_equivariance` prints it.
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    settings = settings or EquivarianceEvalConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config, path = load_run(run_dir, checkpoint)
    objective = load_objective(config, path, device)
    out_dir = run_dir / "eval"
    weights = weights_identity(path, config.trainer.seed)
    train = cached_split(objective, config, "train", settings, out_dir, weights, device)
    val = cached_split(objective, config, "val", settings, out_dir, weights, device)
    probe = settings.probe or config.probe
    angles: dict[str, tuple[Tensor, Tensor]] = {}
    results = evaluate_parts(objective, train, val, settings, probe, config.trainer.seed, device, angles)
    title = f"{config.objective.name} / {config.backbone.name} on {config.data.name}, step {checkpoint_step(path)}"
    figures = {
        "angles": str(angle_figure(angles, out_dir / "equivariance_angles.png", f"{title}: val pairs"))
    }
    if results["prediction"] is not None:
        examples = retrieval_examples(
            objective, val, normalize=settings.normalize_predictions, seed=config.trainer.seed, device=device
        )
        if examples:
            figures["retrieval"] = str(
                retrieval_figure(
                    examples,
                    val,
                    build_dataset(config, "val"),
                    out_dir / "equivariance_retrieval.png",
                    f"{title}: predictor retrieval on val",
                )
            )
        results["retrieval_examples"] = examples
    report = {
        "evaluation": "equivariance",
        "protocol": "sie",
        "run": str(run_dir),
        "checkpoint": str(path),
        "checkpoint_sha256": checkpoint_digest(path),
        "step": checkpoint_step(path),
        "objective": config.objective.name,
        "backbone": config.backbone.name,
        "dataset": config.data.name,
        "views": {"train": len(train["objects"]), "val": len(val["objects"])},
        "results": results,
        "settings": dataclasses.asdict(settings),
        "figures": figures,
        "seconds": round(time.perf_counter() - start, 1),
    }
    report["json"] = str(write_report(out_dir, report))
    return report


def _cell(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if percent else f"{value:.3f}"


def _prediction_lines(lines: list[str], prediction: dict, title: str) -> None:
    keys = [key for key in prediction["val"] if key not in ("queries", "context_views")]
    lines.append(title)
    lines.append(f"{'split':<6} " + " ".join(f"{key:>7}" for key in keys))
    for split, scores in prediction.items():
        lines.append(f"{split:<6} " + " ".join(f"{scores[key]:>7.3f}" for key in keys))


def format_equivariance(report: dict) -> str:
    """The report as a table: one row per representation part, then the predictor's metrics."""
    results = report["results"]
    title = f"{report['objective']} / {report['backbone']} on {report['dataset']}, step {report['step']}"
    lines = [f"{title} ({report['run']})", f"{'part':<6} {'top-1 %':>8} {'rot R2':>8} {'colour R2':>10}"]
    for part in PARTS:
        top1 = results["classification_top1"].get(part)
        rotation = results["rotation_r2"].get(part, {}).get("r2")
        colour = results["colour_r2"].get(part, {}).get("r2")
        lines.append(f"{part:<6} {_cell(top1, True):>8} {_cell(rotation):>8} {_cell(colour):>10}")
    prediction = results.get("prediction")
    if prediction:
        _prediction_lines(lines, prediction, "predictor, one view -> online encodings")
        target = results.get("prediction_target")
        if target:
            views = target["val"]["context_views"]
            _prediction_lines(lines, target, f"predictor as trained, {views} views -> target encodings")
    else:
        lines.append("predictor: none (PRE / MRR / H@k not applicable)")
    lines.append(f"saved: {report.get('json', '-')}  ({report['seconds']} s)")
    return "\n".join(lines)
