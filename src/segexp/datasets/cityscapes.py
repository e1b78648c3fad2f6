"""Cityscapes fine / coarse annotations, the 34 labelIds mapped to the 19 official trainIds.

Layout: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` images and
``root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` labels (``gtCoarse`` / ``_gtCoarse_labelIds``
in coarse mode). Every labelId without a trainId (void, rare and ignored classes) becomes IGNORE_INDEX.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import albumentations as A
import numpy as np

from segexp.datasets.base import (
    IGNORE_INDEX,
    DatasetError,
    SegmentationDataset,
    apply_lut,
    check_split,
)

LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""The official labelId -> trainId table (cityscapesScripts ``labels.py``) for the 19 evaluated classes."""


def _train_id_lut() -> np.ndarray:
    """256-entry lookup array: labelId -> trainId, IGNORE_INDEX for every other value."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


TRAIN_ID_LUT: np.ndarray = _train_id_lut()

_MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fine": ("gtFine", ("train", "val", "test")),
    "coarse": ("gtCoarse", ("train", "val", "train_extra")),
}


class Cityscapes(SegmentationDataset):
    """Cityscapes urban scenes, 19 classes; ``mode`` "fine" (train/val/test) or "coarse"
    (train/val/train_extra)."""

    CLASSES: ClassVar[tuple[str, ...]] = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
        "bicycle",
    )  # fmt: skip
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    )  # fmt: skip

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: A.Compose | None = None,
        mode: str = "fine",
    ) -> None:
        if mode not in _MODES:
            raise DatasetError(f"Cityscapes: unknown mode {mode!r}; expected one of {tuple(_MODES)}")
        self.mode = mode
        super().__init__(root, split, transform)

    def list_samples(self) -> list[tuple[Path, Path]]:
        label_folder, splits = _MODES[self.mode]
        check_split(self.split, splits, f"Cityscapes ({self.mode})")
        image_dir = self.root / "leftImg8bit" / self.split
        label_dir = self.root / label_folder / self.split
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"Cityscapes: no */*_leftImg8bit.png images for split {self.split!r} in {image_dir}")
        suffix = f"_{label_folder}_labelIds.png"
        return [
            (image, label_dir / image.parent.name / image.name.replace("_leftImg8bit.png", suffix)) for image in images
        ]

    def encode_label(self, label: np.ndarray) -> np.ndarray:
        """labelId -> trainId through :data:`TRAIN_ID_LUT`; unmapped ids become IGNORE_INDEX."""
        return apply_lut(label, TRAIN_ID_LUT)
