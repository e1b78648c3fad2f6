"""Convert MS-COCO instance annotations into VOC-class label PNGs, for DeepLabv3's COCO pretraining (Table 6).

DeepLabv3 Sec. 4.3 ("Pretrained on COCO"): "we only select the images that have annotation regions larger
than 1000 pixels and contain the classes defined in PASCAL VOC 2012 ... the MS-COCO classes not defined in
PASCAL VOC 2012 are all treated as background class" (about 60K training images; trainval_minus_minival
is COCO 2017 ``train2017``, minival is ``val2017``).

Conversion (run once): ``segexp-convert-coco --root <coco> [--out <dir>]`` reads the official
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

:class:`segexp.data.datasets.coco.COCOVOC` reads the converted layout.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segexp.data.convert.coco_masks import annotation_mask
from segexp.data.convert.sbd_to_voc import write_label_png, write_split_file
from segexp.data.datasets.base import IGNORE_INDEX, DatasetError, check_split, read_split_file
from segexp.data.datasets.voc import VOC_CLASSES

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
