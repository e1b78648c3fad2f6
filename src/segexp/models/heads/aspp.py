"""Atrous Spatial Pyramid Pooling head with image-level features (DeepLabv3, Chen et al., Sec. 3.3).

What it computes, for a (B, in_channels, h, w) feature map:

* parallel branches, each conv (no bias) + BN + ReLU with ``channels`` filters: one 1x1 conv, one 3x3
  atrous conv per rate (``rates=(6, 12, 18)`` at output stride 16 in the paper; four rates in Table 5), and
  optionally the image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsample to
  h x w;
* concat -> 1x1 conv to ``channels`` + BN + ReLU -> dropout -> 1x1 classifier conv (with bias) to
  ``num_classes`` logits at h x w.

Rates are given for ``rates_output_stride`` (16 in the paper) and scaled to the output stride of the features
the head reads: "the rates are doubled when output_stride=8" (Sec. 3.3), i.e. dilation = rate *
rates_output_stride / output_stride. The head is built at ``output_stride`` (the backbone's, passed by the
builder) and ``set_output_stride`` re-scales the same weights for another one (DeepLabv3 Table 10); rates
that do not scale to an integer dilation raise a ValueError naming the output stride asked for.

Batch size 1: the image-level branch's BN sees one value per channel (a 1x1 map per sample). torch's
BatchNorm cannot form batch statistics from it and raises; torchvision keeps this BN and requires batch >= 2
in training (its ASPPPooling is pool -> conv -> BN -> ReLU -> upsample), and so does this head: in training
mode with batch 1 and a trainable BN it raises a ValueError saying so. Mathematically the branch would be
degenerate anyway (the normalised value is always 0, so the output is the constant ReLU(beta) and the
branch's conv gets no gradient). Eval mode, a frozen BN (``freeze_batchnorm``, DeepLabv3's second stage),
SyncBatchNorm across several processes, or ``image_pooling=False`` all work at batch 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segexp.models.heads.base import ClassifierHead, classifier_conv, dropout2d, single_feature_keys
from segexp.models.heads.pooling import PoolingBranch
from segexp.models.output_stride import scaled_dilations, set_dilation

DEFAULT_RATES = (6, 12, 18)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    """conv (no bias, 'same' padding) + BN + ReLU: every ASPP branch (and the PAC head's 1x1 branch)."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def image_pooling_branch(in_channels: int, channels: int, owner: str) -> PoolingBranch:
    """DeepLabv3's image-level features (Sec. 3.3): the 1-bin :class:`PoolingBranch` of the ASPP and PAC heads."""
    return PoolingBranch(in_channels, channels, bins=1, name=f"{owner} image-level branch",
                         remedy="or set image_pooling=False (the paper trains at batch 16)")


class ASPPHead(ClassifierHead, nn.Module):
    """DeepLabv3 ASPP head mapping (B, in_channels, h, w) to (B, num_classes, h, w) logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int,
        channels: int = 256,
        rates: Sequence[int] | None = DEFAULT_RATES,
        image_pooling: bool = True,
        rates_output_stride: int = 16,
        dropout: float = 0.0,
        in_keys: Sequence[str] = ("out",),
    ) -> None:
        super().__init__()
        self.in_keys = single_feature_keys(in_keys, "ASPPHead")  # the backbone feature it reads
        self.rates = tuple(int(r) for r in (DEFAULT_RATES if rates is None else rates))
        if any(r < 1 for r in self.rates):
            raise ValueError(f"ASPP rates must be positive integers, got {list(self.rates)}")
        self.rates_output_stride = rates_output_stride
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pointwise = conv_bn_relu(in_channels, channels, kernel_size=1)
        self.atrous = nn.ModuleList(conv_bn_relu(in_channels, channels, 3, rate) for rate in self.rates)
        self.image_pool = image_pooling_branch(in_channels, channels, "ASPPHead") if image_pooling else None
        self.num_branches = 1 + len(self.rates) + int(image_pooling)
        self.project = conv_bn_relu(self.num_branches * channels, channels, kernel_size=1)
        self.dropout = dropout2d(dropout)
        self.classifier = classifier_conv(channels, num_classes)
        self.output_stride = output_stride
        self.set_output_stride(output_stride)

    @property
    def dilations(self) -> tuple[int, ...]:
        """Current dilation of each atrous branch."""
        return tuple(branch[0].dilation[0] for branch in self.atrous)

    def dilations_at(self, output_stride: int) -> tuple[int, ...]:
        """Each atrous branch's dilation at ``output_stride``: rate * rates_output_stride / output_stride."""
        return scaled_dilations(self.rates, self.rates_output_stride, output_stride, owner="ASPP")

    def set_output_stride(self, output_stride: int) -> None:
        """Set each atrous branch to its dilation at ``output_stride`` (padding alike)."""
        for branch, dilation in zip(self.atrous, self.dilations_at(output_stride)):
            set_dilation(branch[0], dilation)
        self.output_stride = output_stride

    def forward_features(self, x: Tensor) -> Tensor:
        """The projected concatenation of the branches: the classifier's input."""
        branches = [self.pointwise(x)] + [branch(x) for branch in self.atrous]
        if self.image_pool is not None:
            branches.append(self.image_pool(x))
        return self.project(torch.cat(branches, dim=1))
