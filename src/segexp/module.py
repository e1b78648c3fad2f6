"""The LightningModule: loss, poly-scheduled SGD, and whole-split metrics for a Segmentor.

Training follows DeepLabv3 Sec. 4.1: the loss is computed on logits upsampled to the label size
(or, for Table 8's ablation, on labels downsampled to the logit size), an optional auxiliary head
adds a weighted second loss, and the LR follows the poly schedule stepped every optimizer step.
Validation accumulates one confusion matrix over the whole split (see :mod:`segexp.metrics`) and
may run the same weights at another output stride (Table 10).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.inference import Inference
from segexp.metrics import confusion_matrix_metric, metrics_from_confusion
from segexp.schedules.poly import PolySchedule
from segexp.segmentor import Segmentor


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
        aux_weight: float = 0.0,
        downsample_labels: bool = False,
        eval_output_stride: int | None = None,
        inference: Inference | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.schedule = schedule
        self.class_names = tuple(class_names)
        self.aux_weight = aux_weight
        self.downsample_labels = downsample_labels
        self.eval_output_stride = eval_output_stride
        self.inference = inference or Inference()
        self.config = config or {}
        self.confusion = confusion_matrix_metric(len(self.class_names))
        self.last_metrics: dict[str, Any] = {}
        self.last_val_step = -1

    # ----------------------------------------------------------------- training
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def head_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Loss of one head's low-resolution logits against full-resolution labels."""
        if self.downsample_labels:
            small = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest")
            return self.loss(logits, small[:, 0].long())
        return self.loss(self.model.upsample(logits, tuple(labels.shape[-2:])), labels)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self.model.forward_raw(batch["image"])
        loss = self.head_loss(outputs["out"], batch["label"])
        if "aux" in outputs:
            aux = self.head_loss(outputs["aux"], batch["label"])
            self.log("train/aux_loss", aux)
            loss = loss + self.aux_weight * aux
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"Training loss is {loss.item()} at step {self.global_step}: stopping. Lower schedule.lr, "
                "check the labels, or run with debug=anomaly to find the operation."
            )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError(f"trainer.max_steps must be > 0 for the poly schedule, got {max_steps}")
        heads = [m for m in (self.model.head, self.model.aux_head) if m is not None]
        optimizer, scheduler = self.schedule.build(self.model.backbone, heads, max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # --------------------------------------------------------------- evaluation
    def predict_logits(self, images: Tensor) -> Tensor:
        """Full-resolution class scores for a batch under the configured inference strategy."""
        return self.inference(self.model, images)

    def _eval_step(self, batch: dict[str, Tensor], prefix: str) -> Tensor:
        logits = self.predict_logits(batch["image"])
        labels = batch["label"]
        self.confusion.update(logits.argmax(dim=1), labels)
        if self.inference.is_plain:  # otherwise the scores are averaged probabilities, not logits
            loss = self.loss(logits, labels)
            self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=labels.shape[0])
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
        self.last_metrics = metrics
        self.last_val_step = self.global_step
        for key in ("mIoU", "pixel_acc", "mean_acc"):
            self.log(f"{prefix}/{key}", metrics[key], prog_bar=key == "mIoU", sync_dist=False)
        for name, iou in metrics["per_class_iou"].items():
            if iou is not None:
                self.log(f"{prefix}/iou/{name}", iou)

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["segexp"] = {"config": self.config, "class_names": list(self.class_names)}
        # Dropout and other torch ops draw from the global RNG; restoring it makes resume exact.
        checkpoint["segexp_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "segexp_rng" in checkpoint:
            torch.set_rng_state(checkpoint["segexp_rng"])
