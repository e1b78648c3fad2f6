"""VGG-16 trunk of DeepLab-LargeFOV (Chen et al. 2015, "Semantic image segmentation with deep convolutional
nets and fully connected CRFs"), returning its named feature maps at output stride 8.

What it computes: the 13 convolutions of ImageNet VGG-16 (torchvision layout and parameter names,
``features.0`` .. ``features.30``; no classifier), re-shaped for dense prediction as in Sec. 3.1 ("efficient
dense sliding window feature extraction with the hole algorithm") and the DeepLab-LargeFOV model of Sec. 4.1:

* every conv is 3x3 with bias, padded to keep the spatial size; conv5_1..conv5_3 have dilation 2 (padding 2),
  because the subsampling of pool4 is skipped ("we skip subsampling after the last two max-pooling layers
  ... and dilate the filters of the layers that follow");
* pool1..pool3 are 3x3 max pools with stride 2 and padding 1, so an HxW input gives ceil(H/8) x ceil(W/8)
  features; pool4 and pool5 are 3x3 max pools with stride 1 and padding 1 (the DeepLab prototxt's pools).

The fully connected layers fc6/fc7 become the :class:`~segexp.models.heads.largefov.LargeFOVHead`.
``forward`` returns ``conv1_2`` .. ``conv5_3`` (after their ReLU), ``pool1`` .. ``pool5`` and ``out``
(= ``pool5``). The geometry is fixed at output stride 8: :meth:`VGG16.set_output_stride` accepts only 8.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from segexp.models.backbones.pretrained import key_summary, read_state_dict

# ImageNet VGG-16 weights in torchvision format (IMAGENET1K_V1). When online, download with
# ``torch.hub.load_state_dict_from_url(TORCHVISION_URL)`` (or save that dict with ``torch.save``) to a file and
# pass its path as ``VGG16(pretrained=path)``. Nothing in this module downloads.
TORCHVISION_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

OUTPUT_STRIDE = 8

# (block number, conv widths, conv dilation, stride of the block's pool) per block: torchvision's VGG-16 "D".
BLOCKS: tuple[tuple[int, tuple[int, ...], int, int], ...] = (
    (1, (64, 64), 1, 2),
    (2, (128, 128), 1, 2),
    (3, (256, 256, 256), 1, 2),
    (4, (512, 512, 512), 1, 1),
    (5, (512, 512, 512), 2, 1),
)


def _make_features(in_channels: int) -> tuple[nn.Sequential, dict[int, str], dict[str, int], dict[str, int]]:
    """The trunk with torchvision's indices, the Sequential index at which each named feature is produced,
    and each feature's channels and stride."""
    layers: list[nn.Module] = []
    taps: dict[int, str] = {}
    channels: dict[str, int] = {}
    strides: dict[str, int] = {}
    stride = 1
    for block, widths, dilation, pool_stride in BLOCKS:
        for width in widths:
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=dilation, dilation=dilation))
            # not in place: nothing later may overwrite a tensor the returned dict holds
            layers.append(nn.ReLU(inplace=False))
            in_channels = width
        last_conv = f"conv{block}_{len(widths)}"
        taps[len(layers) - 1] = last_conv
        channels[last_conv], strides[last_conv] = in_channels, stride
        layers.append(nn.MaxPool2d(kernel_size=3, stride=pool_stride, padding=1))
        stride *= pool_stride
        taps[len(layers) - 1] = f"pool{block}"
        channels[f"pool{block}"], strides[f"pool{block}"] = in_channels, stride
    channels["out"], strides["out"] = channels["pool5"], strides["pool5"]
    return nn.Sequential(*layers), taps, channels, strides


class VGG16(nn.Module):
    """DeepLab-LargeFOV's VGG-16 trunk; ``forward`` returns {"conv1_2", "pool1", ..., "pool5", "out"}.

    Attributes: ``features`` (the trunk, torchvision indices), ``feature_channels`` (channels of each feature
    name ``forward`` returns), ``out_channels`` (512), ``output_stride`` (8); :meth:`feature_strides`.
    """

    def __init__(self, output_stride: int = OUTPUT_STRIDE, pretrained: str | None = None, in_channels: int = 3) -> None:
        super().__init__()
        self.features, self._taps, self.feature_channels, self._strides = _make_features(in_channels)
        self.out_channels = self.feature_channels["out"]
        self.output_stride = OUTPUT_STRIDE
        self.set_output_stride(output_stride)
        _init_weights(self)
        if pretrained is not None:
            load_pretrained(self, pretrained)

    def set_output_stride(self, output_stride: int) -> None:
        """Nothing to do at 8; any other output stride raises (the trunk has no stride to trade for dilation)."""
        if output_stride != OUTPUT_STRIDE:
            raise ValueError(
                f"VGG16: DeepLab-LargeFOV's geometry is fixed at output stride {OUTPUT_STRIDE} (pool4/pool5 "
                f"stride 1, conv5 dilation 2), got output_stride={output_stride}"
            )

    def feature_strides(self) -> dict[str, int]:
        """Stride (input pixels per feature pixel) of each feature name."""
        return dict(self._strides)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features: dict[str, Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                features[self._taps[index]] = x
        features["out"] = x
        return features


def _init_weights(model: nn.Module) -> None:
    """torchvision's VGG init for convs: He (fan-out) weights, zero bias; pretrained weights override."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def load_pretrained(model: VGG16, path: str | os.PathLike[str]) -> None:
    """Load a torchvision-format ImageNet VGG-16 state dict from ``path`` into ``model`` (strictly checked).

    ``classifier.*`` keys (fc6..fc8) are dropped: :class:`~segexp.models.heads.largefov.LargeFOVHead` reads
    them itself (``init_from``). Every other checkpoint key must exist in the model with the same shape and
    every model key must be in the checkpoint. Raises FileNotFoundError for a missing file and ValueError
    naming the offending keys and the file otherwise.
    """
    where = os.fspath(path)
    checkpoint = {k: v for k, v in read_state_dict(path).items() if not k.startswith("classifier.")}
    own = model.state_dict()
    unexpected = [k for k in checkpoint if k not in own]
    if unexpected:
        raise ValueError(f"unexpected keys in pretrained weights {where}: {key_summary(unexpected)}")
    for key, value in checkpoint.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"shape mismatch for {key} in pretrained weights {where}: checkpoint "
                f"{tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in checkpoint]
    if missing:
        raise ValueError(f"pretrained weights {where} lack keys: {key_summary(missing)}")
    model.load_state_dict(checkpoint, strict=True)
