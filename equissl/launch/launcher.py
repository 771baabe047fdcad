"""``equissl launch``: the command that runs ``equissl pretrain`` on N processes, N GPUs, several nodes, or
SLURM (through ``submitit``). Every form runs the same ``pretrain`` command, which resumes from the newest
complete checkpoint of its run directory, so re-running a launch (or a requeued SLURM job) resumes.

- 1 process: ``python -m equissl.cli pretrain ...``
- N processes / N GPUs on this machine: ``torchrun --standalone --nproc-per-node N -m equissl.cli
  pretrain ...`` (``--device cpu``: ``trainer.device=cpu``, accelerate then uses gloo)
- several nodes: ``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT
  --rdzv-id ID -m equissl.cli pretrain ...``, the same command on every node
- SLURM: one task per GPU through ``submitit``; on preemption or time-out the trainer checkpoints and the
  job requeues itself with the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from equissl.errors import MissingExtraError, UserError
from equissl.launch.signals import STOP_SIGNALS


@dataclass
class LaunchSpec:
    config: str
    overrides: list[str] = field(default_factory=list)
    nproc_per_node: int = 1
    device: str = "auto"  # "cpu": gloo processes on CPU
    nnodes: int = 1
    rdzv_endpoint: str = ""  # HOST:PORT of node 0, for several nodes
    rdzv_id: str = "equissl"
    override_optim: bool = False  # pretrain --override-optim


def pretrain_overrides(spec: LaunchSpec) -> list[str]:
    """The overrides every process's ``equissl pretrain`` gets: ``--device cpu`` first, then the user's."""
    device = ["trainer.device=cpu"] if spec.device == "cpu" else []
    return [*device, *spec.overrides]


def pretrain_args(spec: LaunchSpec) -> list[str]:
    flags = ["--override-optim"] if spec.override_optim else []
    return ["pretrain", "--config", spec.config, *flags, *pretrain_overrides(spec)]


def torchrun_prefix() -> list[str]:
    found = shutil.which("torchrun")
    if found is None and (Path(sys.executable).parent / "torchrun").is_file():
        found = str(Path(sys.executable).parent / "torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def build_command(spec: LaunchSpec) -> list[str]:
    """The command line for ``spec`` (for several nodes: the one to run on every node)."""
    if spec.nproc_per_node < 1 or spec.nnodes < 1:
        raise UserError("--nproc-per-node and --nnodes must be >= 1")
    if spec.nnodes == 1 and spec.nproc_per_node == 1:
        return [sys.executable, "-m", "equissl.cli", *pretrain_args(spec)]
    if spec.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        if not spec.rdzv_endpoint:
            raise UserError("several nodes need --rdzv-endpoint HOST:PORT (node 0's address and a free port)")
        rendezvous = [
            "--nnodes",
            str(spec.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            spec.rdzv_endpoint,
            "--rdzv-id",
            spec.rdzv_id,
        ]
    return [
        *torchrun_prefix(),
        *rendezvous,
        "--nproc-per-node",
        str(spec.nproc_per_node),
        "-m",
        "equissl.cli",
        *pretrain_args(spec),
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, for a local ``init_method=tcp://host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the launcher dies, even by SIGKILL (Linux), so that
    no training outlives it as an orphan (the SIGTERM makes it checkpoint and exit)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the forwarding below still applies
        pass


def run_command(command: list[str]) -> int:
    """Run ``command`` and forward the launcher's stop signals to it; its exit status.

    The child starts a process group of its own, so a signal sent to the launcher's group (Ctrl-C,
    ``kill -- -PGID``, a scheduler) reaches the training once, through the launcher, and not twice (a
    second signal means "abort now").
    """
    print(shlex.join(command), flush=True)
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509

    def forward(signum: int, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (*STOP_SIGNALS, signal.SIGUSR2)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # the launcher is leaving (an error): take the training down with it
            os.killpg(child.pid, signal.SIGTERM)
            child.wait()


# -- SLURM ---------------------------------------------------------------------------------------------


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise MissingExtraError("SLURM launches", "slurm", "submitit") from None
    return submitit


class SlurmPretrain:
    """The callable submitit runs in every task (one per GPU). Checkpointable: on SLURM's pre-timeout /
    preemption signal (USR2), the trainer finishes its step, writes a checkpoint, and the job requeues
    with the same arguments; the requeued job resumes from that checkpoint."""

    def __init__(self, config: str, overrides: list[str], override_optim: bool = False) -> None:
        self.config, self.overrides, self.override_optim = config, list(overrides), override_optim

    def __call__(self) -> str:
        submitit = _import_submitit()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from equissl.config import build_config
        from equissl.launch.trainer import Trainer

        trainer = Trainer(build_config(self.config, self.overrides), self.override_optim)
        trainer.stop_signals = (*STOP_SIGNALS, signal.SIGUSR2)
        result = trainer.fit()  # restores submitit's handlers when it returns
        if result.status == "interrupted":
            # The checkpoint is written. Hand the preemption signal back to submitit (its handler is
            # restored; it binds USR1 or USR2 depending on the version): it calls checkpoint() below and
            # requeues the job. Ranks that saw no signal themselves (stopped by the all-reduced flag) exit.
            handled = [s for s in (signal.SIGUSR1, signal.SIGUSR2) if callable(signal.getsignal(s))]
            if trainer.received_signal in handled:
                signal.raise_signal(trainer.received_signal)
            elif handled:
                signal.raise_signal(handled[0])
        return f"{result.status} at step {result.step}"

    def checkpoint(self):
        submitit = _import_submitit()
        # A requeued job resumes with the settings it already runs with: no optimiser override twice.
        return submitit.helpers.DelayedSubmission(SlurmPretrain(self.config, self.overrides))


@dataclass
class SlurmSpec:
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 0  # 0: the partition's default
    timeout_min: int = 24 * 60
    partition: str = ""
    account: str = ""
    folder: str = ""  # submitit logs; default runs/<name>/slurm


def slurm_parameters(slurm: SlurmSpec) -> dict:
    params = {
        "nodes": slurm.nodes,
        "tasks_per_node": slurm.gpus_per_node,
        "gpus_per_node": slurm.gpus_per_node,
        "cpus_per_task": slurm.cpus_per_task,
        "timeout_min": slurm.timeout_min,
        "slurm_signal_delay_s": 120,
        "name": "equissl",
    }
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.account:
        params["slurm_account"] = slurm.account
    return params


def submit_slurm(spec: LaunchSpec, slurm: SlurmSpec, dry_run: bool) -> int:
    from equissl.config import build_config

    overrides = pretrain_overrides(spec)
    config = build_config(spec.config, overrides)  # refuse bad keys before submitting
    folder = slurm.folder or str(config.run_dir / "slurm")
    params = slurm_parameters(slurm)
    print(
        f"submitit.AutoExecutor(folder={folder!r}).update_parameters({params}); "
        f"submit(SlurmPretrain({spec.config!r}, {overrides!r}))",
        flush=True,
    )
    if dry_run:
        return 0
    submitit = _import_submitit()
    executor = submitit.AutoExecutor(folder=folder)
    executor.update_parameters(**params)
    job = executor.submit(SlurmPretrain(spec.config, overrides, spec.override_optim))
    print(
        f"submitted SLURM job {job.job_id}; logs in {folder}; run the same launch again to resume", flush=True
    )
    return 0


# -- command line ----------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML recipe")
    p.add_argument("overrides", nargs="*", help="key=value overrides for pretrain")
    p.add_argument(
        "--override-optim", action="store_true", help="resume with changed optim.* settings (see pretrain)"
    )
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes (one per GPU) on each machine")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto", help="cpu: gloo processes on CPU")
    p.add_argument("--nnodes", type=int, default=1, help="machines; run the printed command on each")
    p.add_argument("--rdzv-endpoint", default="", help="HOST:PORT of node 0 (several nodes)")
    p.add_argument("--rdzv-id", default="equissl", help="rendezvous id shared by the nodes of one job")
    p.add_argument(
        "--slurm", action="store_true", help="submit to SLURM through submitit (requeues on preemption)"
    )
    p.add_argument("--gpus-per-node", type=int, default=1, help="SLURM: GPUs (= tasks) per node")
    p.add_argument("--nodes", type=int, default=1, help="SLURM: nodes")
    p.add_argument("--partition", default="", help="SLURM partition")
    p.add_argument("--account", default="", help="SLURM account")
    p.add_argument("--timeout-min", type=int, default=24 * 60, help="SLURM time limit per job, minutes")
    p.add_argument("--cpus-per-task", type=int, default=8, help="SLURM CPUs per task (data workers)")
    p.add_argument("--mem-gb", type=int, default=0, help="SLURM memory per node, GB (0: partition default)")
    p.add_argument("--dry-run", action="store_true", help="print the command (or SLURM parameters) only")


def main(args: argparse.Namespace) -> int:
    spec = LaunchSpec(
        args.config,
        list(args.overrides),
        args.nproc_per_node,
        args.device,
        args.nnodes,
        args.rdzv_endpoint,
        args.rdzv_id,
        args.override_optim,
    )
    if args.slurm:
        slurm = SlurmSpec(
            args.nodes,
            args.gpus_per_node,
            args.cpus_per_task,
            args.mem_gb,
            args.timeout_min,
            args.partition,
            args.account,
        )
        return submit_slurm(spec, slurm, args.dry_run)
    from equissl.config import build_config

    build_config(spec.config, spec.overrides)  # refuse bad keys before starting processes
    command = build_command(spec)
    if spec.nnodes > 1:
        print(f"# run this same command on each of the {spec.nnodes} nodes:", flush=True)
    if args.dry_run:
        print(shlex.join(command), flush=True)
        return 0
    return run_command(command)
