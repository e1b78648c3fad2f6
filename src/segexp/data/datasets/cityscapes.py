"""Cityscapes fine / coarse annotations, the 34 labelIds mapped to the 19 official trainIds.

Layout: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` images and
``root/<gtFine|gtCoarse>/<split>/<city>/<name>_<gtFine|gtCoarse>_labelIds.png`` labels. Every labelId
without a trainId (void, rare and ignored classes) becomes IGNORE_INDEX.

Label source per ``mode`` and split (:data:`LABEL_FOLDERS`):

* ``mode="fine"``: train and val read ``gtFine``; ``train_extra`` (19,998 images published with coarse
  labels only) reads ``gtCoarse``; ``test`` is unlabelled (its public ``gtFine/test`` files are dummies), so
  its labels are all IGNORE_INDEX and it is for ``segexp-eval ... save_predictions=true`` (the test server).
  DeepLabv3 Table 13 trains on ``dataset.mode=fine data.train_split=train+val+train_extra``.
* ``mode="coarse"``: train, val and train_extra all read ``gtCoarse``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import albumentations as A
import numpy as np

from segexp.data.datasets.base import (
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

LABEL_FOLDERS: dict[str, dict[str, str | None]] = {
    "fine": {"train": "gtFine", "val": "gtFine", "train_extra": "gtCoarse", "test": None},
    "coarse": {"train": "gtCoarse", "val": "gtCoarse", "train_extra": "gtCoarse"},
}
"""mode -> split -> label folder (None: no public labels) -- the splits each mode allows."""


def label_path(root: Path, label_folder: str, split: str, image: Path) -> Path:
    """``<root>/<label_folder>/<split>/<city>/<name>_<label_folder>_labelIds.png`` of a leftImg8bit image."""
    name = image.name.replace("_leftImg8bit.png", f"_{label_folder}_labelIds.png")
    return root / label_folder / split / image.parent.name / name


class Cityscapes(SegmentationDataset):
    """Cityscapes urban scenes, 19 classes; ``mode`` "fine" (train/val gtFine, train_extra gtCoarse, test
    unlabelled) or "coarse" (train/val/train_extra gtCoarse); see :data:`LABEL_FOLDERS`."""

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
        skip_bad_samples: bool = False,
    ) -> None:
        if mode not in LABEL_FOLDERS:
            raise DatasetError(f"Cityscapes: unknown mode {mode!r}; expected one of {tuple(LABEL_FOLDERS)}")
        self.mode = mode
        super().__init__(root, split, transform, skip_bad_samples)

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """Every ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with its labelIds file (None for test)."""
        folders = LABEL_FOLDERS[self.mode]
        check_split(split, folders, f"Cityscapes ({self.mode})")
        image_dir = self.root / "leftImg8bit" / split
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"Cityscapes: no */*_leftImg8bit.png images for split {split!r} in {image_dir}")
        label_folder = folders[split]
        if label_folder is None:
            return [(image, None) for image in images]
        return [(image, label_path(self.root, label_folder, split, image)) for image in images]

    def encode_label(self, label: np.ndarray) -> np.ndarray:
        """labelId -> trainId through :data:`TRAIN_ID_LUT`; unmapped ids become IGNORE_INDEX."""
        return apply_lut(label, TRAIN_ID_LUT)
