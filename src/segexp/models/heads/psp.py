"""PSPNet head: the pyramid pooling module (Zhao et al. 2017, "Pyramid Scene Parsing Network", Sec. 3.2), as in
the CSAIL ADE20K baselines (``PPM`` decoder of semantic-segmentation-pytorch).

What it computes, for a (B, in_channels, h, w) feature map:

* one branch per bin size b in ``bins`` (1, 2, 3, 6 in the paper): adaptive average pooling to b x b ->
  1x1 conv to ``channels`` (no bias) -> BN -> ReLU -> bilinear upsampling to h x w (align_corners=False);
* concat [input, branches...] -> 3x3 conv to ``channels`` (no bias) -> BN -> ReLU -> Dropout2d(``dropout``)
  -> 1x1 conv (with bias) to ``num_classes`` logits at h x w.

The paper reduces each branch to 1/N of the input channels (N = 4 levels); the CSAIL baselines use 512
channels per branch and in the fusion conv, the defaults here. PSPNet's auxiliary loss on res4b22 is not
part of this head (``aux_head=fcn`` gives one).

The bins are adaptive pools (fixed numbers of cells, not fixed window sizes), so the head runs unchanged at
any output stride: :meth:`PSPHead.set_output_stride` only records it.

Batch size 1: the 1-bin branch's BN sees one value per channel in training (a 1x1 map per sample), so batch
statistics are undefined; as for ASPP's image pooling (both are :class:`.pooling.PoolingBranch`), training
needs batch >= 2 or frozen BN, and the branch raises a ValueError saying so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segexp.models.heads.base import ClassifierHead, classifier_conv, dropout2d, single_feature_keys
from segexp.models.heads.pooling import PoolingBranch

DEFAULT_BINS = (1, 2, 3, 6)


def check_bins(bins: Sequence[int]) -> tuple[int, ...]:
    """``bins`` as a tuple; a ValueError unless they are distinct positive integers, at least one."""
    values = tuple(bins)
    if not values:
        raise ValueError("PSPHead: bins must hold at least one bin size, got []")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values):
        raise ValueError(f"PSPHead: bins must be positive integers, got {list(values)}")
    if len(set(values)) != len(values):
        raise ValueError(f"PSPHead: bins must be distinct, got {list(values)}")
    return values


class PSPHead(ClassifierHead, nn.Module):
    """Pyramid pooling head mapping (B, in_channels, h, w) features to (B, num_classes, h, w) logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int | None = None,
        bins: Sequence[int] = DEFAULT_BINS,
        channels: int = 512,
        dropout: float = 0.1,
        in_keys: Sequence[str] = ("out",),
    ) -> None:
        super().__init__()
        self.in_keys = single_feature_keys(in_keys, "PSPHead")  # the backbone feature it reads
        self.bins = check_bins(bins)
        if channels < 1:
            raise ValueError(f"PSPHead: channels must be >= 1, got {channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.branches = nn.ModuleList(
            PoolingBranch(in_channels, channels, b, name=f"PSPHead {b}x{b} branch") for b in self.bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + len(self.bins) * channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = dropout2d(dropout)
        self.classifier = classifier_conv(channels, num_classes)

    def set_output_stride(self, output_stride: int) -> None:
        """Nothing to re-configure: the bins are numbers of cells, whatever the feature map's size."""
        self.output_stride = output_stride

    def forward_features(self, x: Tensor) -> Tensor:
        """The fused pyramid: 3x3 conv-BN-ReLU of [x, every branch], (B, feature_channels, h, w)."""
        return self.bottleneck(torch.cat([x, *(branch(x) for branch in self.branches)], dim=1))
