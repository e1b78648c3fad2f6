"""PASCAL VOC 2012 segmentation (official and SBD-augmented "train_aug" variants), 21 classes.

``VOC`` reads the official palette PNGs of ``SegmentationClass`` (palette index = class id, 255 = the
object border, ignored) with the ``ImageSets/Segmentation`` splits. ``VOCAug`` reads the single-channel
index PNGs of ``SegmentationClassAug`` written by :mod:`segexp.data.convert.sbd_to_voc`, with the
``ImageSets/SegmentationAug/{train_aug,val}.txt`` splits. ``root`` is the ``VOC2012`` folder for both.
``VOC(split="test")`` lists the test-server images (``VOC2012test.tar`` unpacked into the same folder:
``ImageSets/Segmentation/test.txt`` + ``JPEGImages``), which have no labels: for
``segexp-eval ... save_predictions=true`` (DeepLabv3 Table 7).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from segexp.data.datasets.base import SegmentationDataset, check_split, read_split_file

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def voc_colormap(count: int) -> tuple[tuple[int, int, int], ...]:
    """The standard VOC palette: the bits of the class id spread over the high bits of R, G and B."""
    colours = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((red, green, blue))
    return tuple(colours)


VOC_PALETTE: tuple[tuple[int, int, int], ...] = voc_colormap(len(VOC_CLASSES))


def _id_samples(root: Path, split_file: Path, label_dir: str) -> list[tuple[Path, Path]]:
    """One ``(JPEGImages/<id>.jpg, <label_dir>/<id>.png)`` pair per id listed in ``split_file``."""
    return [
        (root / "JPEGImages" / f"{name}.jpg", root / label_dir / f"{name}.png") for name in read_split_file(split_file)
    ]


class VOC(SegmentationDataset):
    """VOC 2012 with the official ``SegmentationClass`` labels; splits train, val, trainval, test (unlabelled).

    The labels are palette PNGs whose index is the class id; a palette label whose colours for its classes are
    not :data:`VOC_PALETTE` is rejected (its indices would not be class ids), see ``LABEL_PALETTE``.
    """

    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "trainval", "test")
    CLASSES: ClassVar[tuple[str, ...]] = VOC_CLASSES
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = VOC_PALETTE
    LABEL_PALETTE: ClassVar[tuple[tuple[int, int, int], ...] | None] = VOC_PALETTE

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """The ids of ``ImageSets/Segmentation/<split>.txt``; the test split's label paths are None."""
        check_split(split, self.SPLITS, "VOC")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        samples = _id_samples(self.root, split_file, "SegmentationClass")
        if split == "test":  # the test server's images come without labels
            return [(image, None) for image, _ in samples]
        return samples


class VOCAug(SegmentationDataset):
    """VOC 2012 + SBD labels (``SegmentationClassAug``); splits train_aug (alias train) and val."""

    SPLITS: ClassVar[tuple[str, ...]] = ("train_aug", "val")
    ALIASES: ClassVar[dict[str, str]] = {"train": "train_aug"}
    CLASSES: ClassVar[tuple[str, ...]] = VOC_CLASSES
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = VOC_PALETTE

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """The ids of ``ImageSets/SegmentationAug/<split>.txt`` (after the alias train -> train_aug)."""
        split = self.ALIASES.get(split, split)
        check_split(split, self.SPLITS, "VOCAug")
        split_file = self.root / "ImageSets" / "SegmentationAug" / f"{split}.txt"
        return _id_samples(self.root, split_file, "SegmentationClassAug")
