"""Mean fusion over scales: the average-pooling baseline of attention to scale (Chen et al. 2016, Table 1).

Given S logits of shape (B, C, h, w) on one grid, the output is their element-wise mean (equal weight
1/S for every scale at every position; attention to scale learns these weights per position instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MeanFusion(nn.Module):
    """Element-wise mean of the per-scale logits (no parameters)."""

    def set_output_stride(self, output_stride: int) -> None:
        """Nothing here depends on the output stride."""

    def forward(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]] | None = None) -> Tensor:
        return torch.stack(list(logits)).mean(dim=0)
