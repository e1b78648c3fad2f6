"""What the heads share: reading one feature map, the final classifier conv and its dropout, and the split
``forward(x) = classify(forward_features(x))`` by which a fusion reads a head's penultimate features.

Every head maps backbone features to per-pixel class logits at the grid of the features it reads (FCN, Long
et al.; DeepLabv3 Sec. 3.3; PSPNet Sec. 3.2): its last layer is a conv (with bias) to ``num_classes``, usually
after a channel-wise dropout. The pieces are functions and one mixin, so a head stays a flat ``nn.Module``:

* :func:`single_feature_keys` -- a one-feature head's ``in_keys``, refused when it names several maps;
* :func:`dropout2d` -- ``Dropout2d(p)``, or the identity for ``p == 0`` (no module state either way);
* :func:`classifier_conv` -- the k x k (dilated) classifier conv with 'same' padding and bias;
* :class:`ClassifierHead` -- ``classify`` (dropout, then the classifier), ``forward`` and ``feature_channels``
  (the classifier's input channels) for a head that defines ``forward_features`` and holds ``classifier`` and
  ``dropout``; it then provides :class:`segexp.models.contracts.ExposesFeatures`.

Output-stride geometry (dilations given at one output stride, refused where they do not scale to a whole
dilation) is in :mod:`segexp.models.output_stride`, shared with the fusions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


def single_feature_keys(in_keys: Sequence[str], head: str) -> tuple[str]:
    """``in_keys`` of a head that reads one feature map, as a tuple; a ValueError naming ``head`` otherwise."""
    keys = tuple(in_keys)
    if len(keys) != 1:
        raise ValueError(f"{head} reads one feature map, got in_keys={list(keys)}")
    return keys


def dropout2d(p: float) -> nn.Module:
    """Channel-wise dropout with probability ``p`` before a classifier; the identity when ``p`` is 0."""
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


def classifier_conv(in_channels: int, num_classes: int, kernel_size: int = 1, dilation: int = 1) -> nn.Conv2d:
    """The conv (with bias) to ``num_classes`` logits, 'same' padding ``dilation * (kernel_size - 1) / 2``."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Conv2d(in_channels, num_classes, kernel_size=kernel_size, padding=padding, dilation=dilation, bias=True)


class ClassifierHead:
    """Mixin (put before ``nn.Module``) for a head ending in ``dropout`` then ``classifier``: the class defines
    ``forward_features(x)`` (the classifier's input) and gets ``classify``, ``forward`` and ``feature_channels``."""

    classifier: nn.Conv2d
    dropout: nn.Module
    forward_features: Callable[[Tensor], Tensor]  # defined by the head

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`forward_features`' output: the classifier's input."""
        return self.classifier.in_channels

    def classify(self, features: Tensor) -> Tensor:
        """Logits from :meth:`forward_features`' output: dropout, then the classifier."""
        return self.classifier(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.forward_features(x))
