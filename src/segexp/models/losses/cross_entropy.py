"""Pixel-wise cross-entropy with an ignore label and optional class weights.

The standard segmentation loss of all five papers: mean over labelled pixels of
``-w[y] * log softmax(logits)[y]`` (weighted mean, as ``torch.nn.functional.cross_entropy``
defines it when class weights are given).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.labels import IGNORE_INDEX


class CrossEntropy(nn.Module):
    """Cross-entropy over ``(B, C, H, W)`` logits and ``(B, H, W)`` integer labels."""

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, class_weights: list[float] | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.class_weights is not None and self.class_weights.numel() != logits.shape[1]:
            raise ValueError(
                f"loss.class_weights has {self.class_weights.numel()} entries but the model predicts "
                f"{logits.shape[1]} classes"
            )
        # The weighted mean written out, so that a crop whose pixels are all ignored gives 0 (F.cross_entropy's
        # mean gives NaN there) without asking the device whether any pixel is labelled (a host sync per step).
        losses = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                                 reduction="none")
        labelled = target != self.ignore_index
        if self.class_weights is None:
            weights = labelled.to(losses.dtype)
        else:
            weights = self.class_weights.to(losses.dtype)[target.clamp(0, logits.shape[1] - 1)] * labelled
        return losses.sum() / weights.sum().clamp_min(torch.finfo(losses.dtype).tiny)
