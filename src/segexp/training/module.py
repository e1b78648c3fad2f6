"""The LightningModule: loss, poly-scheduled SGD, and whole-split metrics for a Segmentor.

Training follows DeepLabv3 Sec. 4.1: the loss is computed on logits upsampled to the label size
(or, for Table 8's ablation, on labels downsampled to the logit size), and the LR follows the poly
schedule stepped every optimizer step. The segmentor's outputs are named and weighted (main head,
auxiliary head, one per input scale): the training loss is ``sum_k weight_k * loss(output_k, labels)``
and each term is logged as ``train/loss/<output>``. A loss whose ``forward`` has a ``batch`` parameter
also receives the whole batch (for weights computed from the label map or read from other batch keys).
Validation accumulates one confusion matrix over the whole split (see :mod:`segexp.training.metrics`) and
may run the same weights at another output stride (Table 10).
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from segexp.models.losses.label_grid import labels_on_score_grid
from segexp.models.segmentor import Segmentor
from segexp.models.shifted_passes import shifted_pass_outputs
from segexp.training.inference import Inference
from segexp.training.metrics import confusion_matrix_metric, metrics_from_confusion
from segexp.training.schedules.poly import PolySchedule


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class SegmentationModule(pl.LightningModule):
    """Trains and evaluates a :class:`Segmentor`; ``config`` (a plain dict) is kept in checkpoints."""

    def __init__(
        self,
        model: Segmentor,
        loss: nn.Module,
        schedule: PolySchedule,
        class_names: tuple[str, ...],
        downsample_labels: bool = False,
        eval_output_stride: int | None = None,
        channels_last: bool | None = None,
        compile_model: bool = False,
        train_shift_passes: bool = False,
        inference: Inference | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.schedule = schedule
        self.class_names = tuple(class_names)
        self.loss_takes_batch = "batch" in inspect.signature(loss.forward).parameters
        self.downsample_labels = downsample_labels
        self.eval_output_stride = eval_output_stride
        self.channels_last = channels_last
        self.compile_model = compile_model
        self.train_shift_passes = train_shift_passes
        self._memory_format = torch.contiguous_format
        self._compiled = False
        self.inference = inference or Inference()
        self.config = config or {}
        self.confusion = confusion_matrix_metric(len(self.class_names))
        self.eval_loss = MeanMetric()  # batch-size weighted, synchronised across DDP ranks
        self.last_metrics: dict[str, Any] = {}
        self.last_val_step = -1
        self.best_miou: float | None = None
        self.best_step: int | None = None
        self.resumes: list[dict[str, Any]] = []
        """What each resume of this run continued from (:mod:`segexp.training.resume`), oldest first."""
        self.resumed_wall_s = 0.0
        """Training seconds of the sessions before this one (from the resumed checkpoint)."""
        self.session_start: float | None = None
        self.eval_images = SumMetric()  # images scored by the last validation/test, summed over DDP ranks
        self.last_eval_images = 0
        self._non_finite: tuple[Tensor, Tensor] | None = None
        """On the loss's device: the first step with a non-finite training loss (-1: none yet) and that loss."""

    # ------------------------------------------------------------ device setup
    def setup(self, stage: str) -> None:
        """Speed settings that depend on the device: channels_last (on CUDA unless disabled) and compile.

        Both act in place on the network, so parameter names (checkpoints, optimizer groups) are unchanged.
        ``torch.compile`` wraps the backbone and heads, not this LightningModule, so ``self.log`` and
        Lightning's DDP wrapper stay outside the compiled graphs.
        """
        on_cuda = self.trainer.strategy.root_device.type == "cuda"
        if on_cuda if self.channels_last is None else self.channels_last:
            self._memory_format = torch.channels_last
            self.model.to(memory_format=torch.channels_last)
        if self.compile_model and not self._compiled:
            for part in (self.model.backbone, self.model.head, self.model.aux_head, self.model.fusion):
                if part is not None:
                    part.compile()
            self._compiled = True

    def in_model_layout(self, images: Tensor) -> Tensor:
        """``images`` in the network's memory format (NHWC after :meth:`setup` chose channels_last)."""
        return images.contiguous(memory_format=self._memory_format)

    # ----------------------------------------------------------------- training
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def compute_loss(self, logits: Tensor, labels: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """The loss module on ``logits`` and ``labels`` of the same size (and the batch when it asks for it)."""
        if self.loss_takes_batch:
            return self.loss(logits, labels, batch=batch)
        return self.loss(logits, labels)

    def output_loss(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Loss of one output's low-resolution logits against the batch's full-resolution labels: logits
        upsampled to the labels, or (``model.downsample_labels``) the labels sampled on the logits' grid, nearest
        with void kept (``labels[..., ::OS, ::OS]`` for a 'same'-padded network; see
        :func:`segexp.models.losses.label_grid.labels_on_score_grid`)."""
        labels = batch["label"]
        if self.downsample_labels:
            small = labels_on_score_grid(labels, tuple(logits.shape[-2:]), stride=self.score_stride)
            return self.compute_loss(logits, small, batch)
        return self.compute_loss(self.model.upsample(logits, tuple(labels.shape[-2:])), labels, batch)

    @property
    def score_stride(self) -> int:
        """Input pixels per score pixel of the training outputs: the output stride, halved by shifted passes."""
        stride = int(self.model.output_stride)
        return stride // 2 if self.train_shift_passes else stride

    def raw_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """The segmentor's low-resolution outputs; with ``model.train_shift_passes`` from four shifted passes
        at twice the resolution (FCRN Sec. 3.2, :mod:`segexp.models.shifted_passes`)."""
        if self.train_shift_passes:
            return shifted_pass_outputs(self.model, images)
        return self.model.forward_raw(images)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self.raw_outputs(self.in_model_layout(batch["image"]))
        weights = self.model.loss_weights
        terms = {name: self.output_loss(outputs[name], batch) for name in outputs if weights.get(name, 0.0) != 0.0}
        loss = sum(weights[name] * term for name, term in terms.items())
        if len(outputs) > 1:
            for name, term in terms.items():
                self.log(f"train/loss/{name}", term)
        self._note_non_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _note_non_finite(self, loss: Tensor) -> None:
        """Remember, on the loss's device, the first step whose loss is NaN or infinite, without reading the loss
        on the host: a read (``loss.item()``) would wait for the GPU every step. :meth:`_stop_if_non_finite`
        reads the record at the points where the host waits anyway (logging, validation, checkpoints, the end)."""
        detached = loss.detach()
        if self._non_finite is None or self._non_finite[0].device != detached.device:
            self._non_finite = (torch.full((), -1, dtype=torch.long, device=detached.device),
                                torch.zeros((), dtype=torch.float32, device=detached.device))
        first_step, first_value = self._non_finite
        new = ~torch.isfinite(detached) & (first_step < 0)
        first_step.masked_fill_(new, self.global_step)
        first_value.copy_(torch.where(new, detached.float(), first_value))

    def _stop_if_non_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` (naming the first such step) if a training loss was NaN or infinite."""
        if self._non_finite is None:
            return
        first_step, first_value = (float(t) for t in self._non_finite)
        if first_step >= 0:
            raise NonFiniteLossError(
                f"Training loss is {first_value} at step {int(first_step)}: stopping. Lower schedule.lr, "
                "check the labels, or run with debug=anomaly to find the operation."
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Check for a non-finite loss at Lightning's logging interval, when the host reads the logged loss anyway."""
        if self.global_step % max(1, self.trainer.log_every_n_steps or 1) == 0:
            self._stop_if_non_finite()

    def on_train_end(self) -> None:
        self._stop_if_non_finite()

    def configure_optimizers(self) -> dict[str, Any]:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError(f"trainer.max_steps must be > 0 for the poly schedule, got {max_steps}")
        optimizer, scheduler = self.schedule.build(self.model.backbone, self.head_parts(), max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def head_parts(self) -> list[nn.Module]:
        """Everything but the backbone: the parts trained with the head's learning rate (``head_lr_mult``)."""
        return [m for m in (self.model.head, self.model.aux_head, self.model.fusion) if m is not None]

    # --------------------------------------------------------------- evaluation
    def predict_logits(self, images: Tensor) -> Tensor:
        """Full-resolution class scores for a batch under the configured inference strategy."""
        return self.inference(self.model, images)

    def _eval_step(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        logits = self.predict_logits(self.in_model_layout(batch["image"]))
        labels = batch["label"]
        self.confusion.update(logits.argmax(dim=1), labels)
        self.eval_images.update(float(labels.shape[0]))
        if self.inference.is_plain:  # otherwise the scores are averaged probabilities, not logits
            self.eval_loss.update(self.compute_loss(logits, labels, batch), weight=labels.shape[0])
        return logits

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def _switch_output_stride(self, to_eval: bool) -> None:
        if self.eval_output_stride is None:
            return
        if to_eval:
            self._train_output_stride = self.model.output_stride
            self.model.set_output_stride(self.eval_output_stride)
        else:
            self.model.set_output_stride(self._train_output_stride)

    def on_validation_epoch_start(self) -> None:
        self._stop_if_non_finite()
        self._switch_output_stride(True)

    def on_test_epoch_start(self) -> None:
        self._switch_output_stride(True)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _finish_eval(self, prefix: str) -> None:
        self._switch_output_stride(False)
        metrics = metrics_from_confusion(self.confusion.compute(), self.class_names)
        self.confusion.reset()
        self.last_eval_images = int(self.eval_images.compute()) if self.eval_images.update_called else 0
        self.eval_images.reset()
        self.last_metrics = metrics
        self.last_val_step = self.global_step
        self._track_best(metrics.get("mIoU"))
        scalars = {f"{prefix}/{key}": metrics[key] for key in ("mIoU", "pixel_acc", "mean_acc")}
        scalars.update({f"{prefix}/iou/{name}": iou for name, iou in metrics["per_class_iou"].items()
                        if iou is not None})
        if self.eval_loss.update_called:
            scalars[f"{prefix}/loss"] = float(self.eval_loss.compute())
        self.eval_loss.reset()
        # For the checkpoint monitor and the progress bar only; the dashboards get the scalars below at
        # global_step, the step of the checkpoint they describe (Lightning would log them one step earlier).
        self.log(f"{prefix}/mIoU", metrics["mIoU"], prog_bar=True, logger=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics(scalars, step=self.global_step)

    def _track_best(self, miou: float | None) -> None:
        """The best val mIoU so far and its step (the final one is ``last_metrics``/``last_val_step``)."""
        if miou is not None and math.isfinite(miou) and (self.best_miou is None or miou > self.best_miou):
            self.best_miou, self.best_step = float(miou), self.global_step

    # -------------------------------------------------------------- checkpoints
    def wall_s(self) -> float:
        """Training seconds of this run over all its sessions: those before the resumed checkpoint, plus this
        session's (from ``session_start``, set when fitting starts)."""
        if self.session_start is None:
            return self.resumed_wall_s
        return self.resumed_wall_s + time.perf_counter() - self.session_start

    def on_fit_start(self) -> None:
        self._non_finite = None
        if self.session_start is None:
            self.session_start = time.perf_counter()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_non_finite()  # never save weights that a non-finite loss has updated
        checkpoint["segexp"] = {"config": self.config, "class_names": list(self.class_names),
                                "best_mIoU": self.best_miou, "best_step": self.best_step,
                                "wall_s": self.wall_s(), "resumes": self.resumes}
        # Dropout and other torch ops draw from the global RNG; restoring it makes resume exact.
        checkpoint["segexp_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("segexp", {})
        self.best_miou, self.best_step = stored.get("best_mIoU"), stored.get("best_step")
        if "segexp_rng" in checkpoint:
            torch.set_rng_state(checkpoint["segexp_rng"])
