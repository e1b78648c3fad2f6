"""Test-time inference strategies (DeepLabv3 Sec. 4.3-4.4, Tables 4, 6 and 12).

Single scale returns the model's logits at the input size. Multi-scale inputs and left-right
flips follow the paper: the image is resized by each scale (and flipped), the model's logits are resized
back to the input size (bilinear) and turned into softmax probabilities there, and the final score is their
average (TF DeepLab's ``predict_labels_multi_scale`` and mmseg's aug_test resize the logits, then softmax).
Scaled sizes are rounded half up (:func:`segexp.geometry.scaled_size`, the rule of training and the model).
``mode="slide"`` evaluates overlapping ``crop_size`` windows with ``stride`` and averages the
scores where windows overlap (the usual protocol for 1024x2048 Cityscapes images).
``shift_passes=2`` computes each forward pass as four shifted passes (FCRN Sec. 3.2,
:mod:`segexp.models.shifted_passes`): the scores of the network at half its output stride, with the same
weights; it combines with scales, flip and sliding windows.

``pad_to=[H, W]`` is the papers' test geometry (DeepLabv3 Sec. 4.1: "we thus employ crop size to be 513
during both training and test on PASCAL VOC 2012"): each test image is padded at the bottom and right to
``H x W`` before anything else, and the scores are cropped back to the image's own size, so the metric never
sees the padding. It matters for anything that reads the whole map (image-level pooling, border context).
The order follows the reference TF DeepLab: its eval preprocessing pads the image to ``eval_crop_size`` with
``pad_to_bounding_box`` at offset (0, 0) (the label with the ignore label), and ``predict_labels_multi_scale``
then resizes that *padded* image by each eval scale (and flips the padded image: its padding is on the left
in the flipped view), resizes each scale's scores back to the padded size and averages them. Here likewise:
pad, then scales / flip / sliding windows / shifted passes on the padded image, average at the padded size,
then crop the average to the image. Pad value: TF DeepLab pads with the mean pixel of its preprocessing
(127.5 for the [-1, 1] variants, the ImageNet mean for the mean-subtracting ones), chosen "so that the padded
regions after pre-processing will contain value 0"; segexp's images arrive normalised by the ImageNet
mean/std, so 0 in normalised space is that mean pixel and the padding is 0. An image larger than ``pad_to``
is an error (TF's fixed-shape eval batch fails on it too; VOC images are at most 500x500, so 513 holds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from segexp.geometry import scaled_size
from segexp.models.shifted_passes import shifted_pass_outputs

Model = Callable[[Tensor], Tensor]


class Inference:
    """Turns a model mapping images to full-size logits into a (multi-scale, flipped) predictor."""

    def __init__(
        self,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        mode: Literal["whole", "slide"] = "whole",
        crop_size: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        align_corners: bool = False,
        shift_passes: Literal[1, 2] = 1,
        pad_to: tuple[int, int] | None = None,
    ) -> None:
        if shift_passes not in (1, 2):
            raise ValueError(f"inference.shift_passes must be 1 (plain) or 2 (four shifted passes: twice the "
                             f"output resolution), got {shift_passes}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"inference.scales must be positive numbers, got {list(scales)}")
        if mode == "slide" and (crop_size is None or stride is None):
            raise ValueError("inference.mode=slide needs inference.crop_size and inference.stride")
        self.scales = [float(s) for s in scales]
        self.flip = flip
        self.mode = mode
        self.crop_size = tuple(crop_size) if crop_size else None
        self.stride = tuple(stride) if stride else None
        self.align_corners = align_corners
        self.shift_passes = shift_passes
        self.pad_to = _pad_size(pad_to)

    @property
    def is_plain(self) -> bool:
        """Whether the scores are the model's logits (one whole-image pass), not averaged probabilities.
        ``pad_to`` does not change that: the padded pass's logits, cropped, are still logits."""
        return self.scales == [1.0] and not self.flip and self.mode == "whole" and self.shift_passes == 1

    def __call__(self, model: Model, images: Tensor) -> Tensor:
        """Scores ``(B, C, H, W)`` at the input size: logits when plain, else mean probabilities. With
        ``pad_to``, computed on the image padded at the bottom/right and cropped back to ``H x W``."""
        if self.pad_to is None:
            return self._scores(model, images)
        height, width = images.shape[-2:]
        return self._scores(model, self.pad(images))[..., :height, :width]

    def pad(self, images: Tensor) -> Tensor:
        """``images`` padded with 0 (the normalised mean pixel) at the bottom and right to ``pad_to``."""
        assert self.pad_to is not None
        height, width = images.shape[-2:]
        if height > self.pad_to[0] or width > self.pad_to[1]:
            raise ValueError(f"inference.pad_to={list(self.pad_to)} is smaller than a test image of "
                             f"{height}x{width} (HxW): set inference.pad_to to at least the largest image size "
                             f"of the split, or null")
        return F.pad(images, (0, self.pad_to[1] - width, 0, self.pad_to[0] - height), value=0.0)

    def _scores(self, model: Model, images: Tensor) -> Tensor:
        if self.is_plain:
            return model(images)
        size = tuple(images.shape[-2:])
        total: Tensor | None = None
        for scale in self.scales:
            scaled = self._resize(images, scaled_size(size, scale)) if scale != 1.0 else images
            views = [scaled, scaled.flip(-1)] if self.flip else [scaled]
            for i, view in enumerate(views):
                logits = self._predict(model, view)
                logits = logits.flip(-1) if i == 1 else logits
                probs = self._resize(logits, size).softmax(dim=1)
                total = probs if total is None else total + probs
        assert total is not None
        return total / (len(self.scales) * (2 if self.flip else 1))

    def _predict(self, model: Model, images: Tensor) -> Tensor:
        if self.mode == "slide":
            return sliding_window(lambda window: self._logits(model, window), images, self.crop_size, self.stride)
        return self._logits(model, images)

    def _logits(self, model: Model, images: Tensor) -> Tensor:
        """The model's logits at the input size, from four shifted passes when ``shift_passes=2``."""
        if self.shift_passes == 1:
            return model(images)
        dense = shifted_pass_outputs(model, images)["out"]
        return self._resize(dense, tuple(images.shape[-2:]))

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


def _pad_size(pad_to: Sequence[int] | None) -> tuple[int, int] | None:
    if pad_to is None:
        return None
    try:
        values = [pad_to] if isinstance(pad_to, str) else list(pad_to)
    except TypeError:  # a single number
        values = [pad_to]
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"inference.pad_to must be two positive integers [height, width] (e.g. [513, 513]) or "
                         f"null, got {values}")
    return values[0], values[1]


def sliding_window(model: Model, images: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Average of the model's logits over overlapping windows covering the (padded) image."""
    h, w = images.shape[-2:]
    ch, cw = crop
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    ph, pw = padded.shape[-2:]
    rows = max(math.ceil((ph - ch) / stride[0]), 0) + 1
    cols = max(math.ceil((pw - cw) / stride[1]), 0) + 1
    scores: Tensor | None = None
    counts = torch.zeros((1, 1, ph, pw), device=images.device)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * stride[0], ph - ch)
            x0 = min(c * stride[1], pw - cw)
            logits = model(padded[..., y0 : y0 + ch, x0 : x0 + cw])
            if scores is None:
                scores = images.new_zeros((images.shape[0], logits.shape[1], ph, pw))
            scores[..., y0 : y0 + ch, x0 : x0 + cw] += logits
            counts[..., y0 : y0 + ch, x0 : x0 + cw] += 1
    assert scores is not None
    return (scores / counts)[..., :h, :w]
