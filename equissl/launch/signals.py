"""Stop signals as clusters and users send them: finish the step, checkpoint, exit 0; a second one aborts.

What sends them: ``kill`` / Ctrl-C (SIGINT to the foreground group), ``kill -- -PGID`` and systemd (SIGTERM
to the whole process group), SLURM's time limit and preemption (SIGTERM / SIGUSR1 / SIGUSR2 to every task),
torchrun (the same signal to every rank's process group), ``equissl launch`` (forwards its own).

- The training process handles SIGTERM, SIGINT and SIGUSR1 (SLURM runs add SIGUSR2) with
  :class:`StopFlag`: the first sets a flag that the loop reads after the optimizer step (all-reduced over
  ranks, so every rank checkpoints at the same step) and prints one line; a second one aborts at once
  (:class:`KeyboardInterrupt`), leaving the last complete checkpoint (checkpoints are atomic).
- DataLoader workers are in the same process group, so they receive the same signals. torch's workers
  exit on a SIGTERM that does not come from their parent (and Python's default SIGINT raises), which kills
  the run mid-step. :func:`ignore_stop_signals`, their ``worker_init_fn``, makes them ignore the stop
  signals: they stop when the main process shuts the loader down, or dies (torch's workers watch it).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: workers leave stopping to the main process."""
    for sig in (*STOP_SIGNALS, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """The stop signals' handler while a run trains.

    ``signal`` is the first signal received (None before); ``install`` / ``restore`` swap the handlers of
    the main thread (a no-op elsewhere, e.g. under a test runner's thread).
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, announce: bool = True) -> None:
        self.signal: int | None = None
        self.signals = signals
        self.announce = announce  # one line on stderr (rank 0 only, so a group signal prints once)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            raise KeyboardInterrupt(
                f"second stop signal ({name}): aborted; the last complete checkpoint is kept"
            )
        self.signal = signum
        if self.announce:
            print(
                f"{name}: finishing this step and writing a checkpoint; send it again to abort now",
                file=sys.stderr,
                flush=True,
            )

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
