"""The pretraining loop. It knows no method: objectives turn Views into a StepOutput.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` images on each process.
Distribution, device placement and autocast come from ``accelerate``; the same code runs on one CPU,
N GPUs (``accelerate launch`` / ``torchrun``) or N nodes.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
import signal
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs
from torch import nn

from equissl.build import build_dataset, build_objective, build_view_maker
from equissl.config import Config, from_dict, to_dict
from equissl.errors import BadDataError, ConfigError, NonFiniteLossError, RunStopped, UserError
from equissl.launch import checkpoint as ckpt
from equissl.launch.data import train_batches
from equissl.launch.logging import MetricLogger, check_loggers
from equissl.launch.online_eval import build_online_eval, due
from equissl.launch.optim import build_optimizer, build_scheduler, scaled_lr
from equissl.launch.precision import (
    accelerate_mixed_precision,
    as_channels_last,
    as_float64,
    compile_objective,
    fp16_autocast,
    grad_scaler,
)
from equissl.launch.resume import check_resume, truncate_metrics
from equissl.launch.sampler import ResumableSampler
from equissl.launch.signals import STOP_SIGNALS, StopFlag
from equissl.launch.sync_bn import convert_sync_batchnorm
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


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class Trainer:
    """One run: ``Trainer(config).fit()`` trains from scratch or resumes from the run's newest usable
    checkpoint. ``override_optim``: resume with changed ``optim.*`` settings (refused otherwise)."""

    def __init__(self, config: Config, override_optim: bool = False) -> None:
        self.config = config
        self.override_optim = override_optim
        tc = config.trainer
        check_loggers(tc.loggers)  # a missing tracker package stops before any work
        # accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with another
        # precision or device; a later Trainer in the same process (tests, notebooks, one recipe after
        # another) sets its own. The distributed PartialState is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            cpu=tc.device == "cpu",
            mixed_precision=accelerate_mixed_precision(tc.precision),  # fp16: own autocast and scaler
            # bounds every collective's wait for the other ranks (torch's default is 30 minutes)
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=tc.collective_timeout_s))],
        )
        self.run_dir = config.run_dir
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.global_batch = tc.batch_size * tc.grad_accum_steps * self.world_size
        torch.manual_seed(tc.seed)  # same initial weights on every rank
        objective = build_objective(config)
        self.spec = objective.required_views
        self.dataset = build_dataset(config, "train", self.spec.source, self.spec.num_views, spec=self.spec)
        num_classes = getattr(self.dataset, "num_classes", 0)  # unlabelled data: no online probe
        model = PretrainModel(objective, num_classes, tc.online_probe and num_classes > 0)
        if tc.precision == "fp64":
            model = model.double()
        if tc.sync_batchnorm and self.world_size > 1:  # one process: its statistics already are global
            model = convert_sync_batchnorm(model, self.accelerator.device)
        if tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if tc.compile:
            compile_objective(objective, tc.compile_mode, tc.compile_backend)
        self.scaler = grad_scaler(tc.precision, self.accelerator.device)  # fp16 only
        optimizer = build_optimizer(model, config.optim, self.global_batch)
        self.scheduler = build_scheduler(optimizer, config.optim, tc.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.sampler = ResumableSampler(len(self.dataset), tc.batch_size, tc.seed, self.rank, self.world_size)
        objective.set_steps_per_epoch(self.sampler.batches_per_epoch / tc.grad_accum_steps)
        self.view_maker = build_view_maker(config, self.spec)
        self.online_eval = build_online_eval(config, self.accelerator.is_main_process)  # trainer.eval_every
        self.generators = {
            "augment": torch.Generator(device=self.accelerator.device).manual_seed(tc.seed + 7919 * self.rank)
        }
        self.state = ckpt.TrainerState()
        self.stop_signals = STOP_SIGNALS  # SLURM runs add SIGUSR2 (launcher.SlurmPretrain)
        self.received_signal: int | None = None  # the stop signal this process got, if any
        self._step_batches: list[dict] = []  # the current step's micro-batches, saved if it goes non-finite
        self._step_losses: list[torch.Tensor] = []
        self._step_bad = [0, 0]  # unreadable files skipped, items read (this rank, this step)
        self._bad_names: list[str] = []
        self.last_grad_norm = float("nan")
        self._step_start: dict = {}  # loop position and RNG at the start of the step (see _snapshot)
        self.resume_changes: dict = {}  # settings changed since the checkpoint resumed from
        # A gloo group of its own to find out which rank stopped answering: a timed-out collective closes
        # the default group's connections, so the check cannot use them.
        self._monitor = (
            dist.new_group(backend="gloo") if self.world_size > 1 and dist.is_initialized() else None
        )

    # -- checkpoints -----------------------------------------------------------------------------
    def resume(self) -> Path | None:
        """Load the newest usable checkpoint (a damaged one is named and the previous one used), after
        checking that this config may resume it (:mod:`equissl.launch.resume`); None for a new run."""
        for candidate in ckpt.usable_checkpoints(self.run_dir):
            try:  # every file is read before anything is applied: a bad one leaves the model untouched
                parts = self._read(candidate)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
                warnings.warn(
                    f"damaged checkpoint, skipped: {candidate}: {type(error).__name__}: {error}", stacklevel=2
                )
                continue
            self.resume_changes = check_resume(parts["config"], self.config, candidate, self.override_optim)
            self._apply(parts)
            return candidate
        return None

    def _read(self, checkpoint: Path) -> dict:
        return {
            "config": from_dict(Config, yaml.safe_load((checkpoint / "config.yaml").read_text())),
            "model": ckpt.load_model_state(checkpoint),
            "optimizer": ckpt.load_torch(checkpoint, "optimizer.pt"),
            "scheduler": ckpt.load_torch(checkpoint, "scheduler.pt"),
            "state": ckpt.load_trainer_state(checkpoint),
            "rng": ckpt.load_rank_rng(checkpoint, self.rank),
            "scaler": ckpt.load_torch_if_present(checkpoint, "scaler.pt"),  # fp16 runs only
        }

    def _apply(self, parts: dict) -> None:
        saved = [len(group["params"]) for group in parts["optimizer"]["param_groups"]]
        if saved != [len(group["params"]) for group in self.optimizer.param_groups]:
            raise ConfigError(
                "--override-optim: these optim settings (optim.lr_scales or optim.exclude_bias_and_norm) group "
                "the parameters differently from the checkpoint's optimizer; a resume cannot regroup them"
            )
        self.accelerator.unwrap_model(self.model).load_state_dict(parts["model"])
        self.optimizer.load_state_dict(parts["optimizer"])
        self.scheduler.load_state_dict(parts["scheduler"])
        self.state = parts["state"]
        if self.scaler is not None and parts["scaler"] is not None:
            self.scaler.load_state_dict(parts["scaler"])
        if parts["rng"] is not None:
            ckpt.set_rng_state(parts["rng"], self.generators)
        if any(key.startswith("optim.") for key in self.resume_changes):
            self._apply_optim_overrides()

    def _apply_optim_overrides(self) -> None:
        """``--override-optim``: this config's optimiser values replace the checkpoint's (its moments stay)."""
        oc = self.config.optim
        fresh = build_optimizer(self.accelerator.unwrap_model(self.model), oc, self.global_batch)
        for group, new in zip(self.optimizer.param_groups, fresh.param_groups, strict=True):
            for key in ("weight_decay", "momentum", "betas", "eta"):
                if key in new:
                    group[key] = new[key]
            group.pop("lr_scale", None)  # the group's multiplier is now this config's (or none)
            if "lr_scale" in new:
                group["lr_scale"] = new["lr_scale"]
        # each fresh group starts at this config's (scaled) base lr times its optim.lr_scales multiplier
        self.scheduler.base_lrs = [new["lr"] for new in fresh.param_groups]
        for group, start, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = start * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def save(self) -> Path:
        """Write a complete checkpoint of this step (every rank takes part); a full or read-only disk is a
        one-line error, and the previous complete checkpoint stays."""
        try:
            return self._save()
        except OSError as error:
            shutil.rmtree(ckpt.temp_dir(self.run_dir, self.state.step), ignore_errors=True)
            raise UserError(
                f"cannot write a checkpoint in {ckpt.checkpoint_root(self.run_dir)}: {error.strerror or error}; "
                f"the last complete checkpoint is {ckpt.latest_checkpoint(self.run_dir)}"
            ) from None

    def _save(self) -> Path:
        tmp = ckpt.temp_dir(self.run_dir, self.state.step)
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # left by an aborted save of this step
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state_dict = self.accelerator.get_state_dict(self.model)
            ckpt.write_shared(
                tmp,
                state_dict,
                self.optimizer,
                self.scheduler,
                self.scaler,  # fp16's loss scale (None otherwise)
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
        """Yield batches forever, tracking (epoch, batch_in_epoch) in ``self.state`` for resumes; one
        loader for the whole run, its workers kept across epochs (:mod:`equissl.launch.data`)."""
        tc = self.config.trainer
        source = train_batches(
            self.dataset,
            self.sampler,
            self.state.epoch,
            self.state.batch_in_epoch,
            self.config.data,
            self.accelerator.device,
        )
        try:
            for epoch, batch, bad_reads, bad_names in source:
                if epoch != self.state.epoch:  # the first batch of the next epoch
                    self.state.epoch, self.state.batch_in_epoch = epoch, 0
                self.state.batch_in_epoch += 1
                self._step_bad[0] += bad_reads
                self._step_bad[1] += tc.batch_size + bad_reads
                self._bad_names.extend(bad_names[: max(0, 10 - len(self._bad_names))])
                yield batch
        finally:
            source.close()  # its workers end now, not whenever the generator is collected

    # -- the loop --------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, sync: bool) -> StepOutput:
        self._step_batches.append(batch)
        views = self.view_maker(_to_device(batch, self.accelerator.device), self.generators["augment"])
        return self._forward_backward(views, sync)

    def _forward_backward(self, views: Views, sync: bool) -> StepOutput:
        """Forward and backward of one micro-batch of views (gradients accumulate until the optimizer
        step); ``sync``: DDP all-reduces the gradients in this backward."""
        tc = self.config.trainer
        if tc.precision == "fp64":
            views = as_float64(views)
        if tc.channels_last:
            views = as_channels_last(views)
        context = self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
        with context:
            with self.accelerator.autocast(), fp16_autocast(tc.precision, self.accelerator.device):
                out = self.model(views)
            self._step_losses.append(out.loss.detach().float())
            # Backward even on a non-finite loss: every rank must join DDP's gradient all-reduce; the
            # step is judged (and skipped or stopped) on every rank together in _optimizer_step.
            loss = out.loss / tc.grad_accum_steps
            self.accelerator.backward(self.scaler.scale(loss) if self.scaler is not None else loss)
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
        # Judge the fraction only once enough items were read: one bad file in the first batch is not 5%
        # of a dataset (a dataset smaller than the minimum is judged once it has all been read).
        enough = min(self.config.data.min_items_before_abort, len(self.dataset))
        if self.state.items_read >= max(enough, 1) and self.state.bad_reads / self.state.items_read > limit:
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

    def _stop_requested(self, stop: StopFlag) -> bool:
        """True on every rank once any rank got a stop signal, so all ranks checkpoint together."""
        flag = torch.tensor(0.0 if stop.signal is None else 1.0, device=self.accelerator.device)
        if self.world_size > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return flag.item() > 0

    def _optimizer_step(self, logger: MetricLogger) -> bool:
        """Check the step on every rank, then step the optimizer; False when a non-finite step was
        skipped (``trainer.skip_nonfinite_steps``). Raises NonFiniteLossError past that limit."""
        tc = self.config.trainer
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # the true gradients, for the norm, clipping and the check
        grad_norm = self._grad_norm()
        bad_loss, bad_grad = self._check_step(grad_norm)
        self.last_grad_norm = float(grad_norm)
        try:
            if bad_grad and not bad_loss and self.scaler is not None:
                return self._skip_overflow()
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
        self.accelerator.unwrap_model(self.model).objective.before_optimizer_step(self.state.step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # the gradients are finite (checked): it steps
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.unwrap_model(self.model).objective.on_step_end(self.state.step + 1, tc.max_steps)
        return True

    def _skip_overflow(self) -> bool:
        """fp16: the scaled gradients overflowed. The scaler halves its scale; the step is not taken and
        not counted (the next batch makes it), as torch's AMP recipe does."""
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.overflow_steps += 1
        return False

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
        self._check_run_dir()
        resumed = self.resume()
        if self._done():
            return RunResult(self.run_dir, self.state.step, "already finished")
        self.state.finished = False
        if self.accelerator.is_main_process:  # written only now: never a config that was not used
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
            if resumed is not None:  # steps logged after that checkpoint are trained (and logged) again
                truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        logger = MetricLogger(
            self.run_dir,
            tc.max_steps,
            self.state.step,
            self.accelerator.is_main_process,
            tc.progress,
            tc.loggers,
            self.config.name,
            to_dict(self.config),
        )
        if resumed is not None:
            logger.message(f"resumed from {resumed} (step {self.state.step})")
            for key, (old, new) in self.resume_changes.items():
                logger.message(
                    f"  changed on resume, in effect from step {self.state.step + 1}: {key} {old!r} -> {new!r}"
                )
        self._log_setup(logger)
        stop = StopFlag(self.stop_signals, announce=self.accelerator.is_main_process)
        stop.install()
        try:
            return self._loop(logger, stop)
        finally:
            stop.restore()
            logger.close()

    def _done(self) -> bool:
        """Finished: the step budget is spent, or the time budget (``max_minutes``) of this config is."""
        tc, state = self.config.trainer, self.state
        out_of_time = tc.max_minutes > 0 and state.elapsed_seconds >= tc.max_minutes * 60
        return state.step >= tc.max_steps or out_of_time

    def _check_run_dir(self) -> None:
        """A read-only or full run directory fails now, in one line, not at the first checkpoint."""
        root = ckpt.checkpoint_root(self.run_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-rank{self.rank}"
            probe.write_bytes(b"equissl")
            probe.unlink()
        except OSError as error:
            raise UserError(
                f"run directory {self.run_dir} is not writable: {error.strerror or error}"
            ) from None
        model = self.accelerator.unwrap_model(self.model)
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        needed = 4 * weights  # weights + optimizer moments, and room for the next one before the old goes
        free = shutil.disk_usage(root).free
        if free < needed:
            raise UserError(
                f"run directory {self.run_dir} has {free / 2**20:.0f} MiB free; a checkpoint of this run needs "
                f"about {needed / 2**20:.0f} MiB"
            )

    def _snapshot(self) -> None:
        """Where this step starts: a stop that interrupts it mid-way checkpoints this position, so that the
        resume is exact."""
        self._step_start = {
            "position": (self.state.epoch, self.state.batch_in_epoch),
            "augment": self.generators["augment"].get_state(),
            "torch": torch.get_rng_state(),
        }

    def _rewind(self) -> None:
        """Back to :meth:`_snapshot`: the interrupted step's micro-batches and gradients are dropped."""
        self.state.epoch, self.state.batch_in_epoch = self._step_start["position"]
        self.generators["augment"].set_state(self._step_start["augment"])
        torch.set_rng_state(self._step_start["torch"])
        self.optimizer.zero_grad(set_to_none=True)
        self._step_batches, self._step_losses, self._step_bad = [], [], [0, 0]

    def _next_batch(self, batches) -> dict:
        try:
            return next(batches)
        except RunStopped:  # a dataset's own named failure, carried from the worker
            raise
        except RuntimeError as error:
            if "DataLoader worker (pid" in str(error):  # torch's words for a worker that died
                raise _WorkerDied(str(error)) from error
            raise

    def _train_step(self, batches, logger: MetricLogger) -> StepOutput | None:
        """One optimizer step (``grad_accum_steps`` micro-batches); None when it was skipped (non-finite)."""
        tc = self.config.trainer
        for micro in range(tc.grad_accum_steps):
            out = self._micro_step(self._next_batch(batches), sync=micro == tc.grad_accum_steps - 1)
            logger.count_images(tc.batch_size * self.world_size)
        return out if self._optimizer_step(logger) else None

    def _loop(self, logger: MetricLogger, stop: StopFlag) -> RunResult:
        batches = self._batches()
        try:
            return self._steps(batches, logger, stop)
        finally:
            batches.close()  # its workers end now, not whenever the generator is collected

    def _steps(self, batches, logger: MetricLogger, stop: StopFlag) -> RunResult:
        tc = self.config.trainer
        self.model.train()
        session_start, elapsed_before = time.perf_counter(), self.state.elapsed_seconds
        metrics: dict[str, float] = {}
        while self.state.step < tc.max_steps:
            self._snapshot()
            try:
                out = self._train_step(batches, logger)
            except _WorkerDied as error:
                if stop.signal is None:
                    raise RunStopped(
                        f"a data worker died at step {self.state.step + 1} ({error}); lower "
                        f"data.num_workers if memory is short. Last complete checkpoint: "
                        f"{ckpt.latest_checkpoint(self.run_dir)}"
                    ) from None
                self._rewind()  # the stop killed a worker mid-step: checkpoint where the step began
                return self._stop(logger, stop, metrics)
            except RunStopped:
                raise
            except RuntimeError as error:
                failure = self._collective_failure(error)
                if failure is error:
                    raise
                raise failure from error
            if out is None:
                continue
            self.state.step += 1
            self.state.elapsed_seconds = elapsed_before + time.perf_counter() - session_start
            logger.advance()
            if self.state.step % tc.log_every == 0 or self.state.step == tc.max_steps:
                metrics = logger.log(self.state.step, dict(out.detached_metrics(), **self._fault_metrics()))
            if self.online_eval is not None and due(self.config, self.state.step):
                backbone = self.accelerator.unwrap_model(self.model).objective.backbone
                logger.log_eval(self.state.step, self.online_eval(backbone))
            if self._done():
                self.state.finished = True
                self.save()
                out_of_time = self.state.step < tc.max_steps
                logger.message(
                    f"finished at step {self.state.step}" + (" (time budget reached)" if out_of_time else "")
                )
                return RunResult(self.run_dir, self.state.step, "finished", metrics)
            if self._stop_requested(stop):
                return self._stop(logger, stop, metrics)
            if self.state.step % tc.checkpoint_every == 0:
                self.save()
        return RunResult(self.run_dir, self.state.step, "finished", metrics)

    def _stop(self, logger: MetricLogger, stop: StopFlag, metrics: dict[str, float]) -> RunResult:
        self.received_signal = stop.signal
        path = self.save()
        name = signal.Signals(stop.signal).name if stop.signal else "a stop signal on another rank"
        logger.message(f"{name}: wrote {path} at step {self.state.step}; run the same command to resume")
        return RunResult(self.run_dir, self.state.step, "interrupted", metrics)

    def _collective_failure(self, error: RuntimeError) -> Exception:
        """A collective that failed or timed out (``trainer.collective_timeout_s``) as a RunStopped naming
        the ranks that did not answer, where the backend can tell (gloo's monitored barrier); any other
        error is returned unchanged."""
        if self.world_size == 1 or not dist.is_initialized():
            return error
        text = str(error).lower()
        marks = (
            "timed out",
            "timeout",
            "connection closed",
            "connection reset",
            "pair closure",
            "nccl",
            "gloo",
        )
        if not isinstance(error, dist.DistError) and not any(mark in text for mark in marks):
            return error
        missing = _unresponsive_ranks(self._monitor, min(10.0, self.config.trainer.collective_timeout_s))
        return RunStopped(
            f"rank {self.rank} at step {self.state.step + 1}: the other ranks did not answer within "
            f"trainer.collective_timeout_s={self.config.trainer.collective_timeout_s:g} s: {missing} (dead or "
            f"hung; see its log). Last complete checkpoint: {ckpt.latest_checkpoint(self.run_dir)}"
        )

    def _fault_metrics(self) -> dict[str, float]:
        state = self.state
        return {
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": self.last_grad_norm,
            "data/bad_reads": state.bad_reads,
            "data/bad_fraction": state.bad_reads / max(state.items_read, 1),
            "train/skipped_steps": state.skipped_steps,
            **({"train/overflow_steps": state.overflow_steps} if self.scaler is not None else {}),
            **({"train/loss_scale": self.scaler.get_scale()} if self.scaler is not None else {}),
        }


class _WorkerDied(Exception):
    """A DataLoader worker exited (killed, out of memory) while the loop waited for its batch."""


def _unresponsive_ranks(group, timeout_s: float) -> str:
    """Which ranks fail to reach a barrier of ``group`` (gloo) within ``timeout_s``: gloo's monitored
    barrier names them."""
    try:
        dist.monitored_barrier(group=group, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    except RuntimeError as error:
        found = re.search(r"Ranks? ([\d, ]+) failed to pass", str(error))
        return (
            f"rank(s) {found.group(1).strip()} did not answer"
            if found
            else str(error).strip().splitlines()[0]
        )
    return "every rank answered the check"


def pretrain(config: Config, override_optim: bool = False) -> RunResult:
    """Train (or resume) the run of ``config``; ``override_optim``: resume with changed ``optim.*``."""
    return Trainer(config, override_optim).fit()
