"""DeepLab-LargeFOV head: VGG-16's fully connected layers as (atrous) convolutions (Chen et al. 2015, "Semantic
image segmentation with deep convolutional nets and fully connected CRFs", Sec. 3.1 and 4.1).

What it computes, for a (B, in_channels, h, w) feature map (VGG-16's pool5 at output stride 8):

* fc6: 3x3 conv, dilation 12 ("input stride" 12), ``channels`` = 1024 filters, with bias -> ReLU -> dropout;
* fc7: 1x1 conv to 1024 with bias -> ReLU -> dropout;
* fc8: 1x1 conv to ``num_classes`` logits with bias, at h x w.

DeepLab-LargeFOV is the last row of the paper's field-of-view table (Sec. 4.1): kernel 3x3, input stride 12,
receptive field 224, 1024 channels in fc6/fc7, 20.5M parameters with the VGG-16 trunk and 21 classes.
Dropout is channel-wise (``Dropout2d``; the Caffe original drops single activations).

``dilation`` is given at output stride 8 (the trunk's), so the field of view in image pixels is fixed: at
output stride ``s`` fc6 has dilation ``dilation * 8 / s`` (24 at 4, 6 at 16), which must be an integer. The
head is built at the ``output_stride`` the builder passes (8 when none) and :meth:`set_output_stride`
re-scales the same weights, like FCN's dilated classifier and ASPP's rates.

``init_from``: fc6/fc7 from the classifier of an ImageNet VGG-16 (torchvision state dict), "the DeepLab way"
(Sec. 3.1: "spatially subsampling (by simple decimation) the first FC layer" and reducing its 4096 channels
to 1024): fc6 = ``classifier.0.weight`` viewed as (4096, 512, 7, 7), every 4th filter and every 3rd row and
column -> (1024, 512, 3, 3); fc7 = every 4th row and column of ``classifier.3.weight`` -> (1024, 1024, 1, 1);
biases every 4th. fc8 always starts from N(0, 0.01) weights and zero bias (the DeepLab prototxt).

Interface used by the multi-scale fusions: ``feature_channels`` (fc7's width), :meth:`forward_features` (fc7
after its ReLU), :meth:`classify` (the second dropout and fc8); ``forward = classify(forward_features(x))``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segexp.models.backbones.pretrained import read_state_dict
from segexp.models.heads.base import classifier_conv, dropout2d, single_feature_keys
from segexp.models.output_stride import scaled_dilation, set_dilation

DILATION_OUTPUT_STRIDE = 8
"""The output stride at which ``dilation`` is given (VGG-16's, Sec. 3.1)."""

VGG_FC_CHANNELS = 4096
VGG_FC6_GRID = 7
# (key, shape) of VGG-16's fc6/fc7 in a torchvision state dict
VGG_CLASSIFIER_SHAPES = {
    "classifier.0.weight": (VGG_FC_CHANNELS, 512 * VGG_FC6_GRID * VGG_FC6_GRID),
    "classifier.0.bias": (VGG_FC_CHANNELS,),
    "classifier.3.weight": (VGG_FC_CHANNELS, VGG_FC_CHANNELS),
    "classifier.3.bias": (VGG_FC_CHANNELS,),
}
CHANNEL_STEP = 4  # 4096 -> 1024 channels
SPATIAL_STEP = 3  # 7x7 -> 3x3 taps


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV fc6-fc7-fc8 mapping (B, in_channels, h, w) features to (B, num_classes, h, w) logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        output_stride: int | None = None,
        channels: int = 1024,
        dilation: int = 12,
        dropout: float = 0.5,
        init_from: str | None = None,
        in_keys: Sequence[str] = ("out",),
    ) -> None:
        super().__init__()
        self.in_keys = single_feature_keys(in_keys, "LargeFOVHead")  # the backbone feature it reads
        if dilation < 1:
            raise ValueError(f"LargeFOVHead: dilation must be >= 1, got {dilation}")
        if channels < 1:
            raise ValueError(f"LargeFOVHead: channels must be >= 1, got {channels}")
        if not 0 <= dropout < 1:
            raise ValueError(f"LargeFOVHead: dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dilation = dilation
        self.feature_channels: int = channels
        self.fc6 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = dropout2d(dropout)
        self.fc7 = nn.Conv2d(channels, channels, kernel_size=1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = dropout2d(dropout)  # not in place: forward_features' output may be read elsewhere too
        self.fc8 = classifier_conv(channels, num_classes)  # the classifier, under its DeepLab name
        self.output_stride = DILATION_OUTPUT_STRIDE if output_stride is None else output_stride
        self.set_output_stride(self.output_stride)
        _init_weights(self)
        if init_from is not None:
            load_vgg_classifier(self, init_from)

    def dilation_at(self, output_stride: int) -> int:
        """fc6's dilation at ``output_stride``: ``dilation * 8 / output_stride`` (the same field of view in image
        pixels). Raises ValueError when that is not an integer."""
        return scaled_dilation(self.dilation, DILATION_OUTPUT_STRIDE, output_stride, "LargeFOVHead: fc6's dilation")

    def set_output_stride(self, output_stride: int) -> None:
        """Re-scale fc6's dilation (and padding) for ``output_stride``, same weights."""
        set_dilation(self.fc6, self.dilation_at(output_stride))
        self.output_stride = output_stride

    def forward_features(self, x: Tensor) -> Tensor:
        """fc7's output after its ReLU (fc6 -> ReLU -> dropout -> fc7 -> ReLU), (B, feature_channels, h, w)."""
        return self.relu7(self.fc7(self.drop6(self.relu6(self.fc6(x)))))

    def classify(self, features: Tensor) -> Tensor:
        """Logits from :meth:`forward_features`' output: the second dropout and fc8."""
        return self.fc8(self.drop7(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.forward_features(x))


def _init_weights(head: LargeFOVHead) -> None:
    """fc6/fc7: He (fan-out) weights like the trunk, zero bias; fc8: N(0, 0.01), zero bias (DeepLab)."""
    for conv in (head.fc6, head.fc7):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    nn.init.normal_(head.fc8.weight, std=0.01)
    nn.init.zeros_(head.fc8.bias)


def load_vgg_classifier(head: LargeFOVHead, path: str | os.PathLike[str]) -> None:
    """Initialise fc6/fc7 from a torchvision-format VGG-16 state dict by decimation (see the module docstring).

    Needs ``in_channels`` 512 and ``channels`` 1024. Raises FileNotFoundError for a missing file and ValueError
    naming the file (and the key) for another head width or a missing or mis-shaped classifier key."""
    where = os.fspath(path)
    channels = VGG_FC_CHANNELS // CHANNEL_STEP
    if head.in_channels != 512 or head.feature_channels != channels:
        raise ValueError(
            f"LargeFOVHead.init_from={where}: VGG-16's fc6/fc7 subsample to in_channels=512 and "
            f"channels={channels}, got in_channels={head.in_channels} and channels={head.feature_channels}"
        )
    state = read_state_dict(path)
    for key, shape in VGG_CLASSIFIER_SHAPES.items():
        if key not in state:
            raise ValueError(f"LargeFOVHead.init_from={where}: the VGG-16 weights lack {key}")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"LargeFOVHead.init_from={where}: {key} has shape {tuple(state[key].shape)}, "
                             f"expected {shape}")
    grid = (VGG_FC_CHANNELS, 512, VGG_FC6_GRID, VGG_FC6_GRID)
    fc6 = state["classifier.0.weight"].view(grid)[::CHANNEL_STEP, :, ::SPATIAL_STEP, ::SPATIAL_STEP]
    fc7 = state["classifier.3.weight"][::CHANNEL_STEP, ::CHANNEL_STEP]
    with torch.no_grad():
        head.fc6.weight.copy_(fc6)
        head.fc6.bias.copy_(state["classifier.0.bias"][::CHANNEL_STEP])
        head.fc7.weight.copy_(fc7[:, :, None, None])
        head.fc7.bias.copy_(state["classifier.3.bias"][::CHANNEL_STEP])
