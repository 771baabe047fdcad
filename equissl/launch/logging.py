"""Metrics to JSONL and TensorBoard, and a progress bar with loss and images/s (main process only)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm


class MetricLogger:
    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int, enabled: bool, progress: bool
    ) -> None:
        self.enabled = enabled
        self.jsonl = None
        self.writer = None
        self.bar = None
        self._last_time = time.perf_counter()
        self._images_since = 0
        self._train_postfix: dict[str, str] = {}  # loss and images/s of the latest log
        self._eval_postfix: dict[str, str] = {}  # the latest online evaluation, kept on the progress bar
        if not enabled:  # other ranks count nothing and write nothing
            return
        self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a")  # noqa: SIM115 (open for the run; closed in close())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is a declared dependency; stay usable without it
            self.writer = None
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
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
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
