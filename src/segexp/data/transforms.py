"""Albumentations pipelines for training (multi-scale crop + flip) and evaluation (normalise only).

The training pipeline draws one rescale factor per sample from a discrete set (or a continuous range),
pads to the crop size with the mean pixel / mask IGNORE_INDEX, random-crops, optionally flips, then normalises
and converts to tensors. Padding with the mean pixel (about 0 after normalisation) is TF DeepLab's training rule
and segexp's one rule for padded pixels: test images (``inference.pad_to``) and sliding windows pad with 0 in
normalised space, the same mean pixel. All randomness comes from albumentations' own generators, so
``Compose.set_random_seed(seed)`` fixes the whole augmentation of a sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from segexp.data.datasets.base import IGNORE_INDEX
from segexp.geometry import scaled_size

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def scale_set(scale_range: tuple[float, float], scale_step: float) -> tuple[float, ...]:
    """The discrete factors ``lo, lo+step, ..., <= hi``; empty when ``scale_step`` is 0 (continuous)."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
    if scale_step < 0:
        raise ValueError(f"scale_step must be >= 0, got {scale_step}")
    if scale_step == 0:
        return ()
    count = math.floor((hi - lo) / scale_step + 1e-9) + 1
    return tuple(round(lo + i * scale_step, 10) for i in range(count))


class DiscreteRandomScale(A.DualTransform):
    """Rescale image (bilinear) and mask (nearest) by one factor drawn from ``scales``.

    With an empty ``scales`` the factor is drawn uniformly from ``scale_range`` instead. The draw uses
    the transform's ``py_random`` so ``set_random_seed`` controls it.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        scale_step: float = 0.25,
        interpolation: int = cv2.INTER_LINEAR,
        mask_interpolation: int = cv2.INTER_NEAREST,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.scale_step = float(scale_step)
        self.scales = scale_set(self.scale_range, self.scale_step)
        self.interpolation = interpolation
        self.mask_interpolation = mask_interpolation

    def sample_scale(self) -> float:
        """Draw one rescale factor."""
        if self.scales:
            return self.py_random.choice(self.scales)
        return self.py_random.uniform(*self.scale_range)

    def get_params(self) -> dict[str, float]:
        return {"scale": self.sample_scale()}

    def _resize(self, array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
        height, width = scaled_size(array.shape[:2], scale)
        if (height, width) == array.shape[:2]:
            return array
        return cv2.resize(array, (width, height), interpolation=interpolation)

    def apply(self, img: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return self._resize(img, scale, self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return self._resize(mask, scale, self.mask_interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale_range", "scale_step", "interpolation", "mask_interpolation")


def mean_pixel(mean: Sequence[float]) -> tuple[int, ...]:
    """The 0-255 pixel of the normalisation ``mean`` (0-1 units), rounded: the fill of padded training pixels."""
    return tuple(int(math.floor(255 * m + 0.5)) for m in mean)


def build_train_transform(
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    scale_step: float = 0.25,
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
) -> A.Compose:
    """Random discrete rescale, pad (image: the mean pixel, mask IGNORE_INDEX), random crop ``(height, width)``,
    optional horizontal flip, normalise (mean/std in 0-1 units; ``normalize=False`` keeps uint8 pixels for
    :func:`normalize_on_device`) and convert to tensors."""
    height, width = int(crop_size[0]), int(crop_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"crop_size must be positive (height, width), got {crop_size}")
    steps: list[A.BasicTransform] = [
        DiscreteRandomScale(scale_range=scale_range, scale_step=scale_step, p=1.0),
        A.PadIfNeeded(
            min_height=height,
            min_width=width,
            border_mode=cv2.BORDER_CONSTANT,
            fill=mean_pixel(mean),
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=height, width=width),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if normalize:
        steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose([*steps, ToTensorV2()])


def build_eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                         normalize: bool = True) -> A.Compose:
    """Normalise (mean/std in 0-1 units; ``normalize=False`` keeps uint8 pixels) and convert to tensors,
    keeping the full resolution."""
    steps = [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)] if normalize else []
    return A.Compose([*steps, ToTensorV2()])


def normalize_on_device(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(B, 3, H, W)`` pixels -> float32 ``(pixels - 255 mean) / (255 std)``, on the images' device:
    the arithmetic of ``A.Normalize(max_pixel_value=255)`` done after the transfer (4x fewer bytes moved)."""
    m, inverse_std = normalisation_constants(tuple(mean), tuple(std), images.device)
    return (images.float() - m) * inverse_std


@functools.cache
def normalisation_constants(mean: tuple[float, ...], std: tuple[float, ...],
                            device: torch.device) -> tuple[Tensor, Tensor]:
    """``255 mean`` and ``1 / (255 std)`` as (1, C, 1, 1) float32 tensors on ``device``, made once per device: a
    host-to-device copy per batch would make every training step wait for the host."""
    scale = 255.0
    m = torch.tensor([v * scale for v in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    inverse_std = torch.tensor([1.0 / (v * scale) for v in std], dtype=torch.float32, device=device)
    return m, inverse_std.view(1, -1, 1, 1)
