"""FCN-style classifier heads: per-pixel class logits at the resolution of the input feature map.

Two forms:

* ``channels == 0``: a single classifier conv (kernel ``kernel_size``, dilation ``dilation``, 'same'
  padding, with bias), optionally preceded by Dropout2d. This is the "1x1 conv classifier" of DeepLabv3's
  cascaded models (Sec. 3.2) and of the pyramid-residual-block paper, and the k x k dilated classifier
  whose field of view FCRN (Wu et al.) varies in its Tables 1-2 (e.g. kernel 5, dilation 12). The dilation
  is given at ``output_stride`` (the backbone's, passed by the builder) and scaled with it, like ASPP's rates.
* ``channels > 0``: conv3x3 (no bias) + BN + ReLU, dropout, 1x1 classifier -- the auxiliary head put on
  layer3 (torchvision's FCNHead / PSPNet-style auxiliary loss).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from segexp.models.heads.base import ClassifierHead, classifier_conv, dropout2d, single_feature_keys
from segexp.models.output_stride import scaled_dilation, set_dilation


class FCNHead(ClassifierHead, nn.Module):
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
        in_keys: Sequence[str] = ("out",),
    ) -> None:
        super().__init__()
        self.in_keys = single_feature_keys(in_keys, "FCNHead")  # the backbone feature it reads
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
        self.dilation = dilation
        self.features: nn.Module = nn.Identity()
        classifier_in = in_channels
        if channels > 0:
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            classifier_in = channels
        self.dropout = dropout2d(dropout)
        self.classifier = classifier_conv(classifier_in, num_classes, kernel_size, dilation)

    def classifier_dilation_at(self, output_stride: int) -> int:
        """The classifier's dilation at ``output_stride``: ``dilation`` is given in feature pixels at the output
        stride the head is built at, and the field of view in image pixels stays the same (FCRN Sec. 3.2: a
        5x5 classifier with dilation 12 at 1/8 is dilation 24 at 1/4 and 6 at 1/16). A 1x1 classifier has
        no spatial extent and works at any output stride. Raises ValueError when the dilation is not an
        integer there."""
        if self.classifier.kernel_size[0] == 1 or self.output_stride is None:
            return self.dilation
        return scaled_dilation(self.dilation, self.output_stride, output_stride,
                               "FCNHead: the classifier's dilation")

    def set_output_stride(self, output_stride: int) -> None:
        """Re-scale the classifier's dilation (and padding) for ``output_stride``, same weights. The auxiliary
        form's 3x3 conv (``channels > 0``) is not dilated and is left as it is."""
        set_dilation(self.classifier, self.classifier_dilation_at(output_stride))

    def forward_features(self, x: Tensor) -> Tensor:
        """The classifier's input (the backbone feature itself in the single-conv form)."""
        return self.features(x)
