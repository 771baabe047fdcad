"""The pretraining loop. It knows no method: objectives turn Views into a StepOutput.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` images on each process.
Distribution, device placement and autocast come from ``accelerate``; the same code runs on one CPU,
N GPUs (``accelerate launch`` / ``torchrun``) or N nodes.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from equissl.augmentations.views import ViewMaker
from equissl.config import Config, to_dict
from equissl.launch import checkpoint as ckpt
from equissl.launch.errors import NonFiniteLossError
from equissl.launch.logging import MetricLogger
from equissl.launch.optim import build_optimizer, build_scheduler
from equissl.launch.sampler import ResumableSampler
from equissl.registry import BACKBONES, DATASETS, OBJECTIVES, VIEW_MAKERS
from equissl.ssl.base import Objective
from equissl.types import StepOutput, Views


class PretrainModel(nn.Module):
    """The objective plus the online linear probe, so one DDP wrapper and one optimizer hold both.

    The probe reads detached features: it measures the representation without shaping it.
    """

    def __init__(self, objective: Objective, num_classes: int, online_probe: bool) -> None:
        super().__init__()
        self.objective = objective
        self.probe = nn.Linear(objective.backbone.num_features, num_classes) if online_probe else None

    def forward(self, views: Views) -> StepOutput:
        out = self.objective(views)
        metrics = dict(out.metrics, loss=out.loss.detach())
        loss = out.loss
        if self.probe is not None and out.features is not None and views.labels is not None:
            logits = self.probe(out.features.detach().float())
            probe_loss = F.cross_entropy(logits, views.labels)
            loss = loss + probe_loss
            metrics["probe/loss"] = probe_loss.detach()
            metrics["probe/acc"] = (logits.argmax(1) == views.labels).float().mean()
        return StepOutput(loss=loss, metrics=metrics, features=out.features)


@dataclass
class RunResult:
    run_dir: Path
    step: int
    status: str  # "finished", "interrupted" or "already finished"
    last_metrics: dict[str, float] = field(default_factory=dict)


class _StopFlag:
    """Set by SIGTERM / SIGUSR1 (preemption): the loop checkpoints after the current step and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. under a test runner's thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_objective(config: Config) -> Objective:
    backbone = BACKBONES.build(config.backbone.name, config.backbone)
    return OBJECTIVES.build(config.objective.name, config.objective, backbone)


def make_view_maker(config: Config, spec):
    """Images ("image", "object") use the kornia pipeline; other modalities register their own."""
    if spec.source in ("image", "object"):
        return ViewMaker(config.augment)
    return VIEW_MAKERS.build(spec.source, config)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    def __init__(self, config: Config) -> None:
        self.config = config
        tc = config.trainer
        self.accelerator = Accelerator(
            cpu=tc.device == "cpu",
            mixed_precision="bf16" if tc.precision == "bf16" else "no",
        )
        self.run_dir = config.run_dir
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.global_batch = tc.batch_size * tc.grad_accum_steps * self.world_size
        torch.manual_seed(tc.seed)  # same initial weights on every rank
        objective = build_objective(config)
        self.spec = objective.required_views
        self.dataset = DATASETS.build(config.data.name, config.data, split="train", source=self.spec.source,
                                      num_views=self.spec.num_views, seed=tc.seed)
        num_classes = getattr(self.dataset, "num_classes", 0)  # unlabelled data: no online probe
        model = PretrainModel(objective, num_classes, tc.online_probe and num_classes > 0)
        optimizer = build_optimizer(model, config.optim, self.global_batch)
        self.scheduler = build_scheduler(optimizer, config.optim, tc.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.sampler = ResumableSampler(len(self.dataset), tc.batch_size, tc.seed, self.rank, self.world_size)
        self.view_maker = make_view_maker(config, self.spec)
        self.generators = {"augment": torch.Generator(device=self.accelerator.device).manual_seed(tc.seed + 7919 * self.rank)}
        self.state = ckpt.TrainerState()

    # -- checkpoints -----------------------------------------------------------------------------
    def resume(self) -> Path | None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is None:
            return None
        self.accelerator.unwrap_model(self.model).load_state_dict(ckpt.load_model_state(latest))
        self.optimizer.load_state_dict(ckpt.load_torch(latest, "optimizer.pt"))
        self.scheduler.load_state_dict(ckpt.load_torch(latest, "scheduler.pt"))
        self.state = ckpt.load_trainer_state(latest)
        rng = ckpt.load_rank_rng(latest, self.rank)
        if rng is not None:
            ckpt.set_rng_state(rng, self.generators)
        return latest

    def save(self) -> Path:
        tmp = ckpt.temp_dir(self.run_dir, self.state.step)
        if self.accelerator.is_main_process:
            state_dict = self.accelerator.get_state_dict(self.model)
            ckpt.write_shared(tmp, state_dict, self.optimizer, self.scheduler, None, self.state,
                              yaml.safe_dump(to_dict(self.config), sort_keys=False))
        self.accelerator.wait_for_everyone()
        ckpt.write_rank_rng(tmp, self.rank, self.generators)
        self.accelerator.wait_for_everyone()
        final = ckpt.checkpoint_root(self.run_dir) / f"step-{self.state.step:08d}"
        if self.accelerator.is_main_process:
            final = ckpt.finalize(self.run_dir, self.state.step, self.config.trainer.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return final

    # -- data ------------------------------------------------------------------------------------
    def _batches(self):
        """Yield batches forever, tracking (epoch, batch_in_epoch) in ``self.state`` for resumes."""
        tc = self.config.trainer
        while True:
            self.sampler.set_position(self.state.epoch, self.state.batch_in_epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.state.epoch)
            loader = DataLoader(self.dataset, batch_size=tc.batch_size, sampler=self.sampler, drop_last=True,
                                num_workers=self.config.data.num_workers,
                                collate_fn=getattr(self.dataset, "collate_fn", None),
                                pin_memory=self.accelerator.device.type == "cuda")
            for batch in loader:
                self.state.batch_in_epoch += 1
                yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # -- the loop --------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, sync: bool) -> StepOutput:
        views = self.view_maker(_to_device(batch, self.accelerator.device), self.spec, self.generators["augment"])
        context = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
        with context:
            with self.accelerator.autocast():
                out = self.model(views)
            self._check_finite(out.loss)
            self.accelerator.backward(out.loss / self.config.trainer.grad_accum_steps)
        return out

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=self.accelerator.device)
        if self.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.state.step} (on {int(bad.item())} of "
                f"{self.world_size} processes); lower optim.lr, set trainer.clip_grad_norm, or use "
                f"trainer.precision=fp32. Last complete checkpoint: {ckpt.latest_checkpoint(self.run_dir)}"
            )

    def _stop_requested(self, stop: _StopFlag) -> bool:
        """True on every rank once any rank got a stop signal, so all ranks checkpoint together."""
        flag = torch.tensor(0.0 if stop.signal is None else 1.0, device=self.accelerator.device)
        if self.world_size > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return flag.item() > 0

    def _optimizer_step(self) -> None:
        clip = self.config.trainer.clip_grad_norm
        if clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.unwrap_model(self.model).objective.on_step_end(self.state.step + 1, self.config.trainer.max_steps)

    def fit(self) -> RunResult:
        tc = self.config.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.accelerator.is_main_process:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        resumed = self.resume()
        if self.state.finished or self.state.step >= tc.max_steps:
            return RunResult(self.run_dir, self.state.step, "already finished")
        logger = MetricLogger(self.run_dir, tc.max_steps, self.state.step, self.accelerator.is_main_process, tc.progress)
        if resumed is not None:
            logger.message(f"resumed from {resumed} (step {self.state.step})")
        stop = _StopFlag()
        stop.install()
        try:
            return self._loop(logger, stop)
        finally:
            stop.restore()
            logger.close()

    def _loop(self, logger: MetricLogger, stop: _StopFlag) -> RunResult:
        tc = self.config.trainer
        batches = self._batches()
        self.model.train()
        session_start, elapsed_before = time.perf_counter(), self.state.elapsed_seconds
        metrics: dict[str, float] = {}
        while self.state.step < tc.max_steps:
            for micro in range(tc.grad_accum_steps):
                out = self._micro_step(next(batches), sync=micro == tc.grad_accum_steps - 1)
                logger.count_images(tc.batch_size * self.world_size)
            self._optimizer_step()
            self.state.step += 1
            self.state.elapsed_seconds = elapsed_before + time.perf_counter() - session_start
            logger.advance()
            if self.state.step % tc.log_every == 0 or self.state.step == tc.max_steps:
                metrics = logger.log(self.state.step, dict(out.detached_metrics(), lr=self.scheduler.get_last_lr()[0]))
            out_of_time = tc.max_minutes > 0 and self.state.elapsed_seconds >= tc.max_minutes * 60
            if self.state.step == tc.max_steps or out_of_time:
                self.state.finished = True
                self.save()
                logger.message(f"finished at step {self.state.step}" + (" (time budget reached)" if out_of_time else ""))
                return RunResult(self.run_dir, self.state.step, "finished", metrics)
            if self._stop_requested(stop):
                path = self.save()
                logger.message(f"signal {stop.signal}: wrote {path}, exiting")
                return RunResult(self.run_dir, self.state.step, "interrupted", metrics)
            if self.state.step % tc.checkpoint_every == 0:
                self.save()
        return RunResult(self.run_dir, self.state.step, "finished", metrics)


def pretrain(config: Config) -> RunResult:
    return Trainer(config).fit()
