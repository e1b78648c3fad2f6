"""FCN-style classifier heads: per-pixel class logits at the resolution of the input feature map.

Two forms:

* ``channels == 0``: a single classifier conv (kernel ``kernel_size``, dilation ``dilation``, 'same'
  padding, with bias), optionally preceded by Dropout2d. This is the "1x1 conv classifier" of DeepLabv3's
  cascaded models (Sec. 3.2) and of the pyramid-residual-block paper, and the k x k dilated classifier
  whose field of view FCRN (Wu et al.) varies in its Tables 1-2 (e.g. kernel 5, dilation 12).
* ``channels > 0``: conv3x3 (no bias) + BN + ReLU, dropout, 1x1 classifier -- the auxiliary head put on
  layer3 (torchvision's FCNHead / PSPNet-style auxiliary loss).
"""

from __future__ import annotations

from torch import Tensor, nn


class FCNHead(nn.Module):
    """Classifier head mapping (B, in_channels, h, w) features to (B, num_classes, h, w) logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int | None = None,
        channels: int = 0,
        kernel_size: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if channels < 0:
            raise ValueError(f"channels must be >= 0, got {channels}")
        if channels > 0 and (kernel_size, dilation) != (1, 1):
            raise ValueError(
                "kernel_size/dilation apply to the single-conv form (channels=0); with channels > 0 the "
                f"head is conv3x3+BN+ReLU then a 1x1 classifier (got kernel_size={kernel_size}, "
                f"dilation={dilation})"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.features: nn.Module = nn.Identity()
        classifier_in = in_channels
        if channels > 0:
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            classifier_in = channels
        self.dropout: nn.Module = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        padding = dilation * (kernel_size - 1) // 2
        self.classifier = nn.Conv2d(
            classifier_in, num_classes, kernel_size=kernel_size, padding=padding, dilation=dilation, bias=True
        )

    def set_output_stride(self, output_stride: int) -> None:
        """The classifier's dilation is given in feature pixels at the output stride it was built at and is
        not re-scaled: evaluating a dilated k x k classifier at another output stride is refused rather than
        silently changing its field of view. A 1x1 or undilated classifier works at any output stride."""
        dilation = self.classifier.dilation[0]
        if dilation > 1 and self.output_stride is not None and output_stride != self.output_stride:
            raise ValueError(
                f"FCNHead: the classifier's dilation {dilation} is fixed for output stride {self.output_stride}; "
                f"it is not re-scaled to output stride {output_stride}"
            )
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x)))
