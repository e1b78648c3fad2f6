"""Pre-emption: on SIGTERM or SIGUSR1 training saves ``last.ckpt`` at the end of the current step and stops with
:class:`Preempted` (exit status 75), so that rerunning the same command resumes it (``ckpt_path=auto``)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins.environments import SLURMEnvironment

from segexp.training.checkpoint_callbacks import LastCheckpoint

log = logging.getLogger(__name__)


class Preempted(RuntimeError):
    """Training stopped on a pre-emption signal after saving its state; rerunning the command resumes it."""

    EXIT_CODE = 75
    """The process's exit status after a pre-emption (sysexits' EX_TEMPFAIL: "try again later")."""


class Preemption(pl.Callback):
    """SIGTERM (a scheduler's pre-emption, ``kill``) or SIGUSR1 (what SLURM sends before a time limit with
    ``--signal=USR1@<seconds>``) makes training save ``last.ckpt`` at the end of the current step and stop
    with :class:`Preempted`; rerunning the same command with ``ckpt_path=auto`` resumes from it.

    SIGTERM is caught by Lightning itself (it sets ``trainer.received_sigterm`` and stops after the step,
    across DDP ranks); this callback saves the state first. SIGUSR1 gets a handler here, except where
    Lightning's SLURM auto-requeue owns it (a SLURM job with ``auto_requeue``: Lightning then writes its own
    ``hpc_ckpt_*.ckpt``, requeues the job and resumes from it; those files are resume candidates too).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's signal connector has taken its snapshot of the handlers (it puts that snapshot back
        # at teardown) and chosen its own: under SLURM auto-requeue it owns SIGUSR1, and this one stays out.
        if threading.current_thread() is not threading.main_thread():
            return
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return
        self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: saving the state at the end of this step", signal.Signals(signum).name)
        self.received = signum

    def requested(self, trainer: pl.Trainer) -> str | None:
        """The signal that asks to stop, or None. With several ranks they agree (any rank's signal counts), so
        all of them save and stop at the same step."""
        stop = self.received is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return None
        return signal.Signals(self.received).name if self.received is not None else "SIGTERM"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        name = self.requested(trainer)
        if name is None:
            return
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if last is None:
            raise Preempted(f"{name} at step {trainer.global_step}: no `last` checkpoint callback, so nothing was "
                            "saved")
        last.save(trainer)
        raise Preempted(f"{name} at step {trainer.global_step}: state saved to {last.path}; rerun the same "
                        "command with ckpt_path=auto (or last) in the same run folder to resume")

    def restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore_handlers()  # Lightning does not call teardown after an exception
