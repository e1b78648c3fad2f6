"""Checkpoints written atomically: ``last.ckpt``, the latest training state (periodically, after every
validation, on pre-emption and at the end), and the best checkpoint by val mIoU. Reading them back (the one reader,
the resume choice) is :mod:`segexp.training.checkpoints`; the atomic write itself is :mod:`segexp.atomic`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from segexp import atomic


def save_checkpoint_atomically(trainer: pl.Trainer, path: Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` through a temporary file that is flushed to disk and renamed over ``path``
    (:mod:`segexp.atomic`): a kill at any instant leaves the old file or the new one, never a torn one, and a
    failed write (a full disk) leaves the old file and raises an error naming ``path``. Every rank takes part
    in gathering the state; only rank 0 writes."""
    if not trainer.is_global_zero:
        trainer.save_checkpoint(path, weights_only)
        return
    try:
        with atomic.atomic_path(path, fsync=True) as tmp:
            trainer.save_checkpoint(tmp, weights_only)
    except OSError as err:  # a full disk, a quota, a vanished mount
        raise OSError(err.errno, f"could not write checkpoint {path}: {err.strerror or err}; the previous "
                                 "checkpoint is left as it was") from err


class LastCheckpoint(pl.Callback):
    """``<dirpath>/last.ckpt`` is always the latest training state: written every ``every_n_steps`` optimizer
    steps (independent of validation; None or 0: never on that account), after every validation during
    fitting, on pre-emption (:class:`segexp.training.preemption.Preemption`) and once more when training ends,
    whatever the validation metric did.

    (Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it also writes a top-k
    checkpoint, so with ``monitor`` set it lags behind whenever the metric did not improve.) The file is
    written atomically (:func:`save_checkpoint_atomically`).
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"callbacks.last.every_n_steps must be >= 0 (0 or null: only at validation and the "
                             f"end), got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps or 0
        self.saved_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILENAME

    def save(self, trainer: pl.Trainer) -> None:
        """Write the trainer's full state (weights, optimizer, loops, callbacks) to ``last.ckpt``: Lightning's
        ``weights_only=False`` when saving (a resume needs more than weights). The full state is plain tensors,
        numbers and strings, so resuming reads it back with ``weights_only=True`` (no pickled objects)."""
        if self.saved_step == trainer.global_step:
            return
        save_checkpoint_atomically(trainer, self.path)
        trainer.strategy.barrier("LastCheckpoint.save")
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the best checkpoint by a monitored metric, periodic ones) with every
    file written atomically (:func:`save_checkpoint_atomically`) instead of in place."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        save_checkpoint_atomically(trainer, Path(filepath), self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
