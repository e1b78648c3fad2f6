"""Procedural textured-shapes scenes: a file-free dataset for CPU smoke runs and tests.

Each image is a pure function of ``(seed, split, index)``: a dim, low-saturation textured background
(class 0) with 4 to 8 objects (disc, box, triangle, ring, stripe), 8 to 60 px across at 128 px and scaled
with ``image_size``, placed anywhere and possibly overlapping (later objects occlude earlier ones).
Every object class has its own saturated hue band and its own surface texture, with per-image jitter of
hue, saturation, brightness, texture period, orientation and phase, so pixels can be classified from
local colour and texture and not only from the global shape.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import ClassVar

import albumentations as A
import cv2
import numpy as np

from segexp.data.datasets.base import DatasetError, SegmentationDataset, split_parts

Grid = tuple[np.ndarray, np.ndarray]

_HUE_CENTRES: tuple[float, ...] = (0.0, 50.0, 120.0, 195.0, 275.0)
"""Hue band centre (degrees) of object classes 1..5; bands are +-12 degrees wide."""
_HUE_JITTER = 12.0
_BASE_SIZE = 128
_SIZE_RANGE = (8.0, 60.0)


@lru_cache(maxsize=8)
def _grid(size: int) -> Grid:
    """Pixel-centre row and column coordinates (read-only, shared between calls)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _rotated(grid: Grid, cy: float, cx: float, angle: float) -> Grid:
    """Coordinates relative to ``(cy, cx)`` in a frame rotated by ``angle`` radians."""
    dy, dx = grid[0] - cy, grid[1] - cx
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * sin + dy * cos, dx * cos - dy * sin


def _disc(rng: np.random.Generator, grid: Grid, cy: float, cx: float, extent: float) -> np.ndarray:
    radius = extent / 2
    return (grid[0] - cy) ** 2 + (grid[1] - cx) ** 2 <= radius**2


def _box(rng: np.random.Generator, grid: Grid, cy: float, cx: float, extent: float) -> np.ndarray:
    v, u = _rotated(grid, cy, cx, rng.uniform(0, np.pi))
    half_w, half_h = extent / 2, extent * rng.uniform(0.5, 1.0) / 2
    return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)


def _triangle(rng: np.random.Generator, grid: Grid, cy: float, cx: float, extent: float) -> np.ndarray:
    angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    radius = 0.6 * extent
    ys, xs = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
    signs = []
    for i in range(3):
        j = (i + 1) % 3
        signs.append((xs[j] - xs[i]) * (grid[0] - ys[i]) - (ys[j] - ys[i]) * (grid[1] - xs[i]) >= 0)
    return (signs[0] & signs[1] & signs[2]) | (~signs[0] & ~signs[1] & ~signs[2])


def _ring(rng: np.random.Generator, grid: Grid, cy: float, cx: float, extent: float) -> np.ndarray:
    outer = max(extent, 16.0) / 2
    inner = outer * rng.uniform(0.35, 0.55)
    dist2 = (grid[0] - cy) ** 2 + (grid[1] - cx) ** 2
    return (dist2 <= outer**2) & (dist2 >= inner**2)


def _stripe(rng: np.random.Generator, grid: Grid, cy: float, cx: float, extent: float) -> np.ndarray:
    v, u = _rotated(grid, cy, cx, rng.uniform(0, np.pi))
    half_t = max(extent * rng.uniform(0.25, 0.4), 5.0) / 2
    return (np.abs(u) <= extent / 2) & (np.abs(v) <= half_t)


def _speckle(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    return rng.uniform(-1, 1, grid[0].shape).astype(np.float32)


def _checker(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    period = rng.uniform(5, 9)
    v, u = _rotated(grid, 0.0, 0.0, rng.uniform(0, np.pi / 2))
    return np.sign(np.sin(u * np.pi / period + rng.uniform(0, 6.3)) * np.sin(v * np.pi / period))


def _waves(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    v, _ = _rotated(grid, 0.0, 0.0, rng.uniform(0, np.pi))
    return np.sin(v * 2 * np.pi / rng.uniform(4, 8) + rng.uniform(0, 6.3))


def _dots(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    period = rng.uniform(4, 7)
    phase_y, phase_x = rng.uniform(0, 6.3, 2)
    field = np.sin(grid[0] * 2 * np.pi / period + phase_y) * np.sin(grid[1] * 2 * np.pi / period + phase_x)
    return np.where(field > 0.4, -1.0, 0.3)


def _flat(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    return rng.uniform(-0.25, 0.25, grid[0].shape).astype(np.float32)


ShapeFn = Callable[[np.random.Generator, Grid, float, float, float], np.ndarray]
TextureFn = Callable[[np.random.Generator, Grid], np.ndarray]
_SHAPES: tuple[ShapeFn, ...] = (_disc, _box, _triangle, _ring, _stripe)
_TEXTURES: tuple[TextureFn, ...] = (_speckle, _checker, _waves, _dots, _flat)


def _hsv(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value), dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation base colour modulated by smooth blotches and fine grey noise (HxWx3 float)."""
    colour = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.6))
    blotches = cv2.resize(rng.standard_normal((5, 5)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    grain = rng.standard_normal((size, size)).astype(np.float32)
    shade = 1.0 + 0.18 * blotches + 0.06 * grain
    return colour[None, None, :] * shade[:, :, None]


def _window(cy: float, cx: float, extent: float, size: int) -> tuple[slice, slice]:
    """The square of pixels that can hold an object of ``extent`` centred at ``(cy, cx)``."""
    reach = 0.75 * max(extent, 16.0) + 1.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, size)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, size)
    return slice(y0, y1), slice(x0, x1)


def generate_scene(seed: int, split: str, index: int, size: int = _BASE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The ``(HxWx3 uint8 image, HxW uint8 label)`` scene number ``index`` of ``split`` for ``seed``."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    grid = _grid(size)
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    scale = size / _BASE_SIZE
    for _ in range(int(rng.integers(4, 9))):
        cls = int(rng.integers(1, len(_SHAPES) + 1))
        extent = rng.uniform(*_SIZE_RANGE) * scale
        cy, cx = rng.uniform(0, size, 2)
        window = _window(cy, cx, extent, size)
        local = (grid[0][window], grid[1][window])
        mask = _SHAPES[cls - 1](rng, local, cy, cx, extent)
        hue = _HUE_CENTRES[cls - 1] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
        colour = _hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0))
        shade = 1.0 + rng.uniform(0.15, 0.25) * _TEXTURES[cls - 1](rng, local)
        image[window][mask] = colour[None, :] * shade[mask][:, None]
        label[window][mask] = cls
    image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, label


class SyntheticShapes(SegmentationDataset):
    """``num_images`` generated ``image_size`` squared scenes of ``split``, 6 classes, no files.

    Scenes are generated lazily in ``__getitem__``; different splits (and seeds) use different random
    streams, so train and val never share a scene. Any split name is accepted; a union ``"train+val"``
    holds ``num_images`` scenes of each part, in order (index ``k * num_images + i`` is scene ``i`` of part
    ``k``), exactly the scenes of the parts' own datasets. Every scene is labelled.
    """

    CLASSES: ClassVar[tuple[str, ...]] = ("background", "disc", "box", "triangle", "ring", "stripe")
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = (
        (0, 0, 0), (220, 20, 60), (255, 200, 0), (0, 170, 0), (0, 120, 255), (170, 0, 255),
    )  # fmt: skip

    def __init__(
        self,
        split: str = "train",
        num_images: int = 200,
        image_size: int = 128,
        seed: int = 0,
        transform: A.Compose | None = None,
    ) -> None:
        if num_images <= 0:
            raise DatasetError(f"SyntheticShapes: num_images must be positive, got {num_images}")
        if image_size < 16:
            raise DatasetError(f"SyntheticShapes: image_size must be at least 16, got {image_size}")
        if seed < 0:
            raise DatasetError(f"SyntheticShapes: seed must be non-negative, got {seed}")
        self.root = None
        self.split = split
        self.parts = split_parts(split, "SyntheticShapes")
        self.transform = transform
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.samples: list = []

    @property
    def has_labels(self) -> bool:
        """Generated scenes always come with their labels."""
        return True

    def __len__(self) -> int:
        return self.num_images * len(self.parts)

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Generate scene ``index`` (deterministic in ``(seed, part of the split, index within the part)``)."""
        part, within = divmod(index, self.num_images)
        return generate_scene(self.seed, self.parts[part], within, self.image_size)
