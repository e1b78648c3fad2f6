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
        if not (target != self.ignore_index).any():
            # F.cross_entropy returns NaN when every pixel is ignored; such a crop carries no signal.
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
