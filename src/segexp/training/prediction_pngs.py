"""Submission PNGs: every evaluated image's prediction written as a PNG in an evaluation server's format (the
formats are :mod:`segexp.data.submission`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from segexp import atomic
from segexp.data.datasets.base import SegmentationDataset
from segexp.data.submission import submission_name, submission_png


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
