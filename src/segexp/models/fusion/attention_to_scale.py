"""Attention to scale (Chen, Yang, Wang, Xu and Yuille, "Attention to Scale: Scale-aware Semantic Image
Segmentation", CVPR 2016, Sec. 3.2-3.3): a learned, per-pixel soft weight for each input scale.

The shared network runs on S scaled copies of the image (``model.scales``). For scale s it gives logits
P_s (resized to one grid by the segmentor) and features F_s -- by default the head's penultimate features
(``in_keys=[head]``: fc7 of DeepLab-LargeFOV, the paper's choice). The attention model reads the features
of all scales, each resized bilinearly to the logits' grid, concatenated, and computes

    h = conv1x1_S(dropout(relu(conv3x3_channels(concat_s F_s))))           (S score maps)
    w_s = exp(h_s) / sum_t exp(h_t)                                        (softmax over scales, per pixel)
    fused = sum_s w_s * P_s                                                (shared over classes)

:func:`weighted_sum` is that last line, reused by the multi-scale attention of
:mod:`segexp.models.fusion.msattn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """``x`` resized bilinearly to ``size`` (unchanged when it is already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def weighted_sum(weights: Tensor, logits: Sequence[Tensor]) -> Tensor:
    """``sum_s weights[:, s] * logits[s]``: per-pixel scale weights ``(B, S, h, w)`` shared over the classes of
    the S logits ``(B, C, h, w)``."""
    if weights.shape[1] != len(logits):
        raise ValueError(f"{weights.shape[1]} scale weights for {len(logits)} scale streams")
    return sum(weights[:, s : s + 1] * p for s, p in enumerate(logits))


def check_scale_inputs(in_keys: Sequence[str], in_channels: Sequence[int], scales: Sequence[float], owner: str) -> None:
    """ValueError unless there is one channel count per key and at least two scales."""
    if len(in_channels) != len(in_keys):
        raise ValueError(f"{owner}: in_channels={list(in_channels)} needs one entry per in_keys={list(in_keys)}")
    if len(scales) < 2:
        raise ValueError(f"{owner} weighs several scale streams, got model.scales={list(scales)}")


class AttentionToScale(nn.Module):
    """Softmax attention over S scale streams from their concatenated features (Chen et al. 2016).

    ``in_channels`` (channels of each of ``in_keys``), ``num_classes``, ``scales`` and ``output_stride`` are
    passed by the builder; ``channels`` is the width of the 3x3 layer (512 in the paper), ``dropout`` its
    dropout.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        scales: Sequence[float],
        channels: int = 512,
        dropout: float = 0.5,
        in_keys: Sequence[str] = ("head",),
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.in_keys = tuple(in_keys)
        self.output_stride = output_stride
        check_scale_inputs(self.in_keys, in_channels, scales, "AttentionToScale")
        self.num_classes = num_classes  # the weights are shared over classes: kept for inspection only
        self.num_scales = len(scales)
        self.attention = nn.Sequential(
            nn.Conv2d(self.num_scales * sum(in_channels), channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, self.num_scales, kernel_size=1),
        )

    def set_output_stride(self, output_stride: int) -> None:
        """Its 3x3 conv is not dilated and is left as it is at another output stride (like the auxiliary head's
        3x3 conv): the weights are computed on whatever grid the logits have."""
        self.output_stride = output_stride

    def scale_weights(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]]) -> Tensor:
        """``(B, S, h, w)`` softmax weights of the scales on the logits' grid (they sum to 1 at every pixel)."""
        grid = tuple(logits[0].shape[-2:])
        stacked = torch.cat([resize_to(feats[key], grid) for feats in features for key in self.in_keys], dim=1)
        return torch.softmax(self.attention(stacked), dim=1)

    def forward(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]]) -> Tensor:
        return weighted_sum(self.scale_weights(logits, features), logits)
