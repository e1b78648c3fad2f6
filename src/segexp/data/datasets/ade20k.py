"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes; raw 0 ("other") -> ignore, k -> k-1.

Layout: ``root/images/{training,validation}/*.jpg`` and ``root/annotations/{training,validation}/*.png``
with the same stems. Split "train" reads ``training``, "val" reads ``validation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segexp.data.datasets.base import IGNORE_INDEX, DatasetError, SegmentationDataset, apply_lut, check_split
from segexp.data.datasets.voc import voc_colormap

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

_LUT = (np.arange(256, dtype=np.int64) - 1).astype(np.uint8)
_LUT[0] = IGNORE_INDEX


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing benchmark, 150 classes; splits train (``training``) and val (``validation``)."""

    SPLIT_DIRS: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    CLASSES: ClassVar[tuple[str, ...]] = ADE20K_CLASSES
    # Distinct colours for visualisation: the VOC bit-spread colour map of ids 1..150.
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = voc_colormap(len(ADE20K_CLASSES) + 1)[1:]

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """``(images/<folder>/<stem>.jpg, annotations/<folder>/<stem>.png)`` of every image of ``split``."""
        check_split(split, self.SPLIT_DIRS, "ADE20K")
        folder = self.SPLIT_DIRS[split]
        image_dir = self.root / "images" / folder
        label_dir = self.root / "annotations" / folder
        images = sorted(image_dir.glob("*.jpg"))
        if not images:
            raise DatasetError(f"ADE20K: no *.jpg images for split {split!r} in {image_dir}")
        return [(image, label_dir / f"{image.stem}.png") for image in images]

    def encode_label(self, label: np.ndarray) -> np.ndarray:
        """Raw 0 ("other objects") becomes IGNORE_INDEX; class k in 1..150 becomes k-1."""
        return apply_lut(label, _LUT)
