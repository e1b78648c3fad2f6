"""Pooled context branch shared by the ASPP, PAC and PSP heads: adaptive average pool to ``bins`` x ``bins``
cells -> 1x1 conv (no bias) -> BN -> ReLU -> bilinear upsampling (align_corners=False) to the input's size.

``bins=1`` is DeepLabv3's image-level feature branch (Chen et al., Sec. 3.3, as torchvision's ASPPPooling);
``bins`` in (1, 2, 3, 6) are PSPNet's pyramid levels (Zhao et al., Sec. 3.2).

Batch size 1: when the pooled map holds one value per channel over the whole batch (B * bins * bins == 1),
BatchNorm has no batch statistics in training mode; torch's BN raises on it, and the branch would be
degenerate anyway (the normalised value is always 0, so its conv gets no gradient). The branch raises a
ValueError naming its owner and the owner's remedies instead. Eval mode, a frozen BN or SyncBatchNorm across
several processes work at batch 1.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PoolingBranch(nn.Module):
    """(B, in_channels, h, w) -> (B, out_channels, h, w): pooled to ``bins`` x ``bins``, projected, upsampled.

    ``name`` is how the batch-1 error names the branch (e.g. "ASPPHead image-level branch") and ``remedy``
    what it suggests besides batch size >= 2 and a frozen BN (e.g. "or set image_pooling=False").
    """

    def __init__(self, in_channels: int, out_channels: int, bins: int = 1, name: str = "pooling branch",
                 remedy: str = "") -> None:
        super().__init__()
        if bins < 1:
            raise ValueError(f"{name}: bins must be >= 1, got {bins}")
        self.bins = bins
        self.name = name
        self.remedy = remedy
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv(self.pool(x))
        if pooled[:, 0].numel() == 1 and isinstance(self.bn, nn.BatchNorm2d) and self.bn.training:
            raise ValueError(
                f"{self.name}: BatchNorm on the {self.bins}x{self.bins} pooled features has a single value per "
                "channel at batch size 1 in training mode, so batch statistics are undefined. Train with batch "
                f"size >= 2, freeze BN{self.remedy and ', ' + self.remedy}."
            )
        pooled = self.relu(self.bn(pooled))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
