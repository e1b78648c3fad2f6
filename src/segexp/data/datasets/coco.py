"""MS-COCO relabelled with the 21 PASCAL VOC classes, for DeepLabv3's COCO pretraining (Table 6).

DeepLabv3 Sec. 4.3 ("Pretrained on COCO"): "we only select the images that have annotation regions larger
than 1000 pixels and contain the classes defined in PASCAL VOC 2012 ... the MS-COCO classes not defined in
PASCAL VOC 2012 are all treated as background class" (about 60K training images; trainval_minus_minival
is COCO 2017 ``train2017``, minival is ``val2017``).

The annotations are converted once into VOC-class index PNGs by ``segexp-convert-coco`` (see
:mod:`segexp.data.convert.coco_to_voc`). :class:`COCOVOC` reads the converted layout and keeps the images
whose largest VOC-class region has more than ``min_region_pixels`` pixels; images are read from
``<image_root or root>/<split>/<stem>.jpg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import albumentations as A

from segexp.data.convert.coco_to_voc import LABEL_FOLDER, SPLITS
from segexp.data.datasets.base import DatasetError, SegmentationDataset, check_split, read_split_file
from segexp.data.datasets.voc import VOC_CLASSES, VOC_PALETTE


def parse_split_line(line: str, path: Path) -> tuple[str, int]:
    """``(image stem, largest region pixels)`` of one ``<stem> <pixels>`` line of a converted split list."""
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit():
        raise DatasetError(f"split file {path}: expected '<image stem> <pixels>', got {line!r}")
    return parts[0], int(parts[1])


class COCOVOC(SegmentationDataset):
    """MS-COCO images with VOC-class labels (converted layout, see the module docstring); 21 VOC classes.

    Splits ``train2017`` (alias ``train``) and ``val2017`` (alias ``val``); an image is used when its
    largest VOC-class instance has more than ``min_region_pixels`` pixels.
    """

    SPLITS: ClassVar[tuple[str, ...]] = SPLITS
    ALIASES: ClassVar[dict[str, str]] = {"train": "train2017", "val": "val2017"}
    CLASSES: ClassVar[tuple[str, ...]] = VOC_CLASSES
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = VOC_PALETTE

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: A.Compose | None = None,
        min_region_pixels: int = 1000,
        image_root: str | Path | None = None,
        skip_bad_samples: bool = False,
    ) -> None:
        if min_region_pixels < 0:
            raise DatasetError(f"COCOVOC: min_region_pixels must be >= 0, got {min_region_pixels}")
        self.min_region_pixels = min_region_pixels
        self.image_root = Path(image_root if image_root is not None else root).expanduser()
        super().__init__(root, split, transform, skip_bad_samples)

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """The converted images of ``split`` (after its alias) whose largest VOC region is large enough."""
        split = self.ALIASES.get(split, split)
        check_split(split, self.SPLITS, "COCOVOC")
        split_file = self.root / LABEL_FOLDER / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(
                f"COCOVOC: {split_file} not found; convert the annotations first with "
                f"`segexp-convert-coco --root <coco folder> --out {self.root}`"
            )
        entries = [parse_split_line(line, split_file) for line in read_split_file(split_file)]
        return [
            (self.image_root / split / f"{stem}.jpg", self.root / LABEL_FOLDER / split / f"{stem}.png")
            for stem, largest in entries
            if largest > self.min_region_pixels
        ]
