"""The pretraining loop. It knows no method: objectives turn Views into a StepOutput.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` images on each process.
Distribution, device placement and autocast come from ``accelerate``; the same code runs on one CPU,
N GPUs (``accelerate launch`` / ``torchrun``) or N nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import DataLoader

from equissl.build import build_dataset, build_objective, build_view_maker
from equissl.config import Config, to_dict
from equissl.errors import BadDataError, NonFiniteLossError
from equissl.launch import checkpoint as ckpt
from equissl.launch.data import GuardedCollate, GuardedDataset
from equissl.launch.logging import MetricLogger
from equissl.launch.online_eval import build_online_eval, due
from equissl.launch.optim import build_optimizer, build_scheduler, scaled_lr
from equissl.launch.sampler import ResumableSampler
from equissl.launch.sync_bn import convert_to_global_batchnorm
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
            logits = self.probe(out.features.detach().to(self.probe.weight.dtype))
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

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.signal: int | None = None
        self.signals = signals
        self._previous = {}

    def install(self) -> None:
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. under a test runner's thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _as_float64(value):
    """Floating tensors inside (nested lists / dicts / dataclasses of) ``value`` as float64."""
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, list):
        return [_as_float64(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_float64(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(
            value, **{f.name: _as_float64(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class Trainer:
    def __init__(self, config: Config) -> None:
        self.config = config
        tc = config.trainer
        # accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with another
        # precision or device; a later Trainer in the same process (tests, notebooks, one recipe after
        # another) sets its own. The distributed PartialState is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
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
        self.dataset = build_dataset(config, "train", self.spec.source, self.spec.num_views)
        num_classes = getattr(self.dataset, "num_classes", 0)  # unlabelled data: no online probe
        model = PretrainModel(objective, num_classes, tc.online_probe and num_classes > 0)
        if tc.precision == "fp64":
            model = model.double()
        if tc.sync_batchnorm and self.world_size > 1:  # one process: its statistics already are global
            model = convert_to_global_batchnorm(model)
        optimizer = build_optimizer(model, config.optim, self.global_batch)
        self.scheduler = build_scheduler(optimizer, config.optim, tc.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.sampler = ResumableSampler(len(self.dataset), tc.batch_size, tc.seed, self.rank, self.world_size)
        self.view_maker = build_view_maker(config, self.spec)
        self.online_eval = build_online_eval(config, self.accelerator.is_main_process)  # trainer.eval_every
        self.generators = {
            "augment": torch.Generator(device=self.accelerator.device).manual_seed(tc.seed + 7919 * self.rank)
        }
        self.state = ckpt.TrainerState()
        self.stop_signals = (
            signal.SIGTERM,
            signal.SIGUSR1,
        )  # SLURM runs add SIGUSR2 (launcher.SlurmPretrain)
        self.received_signal: int | None = None  # the stop signal this process got, if any
        self._step_batches: list[dict] = []  # the current step's micro-batches, saved if it goes non-finite
        self._step_losses: list[torch.Tensor] = []
        self._step_bad = [0, 0]  # unreadable files skipped, items read (this rank, this step)
        self._bad_names: list[str] = []
        self.last_grad_norm = float("nan")

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
            # No grad scaler: precision is fp32 or bf16, neither of which scales the loss. An fp16 option
            # would pass its GradScaler here (write_shared saves it as scaler.pt).
            ckpt.write_shared(
                tmp,
                state_dict,
                self.optimizer,
                self.scheduler,
                None,
                self.state,
                yaml.safe_dump(to_dict(self.config), sort_keys=False),
            )
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
            loader = DataLoader(
                GuardedDataset(self.dataset),
                batch_size=tc.batch_size,
                sampler=self.sampler,
                drop_last=True,
                num_workers=self.config.data.num_workers,
                collate_fn=GuardedCollate(getattr(self.dataset, "collate_fn", None)),
                pin_memory=self.accelerator.device.type == "cuda",
            )
            for batch, bad_reads, bad_names in loader:
                self.state.batch_in_epoch += 1
                self._step_bad[0] += bad_reads
                self._step_bad[1] += tc.batch_size + bad_reads
                self._bad_names.extend(bad_names[: max(0, 10 - len(self._bad_names))])
                yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    # -- the loop --------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, sync: bool) -> StepOutput:
        self._step_batches.append(batch)
        views = self.view_maker(_to_device(batch, self.accelerator.device), self.generators["augment"])
        if self.config.trainer.precision == "fp64":
            views = _as_float64(views)
        context = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
        with context:
            with self.accelerator.autocast():
                out = self.model(views)
            self._step_losses.append(out.loss.detach().float())
            # Backward even on a non-finite loss: every rank must join DDP's gradient all-reduce; the
            # step is judged (and skipped or stopped) on every rank together in _optimizer_step.
            self.accelerator.backward(out.loss / self.config.trainer.grad_accum_steps)
        return out

    def _grad_norm(self) -> torch.Tensor:
        clip = self.config.trainer.clip_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip > 0:
            return torch.as_tensor(self.accelerator.clip_grad_norm_(params, clip)).float()
        return torch.nn.utils.get_total_norm([p.grad for p in params]).float()

    def _check_step(self, grad_norm: torch.Tensor) -> tuple[bool, bool]:
        """Reduce over ranks: (loss non-finite anywhere, gradient norm non-finite anywhere); also
        count unreadable files and abort past ``data.max_bad_fraction``. One collective per step."""
        losses = torch.stack(self._step_losses)
        flags = torch.tensor(
            [
                float(not torch.isfinite(losses).all()),
                float(not torch.isfinite(grad_norm)),
                float(self._step_bad[0]),
                float(self._step_bad[1]),
            ],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        if self.world_size > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        flags = flags.tolist()
        self._step_bad = [0, 0]
        self.state.bad_reads += int(flags[2])
        self.state.items_read += int(flags[3])
        self._check_bad_fraction()
        return flags[0] > 0, flags[1] > 0

    def _check_bad_fraction(self) -> None:
        limit = self.config.data.max_bad_fraction
        if self.state.items_read and self.state.bad_reads / self.state.items_read > limit:
            names = ", ".join(self._bad_names) or "see the warnings above"
            raise BadDataError(
                f"{self.state.bad_reads} of the {self.state.items_read} items read so far were unreadable "
                f"({self.state.bad_reads / self.state.items_read:.1%} > data.max_bad_fraction={limit}) at step "
                f"{self.state.step}; check or re-create the dataset in {self.dataset_root()} (bad files on "
                f"rank {self.rank}: {names})"
            )

    def dataset_root(self) -> str:
        return str(getattr(self.dataset, "root", self.config.data.root or self.config.data.name))

    def _save_nonfinite(self, grad_norm: torch.Tensor) -> Path:
        """Write this rank's micro-batches of the offending step to ``nonfinite/step-N[-rankR].pt``
        (tensors, numbers and strings only: ``torch.load(weights_only=True)`` reads it)."""
        folder = self.run_dir / "nonfinite"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (
            f"step-{self.state.step}.pt" if self.rank == 0 else f"step-{self.state.step}-rank{self.rank}.pt"
        )
        batches = [
            {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in b.items()}
            for b in self._step_batches
        ]
        torch.save(
            {
                "step": self.state.step,
                "rank": self.rank,
                "epoch": self.state.epoch,
                "batch_in_epoch": self.state.batch_in_epoch,
                "losses": torch.stack(self._step_losses).cpu(),
                "grad_norm": grad_norm.detach().cpu(),
                "micro_batches": batches,
            },
            path,
        )
        return path

    def _stop_requested(self, stop: _StopFlag) -> bool:
        """True on every rank once any rank got a stop signal, so all ranks checkpoint together."""
        flag = torch.tensor(0.0 if stop.signal is None else 1.0, device=self.accelerator.device)
        if self.world_size > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return flag.item() > 0

    def _optimizer_step(self, logger: MetricLogger) -> bool:
        """Check the step on every rank, then step the optimizer; False when a non-finite step was
        skipped (``trainer.skip_nonfinite_steps``). Raises NonFiniteLossError past that limit."""
        tc = self.config.trainer
        grad_norm = self._grad_norm()
        bad_loss, bad_grad = self._check_step(grad_norm)
        self.last_grad_norm = float(grad_norm)
        try:
            if bad_loss or bad_grad:
                saved = self._save_nonfinite(grad_norm)
                what = "loss" if bad_loss else "gradient norm"
                if self.state.skipped_steps < tc.skip_nonfinite_steps:
                    self.state.skipped_steps += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    logger.message(
                        f"non-finite {what} at step {self.state.step}: step skipped "
                        f"({self.state.skipped_steps} of at most {tc.skip_nonfinite_steps}); batch in {saved}"
                    )
                    return False
                losses = ", ".join(f"{v:.4g}" for v in torch.stack(self._step_losses).tolist())
                raise NonFiniteLossError(
                    f"non-finite {what} at step {self.state.step} (loss {losses}, gradient norm {float(grad_norm):.4g}; "
                    f"{self.state.skipped_steps} steps skipped before, trainer.skip_nonfinite_steps="
                    f"{tc.skip_nonfinite_steps}); the batch is saved in {saved}. Lower optim.lr, set "
                    f"trainer.clip_grad_norm, or use trainer.precision=fp32. Last complete checkpoint: "
                    f"{ckpt.latest_checkpoint(self.run_dir)}"
                )
        finally:
            self._step_batches, self._step_losses = [], []
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.unwrap_model(self.model).objective.on_step_end(self.state.step + 1, tc.max_steps)
        return True

    def _log_setup(self, logger: MetricLogger) -> None:
        """The distributed maths a run actually uses, on screen and in ``launch.json``."""
        tc, oc = self.config.trainer, self.config.optim
        info = {
            "world_size": self.world_size,
            "batch_size_per_process": tc.batch_size,
            "grad_accum_steps": tc.grad_accum_steps,
            "global_batch": self.global_batch,
            "base_lr": oc.lr,
            "lr_scaling": oc.lr_scaling,
            "reference_batch": oc.reference_batch,
            "effective_lr": scaled_lr(oc, self.global_batch),
            "sync_batchnorm": tc.sync_batchnorm,
            "device": str(self.accelerator.device),
            "distributed_type": str(self.accelerator.distributed_type),
        }
        if self.accelerator.is_main_process:
            (self.run_dir / "launch.json").write_text(json.dumps(info, indent=1))
        logger.message(
            f"{self.world_size} process(es) x {tc.grad_accum_steps} accumulation x {tc.batch_size} per process = "
            f"global batch {self.global_batch}; lr {info['effective_lr']:.4g} (optim.lr {oc.lr:.4g}, "
            f"lr_scaling={oc.lr_scaling}, reference_batch {oc.reference_batch}); sync_batchnorm={tc.sync_batchnorm}"
        )

    def fit(self) -> RunResult:
        tc = self.config.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.accelerator.is_main_process:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        resumed = self.resume()
        if self.state.finished or self.state.step >= tc.max_steps:
            return RunResult(self.run_dir, self.state.step, "already finished")
        logger = MetricLogger(
            self.run_dir, tc.max_steps, self.state.step, self.accelerator.is_main_process, tc.progress
        )
        if resumed is not None:
            logger.message(f"resumed from {resumed} (step {self.state.step})")
        self._log_setup(logger)
        stop = _StopFlag(self.stop_signals)
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
            if not self._optimizer_step(logger):
                continue
            self.state.step += 1
            self.state.elapsed_seconds = elapsed_before + time.perf_counter() - session_start
            logger.advance()
            if self.state.step % tc.log_every == 0 or self.state.step == tc.max_steps:
                metrics = logger.log(self.state.step, dict(out.detached_metrics(), **self._fault_metrics()))
            if self.online_eval is not None and due(self.config, self.state.step):
                backbone = self.accelerator.unwrap_model(self.model).objective.backbone
                logger.log_eval(self.state.step, self.online_eval(backbone))
            out_of_time = tc.max_minutes > 0 and self.state.elapsed_seconds >= tc.max_minutes * 60
            if self.state.step == tc.max_steps or out_of_time:
                self.state.finished = True
                self.save()
                logger.message(
                    f"finished at step {self.state.step}" + (" (time budget reached)" if out_of_time else "")
                )
                return RunResult(self.run_dir, self.state.step, "finished", metrics)
            if self._stop_requested(stop):
                self.received_signal = stop.signal
                path = self.save()
                logger.message(f"signal {stop.signal}: wrote {path}, exiting")
                return RunResult(self.run_dir, self.state.step, "interrupted", metrics)
            if self.state.step % tc.checkpoint_every == 0:
                self.save()
        return RunResult(self.run_dir, self.state.step, "finished", metrics)

    def _fault_metrics(self) -> dict[str, float]:
        state = self.state
        return {
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": self.last_grad_norm,
            "data/bad_reads": state.bad_reads,
            "data/bad_fraction": state.bad_reads / max(state.items_read, 1),
            "train/skipped_steps": state.skipped_steps,
        }


def pretrain(config: Config) -> RunResult:
    return Trainer(config).fit()
