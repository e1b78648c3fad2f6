"""Max fusion over scales: DeepLab-V2's multi-scale inputs (MSC, Chen et al. 2016, Sec. 3.3).

"We fuse [the score maps of the scaled inputs] by taking at each position the maximum response across
the scales." Given S logits of shape (B, C, h, w) on one grid, the output is their element-wise maximum
(per pixel and class). Max pooling over scales is also one of the baselines of the attention-to-scale
paper (Chen et al. 2016, Table 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MaxFusion(nn.Module):
    """Element-wise maximum of the per-scale logits (no parameters)."""

    def set_output_stride(self, output_stride: int) -> None:
        """Nothing here depends on the output stride."""

    def forward(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]] | None = None) -> Tensor:
        return torch.stack(list(logits)).amax(dim=0)
