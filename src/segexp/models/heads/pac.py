"""Pyramid Atrous Convolution head (Yu, "Pyramid Atrous Convolution and Boundary-aware Loss", Sec. 3.3-3.4, Fig. 3).

What it computes, for a (B, in_channels, h, w) feature map:

* three branches of ``channels`` (256) maps each: a 1x1 conv (no bias) + BN + ReLU; the image-level branch
  (global average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsample to h x w, ``image_pooling``); and the
  PAC branch;
* PAC (Sec. 3.3, Fig. 6): ONE 3x3 weight ``W`` (in_channels -> channels, no bias) applied at every rate,
  ``y_r = W *_r x`` with padding = dilation, merged by ``merge``:

  - ``sum`` (the paper's best, Table 2): ``m = sum_r y_r``, so the 3x3 weight count (9 * in * channels) does
    not grow with the number of rates;
  - ``concat``: ``m = conv1x1(concat_r y_r)`` to ``channels`` (no bias), "concatenate all of features in
    channel-wise and squeeze by 1x1 convolution" (Sec. 4.2);

* concat[1x1, image pooling, PAC] -> dropout (``dropout``, default 0) -> ONE 1x1 conv (with bias) to
  ``num_classes`` logits at h x w (the segmentor upsamples them bilinearly). "These whole features are
  concatenated and encoded by 1x1 convolution which number of channel equal to classes" (Sec. 3.4):
  unlike DeepLabv3's ASPP (:mod:`segexp.models.heads.aspp`) there is NO 256-channel 1x1 conv + BN + ReLU
  projection between the concat and the classifier.

BN placement in PAC is not given by the paper. Chosen (``bn: after_merge``, the default): PAC is treated as one
layer whose response is the merged sum (or the concat's 1x1), followed by one BN + ReLU like every other branch,
``PAC(x) = ReLU(BN(m))``. The alternative ``bn: per_rate`` gives each rate its own BN + ReLU after the shared
conv, as each ASPP branch has, ``z_r = ReLU(BN_r(y_r))``; then ``sum`` outputs ``sum_r z_r`` and ``concat``
outputs ``ReLU(BN(conv1x1(concat_r z_r)))`` (ASPP's projection).

Rates are given for ``rates_output_stride`` (16: the paper trains at output stride 16 with the DeepLabv3
protocol, best rates 1,3,5,7,9) and scaled to the features' output stride by DeepLabv3's rule, dilation =
rate * rates_output_stride / output_stride (shared with ASPP, :func:`segexp.models.output_stride.scaled_dilations`):
doubled at output stride 8; a rate that does not scale to a whole dilation (rate 1 at output stride 32) raises
a ValueError naming the output stride. ``set_output_stride`` re-scales the same weights for another one.
The image-level branch has ASPP's batch-1 rule (it raises in training mode at batch 1 with a trainable BN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.models.heads.aspp import conv_bn_relu, image_pooling_branch
from segexp.models.heads.base import classifier_conv, dropout2d, single_feature_keys
from segexp.models.output_stride import scaled_dilations

DEFAULT_RATES = (1, 3, 5, 7, 9)
MERGES = ("sum", "concat")
BN_PLACEMENTS = ("after_merge", "per_rate")


class PyramidAtrousConv(nn.Module):
    """PAC: one shared 3x3 conv at several dilations, merged by sum or concat + 1x1 (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        merge: str = "sum",
        bn: str = "after_merge",
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"head.merge={merge!r}: choose 'sum' (the paper's best) or 'concat' (1x1 conv)")
        if bn not in BN_PLACEMENTS:
            raise ValueError(f"head.bn={bn!r}: choose 'after_merge' (one BN + ReLU after the merge) or 'per_rate'")
        if not dilations:
            raise ValueError("head.rates=[]: PAC needs at least one rate")
        self.merge = merge
        self.bn_placement = bn
        # The one shared filter; its own dilation/padding are unused: forward passes each rate's.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=False)
        self.dilations = tuple(int(d) for d in dilations)
        n = len(self.dilations)
        self.rate_bns = nn.ModuleList(nn.BatchNorm2d(out_channels) for _ in range(n)) if bn == "per_rate" else None
        self.project: nn.Module | None = None
        if merge == "concat":
            self.project = nn.Conv2d(n * out_channels, out_channels, kernel_size=1, bias=False)
        self.bn: nn.Module | None = None
        if bn == "after_merge" or merge == "concat":
            self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def atrous(self, x: Tensor) -> list[Tensor]:
        """``W *_d x`` for each dilation d (padding = d, so every output is h x w)."""
        return [F.conv2d(x, self.conv.weight, None, padding=d, dilation=d) for d in self.dilations]

    def merged(self, x: Tensor) -> Tensor:
        """The merge before the final BN: sum or conv1x1(concat) of the per-rate outputs (after their own BN +
        ReLU under ``bn: per_rate``)."""
        outputs = self.atrous(x)
        if self.rate_bns is not None:
            outputs = [self.relu(norm(y)) for norm, y in zip(self.rate_bns, outputs)]
        if self.project is not None:
            return self.project(torch.cat(outputs, dim=1))
        total = outputs[0]
        for y in outputs[1:]:
            total = total + y
        return total

    def forward(self, x: Tensor) -> Tensor:
        m = self.merged(x)
        return m if self.bn is None else self.relu(self.bn(m))


class PACHead(nn.Module):
    """PAC head (Fig. 3) mapping (B, in_channels, h, w) to (B, num_classes, h, w) logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        rates: Sequence[int] = DEFAULT_RATES,
        merge: Literal["sum", "concat"] = "sum",
        bn: Literal["after_merge", "per_rate"] = "after_merge",
        image_pooling: bool = True,
        rates_output_stride: int = 16,
        dropout: float = 0.0,
        in_keys: Sequence[str] = ("out",),
    ) -> None:
        super().__init__()
        self.in_keys = single_feature_keys(in_keys, "PACHead")  # the backbone feature it reads
        self.rates = tuple(int(r) for r in rates)
        if not self.rates or any(r < 1 for r in self.rates):
            raise ValueError(f"head.rates={list(self.rates)}: PAC rates must be one or more positive integers")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head.dropout={dropout}: must be in [0, 1)")
        self.rates_output_stride = rates_output_stride
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pointwise = conv_bn_relu(in_channels, channels, kernel_size=1)
        self.image_pool = image_pooling_branch(in_channels, channels, "PACHead") if image_pooling else None
        self.pac = PyramidAtrousConv(in_channels, channels, self.dilations_at(output_stride), merge=merge, bn=bn)
        self.num_branches = 2 + int(image_pooling)
        self.dropout = dropout2d(dropout)
        self.classifier = classifier_conv(self.num_branches * channels, num_classes)
        self.output_stride = output_stride

    @property
    def dilations(self) -> tuple[int, ...]:
        """Current dilation of the shared 3x3 filter at each rate."""
        return self.pac.dilations

    def dilations_at(self, output_stride: int) -> tuple[int, ...]:
        """Each rate's dilation at ``output_stride``: rate * rates_output_stride / output_stride."""
        return scaled_dilations(self.rates, self.rates_output_stride, output_stride, owner="PAC")

    def set_output_stride(self, output_stride: int) -> None:
        """Re-scale the rates to ``output_stride`` (same weights)."""
        self.pac.dilations = self.dilations_at(output_stride)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.pointwise(x)]
        if self.image_pool is not None:
            branches.append(self.image_pool(x))
        branches.append(self.pac(x))
        return self.classifier(self.dropout(torch.cat(branches, dim=1)))
