"""Test-time inference strategies (DeepLabv3 Sec. 4.3-4.4, Tables 4, 6 and 12).

Single scale returns the model's logits at the input size. Multi-scale inputs and left-right
flips follow the paper: the image is resized by each scale (and flipped), the model's softmax
probabilities are resized back to the input size, and the final score is their average.
``mode="slide"`` evaluates overlapping ``crop_size`` windows with ``stride`` and averages the
scores where windows overlap (the usual protocol for 1024x2048 Cityscapes images).
``shift_passes=2`` computes each forward pass as four shifted passes (FCRN Sec. 3.2,
:mod:`segexp.models.shifted_passes`): the scores of the network at half its output stride, with the same
weights; it combines with scales, flip and sliding windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

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

    @property
    def is_plain(self) -> bool:
        return self.scales == [1.0] and not self.flip and self.mode == "whole" and self.shift_passes == 1

    def __call__(self, model: Model, images: Tensor) -> Tensor:
        """Scores ``(B, C, H, W)`` at the input size: logits when plain, else mean probabilities."""
        if self.is_plain:
            return model(images)
        size = tuple(images.shape[-2:])
        total: Tensor | None = None
        for scale in self.scales:
            scaled = self._resize(images, _scaled_size(size, scale)) if scale != 1.0 else images
            views = [scaled, scaled.flip(-1)] if self.flip else [scaled]
            for i, view in enumerate(views):
                probs = self._predict(model, view).softmax(dim=1)
                probs = probs.flip(-1) if i == 1 else probs
                probs = self._resize(probs, size)
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


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, int(round(size[0] * scale))), max(1, int(round(size[1] * scale)))


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
