"""Metrics to the loggers of ``trainer.loggers``, and a progress bar with loss and images/s (main process
only).

- ``jsonl``: ``RUN/metrics.jsonl``, one JSON object per logged step;
- ``tensorboard``: ``RUN/tensorboard/``;
- ``wandb``: Weights & Biases through accelerate's ``WandBTracker``: project = the run's ``name``, files
  under ``RUN/wandb/``; offline with ``WANDB_MODE=offline``, as wandb's own variables say;
- ``mlflow``: MLflow through accelerate's ``MLflowTracker``: experiment = the run's ``name``, logged to
  ``MLFLOW_TRACKING_URI`` when set, else to a local file store in ``RUN/mlruns`` (read it with
  ``mlflow ui --backend-store-uri RUN/mlruns``).

MLflow's metric names read ``.`` for ``/`` (``loss.nt_xent``): its file store keeps a metric in a file of
that name, and ``loss`` beside ``loss/nt_xent`` cannot be a file and a folder at once.
The resolved config goes to wandb's config and MLflow's parameters as dotted keys (``optim.lr``). A
resumed run continues the same wandb and MLflow runs: their ids are kept in ``RUN/trackers.json``.
wandb and MLflow come with the ``track`` extra; :func:`check_loggers` names it before any work.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from equissl.errors import import_extra

TRACKERS = ("wandb", "mlflow")  # through accelerate's trackers, from the track extra


def check_loggers(loggers: Iterable[str]) -> None:
    """Stop with the ``pip install 'equissl[track]'`` line when a chosen tracker is not installed."""
    for name in loggers:
        if name in TRACKERS:
            import_extra(name, f"trainer.loggers={name}", "track")


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {"section.key": value}; lists as their string (trackers take scalars)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def _tracker_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / "trackers.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def start_tracker(name: str, run_dir: Path, run_name: str, hparams: dict[str, Any]):
    """A started accelerate tracker for ``name`` (wandb / mlflow), continuing the run's earlier one."""
    ids = _tracker_ids(run_dir)
    if name == "wandb":
        from accelerate.tracking import WandBTracker

        run_id = ids.get("wandb") or uuid.uuid4().hex[:12]
        tracker = WandBTracker(run_name, dir=str(run_dir), id=run_id, resume="allow", name=run_name)
        tracker.start()
    else:
        import mlflow
        from accelerate.tracking import MLflowTracker

        if "MLFLOW_TRACKING_URI" not in os.environ:
            # MLflow 3 calls its file store "maintenance mode" and asks for this opt-in; it needs no
            # database package, so that the run folder holds everything.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        tracker = MLflowTracker(experiment_name=run_name, run_id=ids.get("mlflow"), run_name=run_name)
        tracker.start()
        run_id = tracker.active_run.info.run_id
    if name not in ids:
        tracker.store_init_configuration(hparams)
        (run_dir / "trackers.json").write_text(json.dumps({**ids, name: run_id}, indent=1))
    return tracker


class MetricLogger:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        enabled: bool,
        progress: bool,
        loggers: Iterable[str] = ("jsonl", "tensorboard"),
        run_name: str = "run",
        hparams: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.jsonl = None
        self.writer = None
        self.bar = None
        self.trackers: list[Any] = []
        self._last_time = time.perf_counter()
        self._images_since = 0
        self._train_postfix: dict[str, str] = {}  # loss and images/s of the latest log
        self._eval_postfix: dict[str, str] = {}  # the latest online evaluation, kept on the progress bar
        if not enabled:  # other ranks count nothing and write nothing
            return
        loggers = tuple(loggers)
        if "jsonl" in loggers:
            self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a")  # noqa: SIM115 (open for the run; closed in close())
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        hparams = flat_config(hparams or {})
        self.trackers = [
            start_tracker(name, Path(run_dir), run_name, hparams) for name in TRACKERS if name in loggers
        ]
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", dynamic_ncols=True)

    def count_images(self, images: int) -> None:
        self._images_since += images

    def log(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Write ``metrics`` (plus images/s since the last call) at ``step``; returns what was written."""
        if not self.enabled:
            return metrics
        now = time.perf_counter()
        metrics = dict(metrics, images_per_s=self._images_since / max(now - self._last_time, 1e-9))
        self._last_time, self._images_since = now, 0
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        for tracker in self.trackers:
            values = (
                {k.replace("/", "."): v for k, v in metrics.items()} if tracker.name == "mlflow" else metrics
            )
            tracker.log(values, step=step)
        if self.bar is not None:
            self._train_postfix = {
                "loss": f"{metrics.get('loss', float('nan')):.4f}",
                "img_s": f"{metrics['images_per_s']:.0f}",
            }
            self.bar.set_postfix(**self._train_postfix, **self._eval_postfix)
        return metrics

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Write an online evaluation's ``metrics`` (e.g. ``val/knn_top1``, ``val/knn_seconds``) at ``step``
        as their own JSONL row and TensorBoard scalars, and keep ``val/knn_top1`` on the progress bar. Its
        ``val/knn_seconds`` are left out of the next images/s figure."""
        if not self.enabled:
            return
        self._last_time += metrics.get("val/knn_seconds", 0.0)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        if self.bar is not None and "val/knn_top1" in metrics:
            self._eval_postfix = {"val_knn": f"{metrics['val/knn_top1']:.1f}"}
            self.bar.set_postfix(**self._train_postfix, **self._eval_postfix)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
