"""Validation examples for the dashboards: the first validation images with predicted and true masks (wandb mask
overlays, TensorBoard image strips), and the per-scale weights of an attention-to-scale fusion on the same images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from segexp.data.datasets.base import IGNORE_INDEX
from segexp.models.contracts import ScaleWeighting


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
        if not isinstance(getattr(model, "fusion", None), ScaleWeighting):
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
