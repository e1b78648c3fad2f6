"""DeepLab-V2's ASPP-L head (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", TPAMI 2017, Sec. 3.1, Fig. 4).

What it computes, for a (B, in_channels, h, w) feature map: four parallel 3x3 atrous convolutions straight to
``num_classes`` logits (each with bias, dilation = padding = its rate; ``rates=(6, 12, 18, 24)``, ASPP-L),
whose logits are summed into (B, num_classes, h, w). No BN, no ReLU, no projection.

This is the ResNet-101 form of the released DeepLab-V2 model (its ``fc1_voc12_c0..c3`` layers: one 3x3
classifier per rate, summed). The VGG-16 form of Fig. 4 puts fc6 (3x3, 1024) -> fc7 (1x1, 1024) -> fc8
(1x1, classes) in every branch; it is not built here. The classifiers start as the released prototxt does:
weights from N(0, 0.01^2), biases 0.

Rates are given for ``rates_output_stride`` (8: DeepLab-V2 runs ResNet-101 at output stride 8) and scaled to
the features' output stride by :func:`segexp.models.output_stride.scaled_dilations` (dilation = rate *
rates_output_stride / output_stride, so 6, 12, 18, 24 at OS 8 are 3, 6, 9, 12 at OS 16). The head is built at
``output_stride`` (the backbone's, passed by the builder) and ``set_output_stride`` re-scales the same weights
for another one; rates that do not scale to a whole dilation raise a ValueError naming the output stride.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from segexp.models.heads.base import classifier_conv, single_feature_keys
from segexp.models.output_stride import scaled_dilations, set_dilation

ASPP_L_RATES = (6, 12, 18, 24)
INIT_STD = 0.01


class ASPPv2Head(nn.Module):
    """DeepLab-V2 ASPP head mapping (B, in_channels, h, w) to (B, num_classes, h, w): the sum of one 3x3 atrous
    classifier per rate."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int,
        rates: Sequence[int] = ASPP_L_RATES,
        rates_output_stride: int = 8,
        in_keys: Sequence[str] = ("out",),
    ) -> None:
        super().__init__()
        self.in_keys = single_feature_keys(in_keys, "ASPPv2Head")  # the backbone feature it reads
        self.rates = tuple(int(r) for r in rates)
        if not self.rates or any(r < 1 for r in self.rates):
            raise ValueError(f"ASPPv2Head rates must be a non-empty list of positive integers, got {list(rates)}")
        self.rates_output_stride = rates_output_stride
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.branches = nn.ModuleList(classifier_conv(in_channels, num_classes, 3, rate) for rate in self.rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=INIT_STD)
            nn.init.zeros_(conv.bias)
        self.output_stride = output_stride
        self.set_output_stride(output_stride)

    @property
    def dilations(self) -> tuple[int, ...]:
        """Current dilation of each branch."""
        return tuple(conv.dilation[0] for conv in self.branches)

    def dilations_at(self, output_stride: int) -> tuple[int, ...]:
        """Each branch's dilation at ``output_stride``: rate * rates_output_stride / output_stride."""
        return scaled_dilations(self.rates, self.rates_output_stride, output_stride, owner="ASPPv2Head")

    def set_output_stride(self, output_stride: int) -> None:
        """Set each branch to its dilation at ``output_stride`` (padding alike), same weights."""
        for conv, dilation in zip(self.branches, self.dilations_at(output_stride)):
            set_dilation(conv, dilation)
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        logits = self.branches[0](x)
        for conv in self.branches[1:]:
            logits = logits + conv(x)
        return logits
