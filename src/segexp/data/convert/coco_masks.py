"""Rasterise one COCO annotation's ``segmentation`` into a binary mask, without pycocotools.

Polygons are drawn with PIL ``ImageDraw.polygon`` (boundary pixels included, so areas can differ from
pycocotools' by about a pixel per boundary pixel); RLE masks, uncompressed or compressed, are decoded by
:mod:`segexp.data.convert.coco_rle`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segexp.data.convert.coco_rle import rle_counts_from_string, rle_decode


def polygon_mask(polygons: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """An ``HxW`` bool mask of the union of COCO polygons ``[x1, y1, x2, y2, ...]`` (pixel coordinates)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The ``HxW`` bool mask of one annotation's ``segmentation`` (polygons, RLE or compressed RLE)."""
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        rle_height, rle_width = (int(v) for v in segmentation.get("size", (height, width)))
        if (rle_height, rle_width) != (height, width):
            raise ValueError(f"RLE size {rle_height}x{rle_width} differs from the image's {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            counts = rle_counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
        return rle_decode(counts, height, width)
    raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
