"""Multi-scale attention with a recalibrating branch (Yang and Peng, "Attention to Refine through
Multi-Scales for Semantic Segmentation", Sec. 2, Eqs. 1-4; Fig. 1-2).

Extends attention to scale (:mod:`segexp.models.fusion.attention_to_scale`) in three ways, each a switch
for the paper's Table 2:

* ``multi_stage`` (Sec. 2.1, hypercolumns): each scale stream's features from several stages
  (``in_keys``) are resized bilinearly to the grid of the largest of them -- the stride-4 grid "after two
  poolings" with the default keys -- and concatenated. Off: only the last of ``in_keys`` (the head's own
  features, ``head`` = fc7 of DeepLab-LargeFOV) is read, as attention to scale does.
  The paper does not name the stages. Chosen here: ``pool2, conv3_3, conv4_3, head`` for VGG-16 (strides
  4, 4, 8, 8; 128 + 256 + 512 + 1024 channels) and ``layer1, layer2, layer3, head`` for a ResNet (the
  head's features are layer4's output for a 1x1 classifier).
* ``diverse_dilations`` (Sec. 2.1, Fig. 2): each stream gets its own 3x3 conv (``channels``, ReLU) with its
  own dilation. Off: the per-stream convs are plain 3x3 (dilation 1, Table 2's "standard convolution").
  Each stream's conv runs on its own grid and its output is resized to the logits' grid; the S outputs are
  concatenated into the shared features A.
  Which stream gets which dilation: the paper says both ways. Sec. 3 sets the dilation "to 2 for small
  scale and 12 for large scale" (the 0.5x and 1x streams it has just named); Sec. 2.1 gives the large
  dilation to "large scale object or region in small scale stream" and the small one to "target of small
  scale in large scale stream". ``dilations`` lists the values from small to large and
  ``large_dilation_on`` places them by scale rank: ``"large_scale"`` (Sec. 3, the default: 1x -> 12,
  0.5x -> 2) or ``"small_scale"`` (Sec. 2.1: 1x -> 2, 0.5x -> 12); :func:`stream_dilations`.
  Output stride: the dilations are in pixels of the hypercolumn's grid. With ``multi_stage`` that is the
  grid of the earliest stage (stride 4 for the default keys), which does not move with the output stride;
  without it, it is the head's grid at the output stride, and :meth:`set_output_stride` rescales the
  dilations (given at the ``output_stride`` the fusion is built at) so their field of view stays the same.
* ``recalibrate`` (Sec. 2.2): besides the location-attention branch (3x3 conv -> ReLU -> dropout -> 1x1 conv
  to S maps, softmax over scales: l_s, Eq. 2, shared over classes) a recalibrating branch (same shape,
  1x1 conv to the classes, sigmoid: wr, shared over scales) multiplies the predictions:
  ``M_final = sum_s l_s * (P_s ⊗ wr)`` (Eqs. 3-4). Off: wr = 1, i.e. attention to scale's formula.
  P_s are the streams' score maps (logits), as Sec. 2.2 "recalibrating the score maps" and attention to
  scale's fusion of score maps: wr in (0, 1) shrinks each class's logit toward 0 (it never flips its
  sign), and the fused logits go to a softmax cross-entropy like every other output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from segexp.models.fusion.attention_to_scale import check_scale_inputs, resize_to, weighted_sum
from segexp.models.output_stride import scaled_dilation, set_dilation

LargeDilationOn = Literal["large_scale", "small_scale"]
"""The stream that gets the largest dilation: the largest-scale input (Sec. 3) or the smallest (Sec. 2.1)."""
LARGE_DILATION_ON: tuple[str, ...] = get_args(LargeDilationOn)


def stream_dilations(dilations: Sequence[int], scales: Sequence[float], large_dilation_on: str) -> tuple[int, ...]:
    """One dilation per stream, in ``scales`` order: ``dilations`` (one positive integer per scale, from small
    to large) given by scale rank -- the smallest dilation to the smallest scale for ``"large_scale"``, to the
    largest scale for ``"small_scale"``. A ValueError names the option for anything else."""
    if large_dilation_on not in LARGE_DILATION_ON:
        raise ValueError(f"MultiScaleAttention: large_dilation_on={large_dilation_on!r} must be one of "
                         f"{list(LARGE_DILATION_ON)}")
    values = list(dilations)
    if len(values) != len(scales) or any(int(d) != d or d < 1 for d in values):
        raise ValueError(f"MultiScaleAttention: dilations={values} needs one positive integer per scale of "
                         f"model.scales={list(scales)}")
    if values != sorted(values):
        raise ValueError(f"MultiScaleAttention: dilations={values} lists the dilation values from small to large "
                         f"(e.g. {sorted(values)}); which stream gets which is large_dilation_on")
    by_scale = sorted(range(len(scales)), key=lambda i: scales[i])  # stream indices, smallest scale first
    ranked = values if large_dilation_on == "large_scale" else values[::-1]
    placed = dict(zip(by_scale, ranked))
    return tuple(int(placed[i]) for i in range(len(scales)))


def branch(in_channels: int, channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """Two convs of an attention branch: 3x3 conv -> ReLU -> dropout -> 1x1 conv (scores, no activation)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(channels, out_channels, kernel_size=1),
    )


class MultiScaleAttention(nn.Module):
    """Location attention over S scale streams and a recalibrating branch, from per-stream hypercolumns.

    ``in_channels`` (channels of each of ``in_keys``), ``num_classes``, ``scales`` and ``output_stride`` are
    passed by the builder; ``channels`` is the width of every conv (512); ``dilations`` (small to large) and
    ``large_dilation_on`` give each stream its dilation (:func:`stream_dilations`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        scales: Sequence[float],
        channels: int = 512,
        dilations: Sequence[int] = (2, 12),
        large_dilation_on: LargeDilationOn = "large_scale",
        multi_stage: bool = True,
        diverse_dilations: bool = True,
        recalibrate: bool = True,
        dropout: float = 0.5,
        in_keys: Sequence[str] = ("pool2", "conv3_3", "conv4_3", "head"),
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.in_keys = tuple(in_keys)
        check_scale_inputs(self.in_keys, in_channels, scales, "MultiScaleAttention")
        placed = stream_dilations(dilations, scales, large_dilation_on)
        self.large_dilation_on = large_dilation_on
        self.num_scales = len(scales)
        self.multi_stage = multi_stage
        self.stream_keys = self.in_keys if multi_stage else self.in_keys[-1:]
        stream_in = sum(in_channels) if multi_stage else in_channels[-1]
        self.stream_dilations = placed if diverse_dilations else (1,) * self.num_scales
        self.streams = nn.ModuleList(
            nn.Sequential(nn.Conv2d(stream_in, channels, kernel_size=3, padding=d, dilation=d), nn.ReLU(inplace=True))
            for d in self.stream_dilations
        )
        shared = self.num_scales * channels
        self.output_stride = output_stride
        self.location = branch(shared, channels, self.num_scales, dropout)
        self.recalibration = branch(shared, channels, num_classes, dropout) if recalibrate else None

    def set_output_stride(self, output_stride: int) -> None:
        """Rescale the per-stream dilations when they are in pixels of the head's grid (``multi_stage`` off):
        dilation * built / ``output_stride`` (a ValueError when that is not an integer)."""
        if self.multi_stage or self.output_stride is None:
            return
        dilations = [scaled_dilation(dilation, self.output_stride, output_stride, "MultiScaleAttention: dilation")
                     for dilation in self.stream_dilations]
        for conv_relu, dilation in zip(self.streams, dilations):
            set_dilation(conv_relu[0], dilation)

    def hypercolumn(self, feats: dict[str, Tensor]) -> Tensor:
        """One stream's ``stream_keys`` features resized to the largest of their grids and concatenated."""
        maps = [feats[key] for key in self.stream_keys]
        grid = max((tuple(m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])
        return torch.cat([resize_to(m, grid) for m in maps], dim=1)

    def shared_features(self, features: Sequence[dict[str, Tensor]], grid: Sequence[int]) -> Tensor:
        """A: every stream's own conv on its hypercolumn, resized to ``grid`` and concatenated."""
        if len(features) != self.num_scales:
            raise ValueError(f"MultiScaleAttention built for {self.num_scales} scales got {len(features)} streams")
        return torch.cat(
            [resize_to(conv(self.hypercolumn(feats)), grid) for conv, feats in zip(self.streams, features)], dim=1
        )

    def scale_weights(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]]) -> Tensor:
        """Location attention l: ``(B, S, h, w)`` softmax weights of the scales (Eq. 2)."""
        return torch.softmax(self.location(self.shared_features(features, logits[0].shape[-2:])), dim=1)

    def forward(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]]) -> Tensor:
        shared = self.shared_features(features, logits[0].shape[-2:])
        fused = weighted_sum(torch.softmax(self.location(shared), dim=1), logits)
        if self.recalibration is None:
            return fused
        # sum_s l_s (P_s ⊗ wr) = wr ⊗ sum_s l_s P_s: wr is shared over scales
        return fused * torch.sigmoid(self.recalibration(shared))
