"""CamVid in the 11-class SegNet layout: split files of re-rooted image/label pairs, void 11 -> ignore.

Layout: ``root/{train,val,test}/*.png`` images, ``root/{train,val,test}annot/*.png`` single-channel
labels with the same names, and ``root/{split}.txt`` whose lines are
``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``; only the last two parts of each path are
kept and re-rooted to ``root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from segexp.data.datasets.base import (
    IGNORE_INDEX,
    DatasetError,
    SegmentationDataset,
    apply_lut,
    check_split,
    identity_lut,
    read_split_file,
)

CAMVID_VOID = 11
"""Raw label value of the "Unlabelled" class, mapped to IGNORE_INDEX."""

_LUT = identity_lut()
_LUT[CAMVID_VOID] = IGNORE_INDEX


def _reroot(root: Path, published: str) -> Path:
    """Keep the last two parts of a published ``/SegNet/CamVid/<dir>/<file>`` path, under ``root``."""
    parts = Path(published.replace("\\", "/")).parts
    return root.joinpath(*parts[-2:])


class CamVid(SegmentationDataset):
    """CamVid road scenes (SegNet 360x480 version), 11 classes; splits train, val, test."""

    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    CLASSES: ClassVar[tuple[str, ...]] = (
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    )  # fmt: skip
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    )  # fmt: skip

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """The re-rooted ``(image, label)`` pairs listed in ``<root>/<split>.txt``."""
        check_split(split, self.SPLITS, "CamVid")
        split_file = self.root / f"{split}.txt"
        samples = []
        for number, line in enumerate(read_split_file(split_file), start=1):
            fields = line.split()
            if len(fields) != 2:
                raise DatasetError(f"{split_file}:{number}: expected 'image label', got {line!r}")
            samples.append((_reroot(self.root, fields[0]), _reroot(self.root, fields[1])))
        return samples

    def encode_label(self, label: np.ndarray) -> np.ndarray:
        """0..10 are the classes; 11 (Unlabelled) becomes IGNORE_INDEX."""
        return apply_lut(label, _LUT)
