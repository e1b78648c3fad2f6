"""Callbacks: checkpoints written atomically (the latest state, periodically and on pre-emption; the best by
val mIoU), validation examples for the dashboards and submission PNGs for the evaluation servers."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from segexp import atomic
from segexp.data.datasets.base import IGNORE_INDEX, SegmentationDataset
from segexp.data.submission import submission_name, submission_png

log = logging.getLogger(__name__)


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
    fitting, on pre-emption (:class:`Preemption`) and once more when training ends, whatever the validation
    metric did.

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


class ValidationExamples(pl.Callback):
    """Logs the first ``num_images`` validation images (of as many batches as that takes) with predicted and true
    masks, once per validation.

    wandb gets interactive mask overlays (``wandb.Image(masks=...)``); TensorBoard gets a
    side-by-side image | prediction overlay | label overlay strip per image (strips of images of several sizes are
    padded with black to the largest). Other loggers are skipped.
    With a fusion that weighs the input scales per pixel (attention to scale, msattn), the weight of each
    scale is logged too (``val/scale_attention``): the image next to one heat map per scale (dark = 0,
    bright = 1), from :meth:`segexp.models.segmentor.Segmentor.scale_attention` on the same images.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, Tensor]] = []
        self._logged = False

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending, self._logged = [], False

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self._logged or trainer.sanity_checking or not trainer.is_global_zero or outputs is None:
            return
        take = self.num_images - len(self._pending)
        datamodule = trainer.datamodule
        images = _denormalize(batch["image"][:take], datamodule.mean, datamodule.std)
        preds = outputs[:take].argmax(dim=1).cpu().numpy().astype(np.uint8)
        labels = batch["label"][:take].cpu().numpy()
        for i in range(len(images)):
            self._pending.append((images[i], preds[i], labels[i], batch["image"][i:i + 1]))
        if len(self._pending) >= self.num_images:
            self.log_examples(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending and not self._logged:  # a split smaller than num_images
            self.log_examples(trainer, pl_module)

    def log_examples(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images, preds, labels, inputs = (list(part) for part in zip(*self._pending, strict=True))
        self._pending, self._logged = [], True
        datamodule = trainer.datamodule
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _log_wandb(logger, images, preds, labels, datamodule.class_names, trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                strips = [_overlay_strip(i, p, m, datamodule.palette) for i, p, m in zip(images, preds, labels)]
                logger.experiment.add_images(
                    "val/examples", _stack_padded(strips), trainer.global_step, dataformats="NHWC"
                )
        self.log_scale_attention(trainer, pl_module, inputs, images)

    def log_scale_attention(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Sequence[Tensor],
        images: Sequence[np.ndarray],
    ) -> None:
        """The per-scale attention weights of the model's fusion on the logged images (``inputs``: each image's
        normalised (1, 3, H, W) tensor), if it has any."""
        model = getattr(pl_module, "model", None)
        if getattr(model, "fusion", None) is None or not hasattr(model.fusion, "scale_weights"):
            return
        maps = []
        with torch.no_grad():
            for batch_image in inputs:
                weights = model.scale_attention(pl_module.in_model_layout(batch_image))
                if weights is None:
                    return
                maps.append((weights[0].float().clamp(0, 1) * 255).round().byte().cpu().numpy())  # (S, H, W)
        captions = " | ".join(f"scale {s:g}" for s in model.scales)
        strips = [_attention_strip(image, heat) for image, heat in zip(images, maps)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/scale_attention", images=strips, step=trainer.global_step,
                                 caption=[f"image | {captions}"] * len(strips))
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_images(
                    "val/scale_attention", _stack_padded(strips), trainer.global_step, dataformats="NHWC"
                )


def _stack_padded(strips: Sequence[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3) of strips of several sizes, each padded bottom/right with black to the largest."""
    height, width = max(s.shape[0] for s in strips), max(s.shape[1] for s in strips)
    out = np.zeros((len(strips), height, width, 3), dtype=np.uint8)
    for i, strip in enumerate(strips):
        out[i, : strip.shape[0], : strip.shape[1]] = strip
    return out


def _denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    pixels = ((images * s + m).clamp(0, 1) * 255).round().byte()
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _colorize(mask: np.ndarray, palette: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[mask.astype(np.uint8)]


def _overlay_strip(
    image: np.ndarray, pred: np.ndarray, label: np.ndarray, palette: tuple[tuple[int, int, int], ...]
) -> np.ndarray:
    def overlay(mask: np.ndarray) -> np.ndarray:
        mixed = (0.5 * image + 0.5 * _colorize(mask, palette)).astype(np.uint8)
        mixed[mask == IGNORE_INDEX] = image[mask == IGNORE_INDEX]
        return mixed

    return np.concatenate([image, overlay(pred), overlay(label)], axis=1)


def _attention_strip(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``image`` (H, W, 3) beside one grey heat map per scale, ``maps`` (S, H, W) uint8."""
    return np.concatenate([image, *[np.repeat(m[..., None], 3, axis=-1) for m in maps]], axis=1)


def _log_wandb(
    logger: WandbLogger, images: Sequence[np.ndarray], preds: Sequence[np.ndarray], labels: Sequence[np.ndarray],
    class_names: tuple[str, ...], step: int,
) -> None:
    class_labels = {i: name for i, name in enumerate(class_names)} | {IGNORE_INDEX: "ignore"}
    masks = [
        {
            "prediction": {"mask_data": p, "class_labels": class_labels},
            "ground_truth": {"mask_data": lab.astype(np.uint8), "class_labels": class_labels},
        }
        for p, lab in zip(preds, labels)
    ]
    logger.log_image(key="val/examples", images=list(images), step=step, masks=masks)


class SavePredictions(pl.Callback):
    """Writes every evaluated image's prediction as a server-format PNG into ``out_dir``.

    Used by ``segexp-eval ... save_predictions=true`` (DeepLabv3 Tables 7 and 13; formats in
    :mod:`segexp.data.submission`). The module's ``validation_step`` / ``test_step`` return the full-resolution
    scores, whose argmax is cropped to the sample's label size (the original resolution); the file name
    comes from the image path of the sample (``dataset.samples[index][0]``).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.written = 0

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self.save_batch(_loader_dataset(trainer.val_dataloaders, dataloader_idx), outputs, batch)

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        self.save_batch(_loader_dataset(trainer.test_dataloaders, dataloader_idx), outputs, batch)

    def save_batch(self, dataset: SegmentationDataset, scores: Tensor, batch: dict[str, Tensor]) -> None:
        """One PNG per sample of ``batch`` from its ``(B, C, H, W)`` scores."""
        if not isinstance(scores, Tensor) or scores.ndim != 4:
            raise TypeError("SavePredictions needs the eval step to return (B, C, H, W) scores")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        predictions = scores.argmax(dim=1).cpu().numpy()
        for k, index in enumerate(batch["index"].tolist()):
            height, width = batch["label"][k].shape[-2:]
            prediction = predictions[k, :height, :width]
            image_path = dataset.samples[index][0] if dataset.samples else None
            png = submission_png(prediction, type(dataset))
            atomic.write_png(self.out_dir / submission_name(image_path, index), png)
            self.written += 1


def _loader_dataset(loaders: Any, dataloader_idx: int) -> SegmentationDataset:
    loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
    return loader.dataset
