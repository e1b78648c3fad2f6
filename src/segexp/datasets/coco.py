"""MS-COCO relabelled with the 21 PASCAL VOC classes, for DeepLabv3's COCO pretraining (Table 6).

DeepLabv3 Sec. 4.3 ("Pretrained on COCO"): "we only select the images that have annotation regions larger
than 1000 pixels and contain the classes defined in PASCAL VOC 2012 ... the MS-COCO classes not defined in
PASCAL VOC 2012 are all treated as background class" (about 60K training images; trainval_minus_minival
is COCO 2017 ``train2017``, minival is ``val2017``).

Conversion (run once): ``python -m segexp.datasets.coco --root <coco> [--out <dir>]`` reads the official
layout ``<coco>/annotations/instances_{train2017,val2017}.json`` and writes, for every image with at least
one non-crowd annotation of a VOC class, ``<out>/voc_labels/<split>/<image stem>.png``: a single-channel
index PNG in which

* the 20 VOC classes get their VOC ids (airplane -> aeroplane, motorcycle -> motorbike, dining table ->
  diningtable, potted plant -> pottedplant, couch -> sofa, tv -> tvmonitor; the rest keep their name),
* every other COCO class and unannotated pixels are background (0),
* crowd (``iscrowd=1``) regions of VOC classes are void (255); instances are painted over them, largest
  first, so smaller objects stay visible where instances overlap,

and then ``<out>/voc_labels/<split>.txt`` with one ``<image stem> <pixels>`` line per image, ``<pixels>``
being the area of its largest VOC-class instance in rasterised pixels. Files are written to a temporary
name and moved into place; a split whose list exists is not converted again (``--overwrite`` forces it).
Instance masks are rasterised here without pycocotools: polygons with PIL ``ImageDraw.polygon`` (boundary
pixels included, so areas can differ from pycocotools' by about a pixel per boundary pixel), RLE masks
uncompressed (integer ``counts``) and compressed (the LEB128-like string of the COCO API's
``rleToString``), both column-major runs starting with a run of zeros.

:class:`COCOVOC` reads the converted layout and keeps the images whose largest VOC-class region has more
than ``min_region_pixels`` pixels; images are read from ``<image_root or root>/<split>/<stem>.jpg``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import numpy as np
from PIL import Image, ImageDraw

from segexp.datasets.base import (
    IGNORE_INDEX,
    DatasetError,
    SegmentationDataset,
    check_split,
    read_split_file,
)
from segexp.datasets.sbd import write_label_png, write_split_file
from segexp.datasets.voc import VOC_CLASSES, VOC_PALETTE

log = logging.getLogger(__name__)

COCO_TO_VOC_NAMES: dict[str, str] = {
    "airplane": "aeroplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat", "bottle": "bottle",
    "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow", "dining table": "diningtable",
    "dog": "dog", "horse": "horse", "motorcycle": "motorbike", "person": "person",
    "potted plant": "pottedplant", "sheep": "sheep", "couch": "sofa", "train": "train", "tv": "tvmonitor",
}  # fmt: skip
"""COCO category name -> VOC class name for the 20 VOC object classes."""

COCO_CATEGORY_IDS: dict[str, int] = {
    "airplane": 5, "bicycle": 2, "bird": 16, "boat": 9, "bottle": 44, "bus": 6, "car": 3, "cat": 17,
    "chair": 62, "cow": 21, "dining table": 67, "dog": 18, "horse": 19, "motorcycle": 4, "person": 1,
    "potted plant": 64, "sheep": 20, "couch": 63, "train": 7, "tv": 72,
}  # fmt: skip
"""The official MS-COCO 2014/2017 category ids of those names (the annotation file's are used if they differ)."""

SPLITS: tuple[str, ...] = ("train2017", "val2017")
LABEL_FOLDER = "voc_labels"


# ---------------------------------------------------------------- rasterisation
def rle_counts_from_string(encoded: str) -> list[int]:
    """Decode the COCO API's compressed RLE string (``maskApi.c: rleFrString``) into run lengths.

    Each count is written as 5-bit groups, least significant first, each char = group + 48 with bit
    0x20 set while more groups follow; the last group's bit 0x10 is the sign. From the fourth count on,
    the stored value is the difference to the count two places earlier.
    """
    counts: list[int] = []
    position = 0
    while position < len(encoded):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(encoded):
                raise ValueError(f"truncated compressed RLE string {encoded!r}")
            char = ord(encoded[position]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as the COCO API's compressed RLE string (``maskApi.c: rleToString``)."""
    chars = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            chars.append(chr((char | (0x20 if more else 0)) + 48))
    return "".join(chars)


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """An ``HxW`` bool mask from column-major run lengths that alternate 0s and 1s, starting with 0s."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0 or runs.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(runs.sum())} (min {runs.min(initial=0)}), not {height}x{width}")
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def rle_encode(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a bool mask, starting with a (possibly empty) run of 0s."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


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


# ---------------------------------------------------------------- relabelling
def voc_category_map(categories: Sequence[dict[str, Any]], source: Path) -> dict[int, int]:
    """COCO category id -> VOC class id, resolved by category name from the annotation file."""
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    missing = sorted(set(COCO_TO_VOC_NAMES) - set(by_name))
    if missing:
        raise DatasetError(f"{source}: categories {missing} (VOC classes) are not in the annotation file")
    return {by_name[coco]: VOC_CLASSES.index(voc) for coco, voc in COCO_TO_VOC_NAMES.items()}


def voc_label(
    annotations: Sequence[dict[str, Any]], height: int, width: int, coco_to_voc: dict[int, int]
) -> tuple[np.ndarray, int]:
    """``(HxW uint8 VOC label, pixels of the largest VOC-class instance)`` of one image's annotations.

    Crowd regions of VOC classes become IGNORE_INDEX first; then non-crowd VOC instances are painted with
    their class id, largest first. Annotations of other classes are left as background.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    instances: list[tuple[int, np.ndarray]] = []
    for annotation in annotations:
        voc_id = coco_to_voc.get(int(annotation["category_id"]))
        if voc_id is None:
            continue
        mask = annotation_mask(annotation["segmentation"], height, width)
        if annotation.get("iscrowd", 0):
            label[mask] = IGNORE_INDEX
        else:
            instances.append((voc_id, mask))
    areas = [int(mask.sum()) for _, mask in instances]
    for position in np.argsort(areas, kind="stable")[::-1]:
        voc_id, mask = instances[position]
        label[mask] = voc_id
    return label, max(areas, default=0)


# ---------------------------------------------------------------- conversion
def load_annotation_file(path: Path) -> dict[str, Any]:
    """The parsed ``instances_<split>.json``; raise :class:`DatasetError` naming the file."""
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"COCO annotation file not found: {path}") from err
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read COCO annotation file {path}: {err}") from err
    for key in ("images", "annotations", "categories"):
        if key not in payload:
            raise DatasetError(f"COCO annotation file {path} has no '{key}' entry")
    return payload


def convert_split(root: Path, out: Path, split: str) -> int:
    """Write the VOC labels and the split list of one COCO split; return the number of images kept."""
    source = root / "annotations" / f"instances_{split}.json"
    payload = load_annotation_file(source)
    coco_to_voc = voc_category_map(payload["categories"], source)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in payload["annotations"]:
        by_image[int(annotation["image_id"])].append(annotation)
    label_dir = out / LABEL_FOLDER / split
    label_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for info in sorted(payload["images"], key=lambda image: str(image["file_name"])):
        annotations = by_image.get(int(info["id"]), [])
        try:
            label, largest = voc_label(annotations, int(info["height"]), int(info["width"]), coco_to_voc)
        except (ValueError, KeyError) as err:
            raise DatasetError(f"{source}: image {info.get('file_name')} (id {info.get('id')}): {err}") from err
        if largest == 0:
            continue  # no non-crowd VOC-class instance: never selected
        stem = Path(str(info["file_name"])).stem
        write_label_png(label, label_dir / f"{stem}.png")
        lines.append(f"{stem} {largest}")
        if len(lines) % 1000 == 0:
            log.info("%s: wrote %d label PNGs", split, len(lines))
    write_split_file(lines, out / LABEL_FOLDER / f"{split}.txt")
    return len(lines)


def convert_coco(
    root: Path, out: Path | None = None, splits: Sequence[str] = SPLITS, overwrite: bool = False
) -> dict[str, int]:
    """Convert each split once (skipped when its list exists, unless ``overwrite``); images kept per split."""
    root = Path(root)
    out = Path(out) if out is not None else root
    kept: dict[str, int] = {}
    for split in splits:
        check_split(split, SPLITS, "COCO")
        split_list = out / LABEL_FOLDER / f"{split}.txt"
        if split_list.is_file() and not overwrite:
            log.info("%s exists: %s already converted (use --overwrite to redo)", split_list, split)
            kept[split] = len(read_split_file(split_list))
            continue
        kept[split] = convert_split(root, out, split)
        log.info("%s: %d images with VOC-class instances", split, kept[split])
    return kept


# ---------------------------------------------------------------- dataset
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
    ) -> None:
        if min_region_pixels < 0:
            raise DatasetError(f"COCOVOC: min_region_pixels must be >= 0, got {min_region_pixels}")
        self.min_region_pixels = min_region_pixels
        self.image_root = Path(image_root if image_root is not None else root).expanduser()
        super().__init__(root, split, transform)

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """The converted images of ``split`` (after its alias) whose largest VOC region is large enough."""
        split = self.ALIASES.get(split, split)
        check_split(split, self.SPLITS, "COCOVOC")
        split_file = self.root / LABEL_FOLDER / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(
                f"COCOVOC: {split_file} not found; convert the annotations first with "
                f"`python -m segexp.datasets.coco --root <coco folder> --out {self.root}`"
            )
        entries = [parse_split_line(line, split_file) for line in read_split_file(split_file)]
        return [
            (self.image_root / split / f"{stem}.jpg", self.root / LABEL_FOLDER / split / f"{stem}.png")
            for stem, largest in entries
            if largest > self.min_region_pixels
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m segexp.datasets.coco --root <coco> [--out <dir>]``."""
    parser = argparse.ArgumentParser(
        prog="python -m segexp.datasets.coco",
        description="Convert MS-COCO instance annotations to VOC-class index PNGs (DeepLabv3 COCO pretraining).",
    )
    parser.add_argument("--root", type=Path, required=True, help="COCO folder (annotations/, train2017/, val2017/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder for voc_labels/ (default: --root)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to convert")
    parser.add_argument("--overwrite", action="store_true", help="convert again splits already converted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        kept = convert_coco(args.root, args.out, args.splits, args.overwrite)
    except DatasetError as err:
        parser.exit(1, f"error: {err}\n")
    out = args.out if args.out is not None else args.root
    for split, count in kept.items():
        print(f"{split}: {count} images with VOC-class instances in {out / LABEL_FOLDER / split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
