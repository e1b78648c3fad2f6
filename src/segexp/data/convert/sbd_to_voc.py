"""Convert the SBD ``cls/*.mat`` labels into VOC-aug index PNGs and write the train_aug / val splits.

Run as ``segexp-convert-sbd --sbd-root <SBD dataset folder> --voc-root <VOC2012 folder>``.
It writes ``voc_root/SegmentationClassAug/<id>.png`` (single-channel class indices) for every SBD image
(ids of SBD ``train.txt`` and ``val.txt``) and for every VOC ``train``/``val`` image; where both exist the
official VOC label wins (it carries the 255 object borders). The splits are
``ImageSets/SegmentationAug/train_aug.txt`` = (SBD train | SBD val | VOC train) - VOC val, sorted, and
``val.txt`` = VOC val (10,582 and 1,449 images on the real data). Every file is written atomically
(:mod:`segexp.atomic`), so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from segexp import atomic
from segexp.data.datasets.base import IGNORE_INDEX, DatasetError, load_label, read_split_file
from segexp.data.datasets.voc import VOC_CLASSES

log = logging.getLogger(__name__)


def load_sbd_mat(path: Path) -> np.ndarray:
    """The ``GTcls.Segmentation`` class-index array (HxW uint8) of one SBD ``cls/*.mat`` file."""
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
        label = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError as err:
        raise DatasetError(f"SBD label file not found: {path}") from err
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise DatasetError(f"cannot read GTcls.Segmentation from {path}: {err}") from err
    if label.ndim != 2:
        raise DatasetError(f"SBD label {path} has shape {label.shape}; expected a 2-D array")
    return check_voc_values(label, path)


def check_voc_values(label: np.ndarray, path: Path) -> np.ndarray:
    """Return ``label`` as uint8 after checking its values are VOC class ids or IGNORE_INDEX."""
    values = np.unique(label)
    bad = values[(values < 0) | ((values >= len(VOC_CLASSES)) & (values != IGNORE_INDEX))]
    if bad.size:
        raise DatasetError(f"label {path} has values {bad.tolist()} that are not VOC class ids or 255")
    return label.astype(np.uint8)


def write_label_png(label: np.ndarray, path: Path) -> None:
    """Write a single-channel uint8 label PNG atomically."""
    atomic.write_png(path, Image.fromarray(label, mode="L"))


def write_split_file(lines: Sequence[str], path: Path) -> None:
    """Write one item per line atomically."""
    atomic.write_text(path, "".join(f"{line}\n" for line in lines))


def aug_splits(
    sbd_train: Sequence[str], sbd_val: Sequence[str], voc_train: Sequence[str], voc_val: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(train_aug, val)``: (SBD train | SBD val | VOC train) - VOC val, sorted; and VOC val, sorted."""
    val = sorted(set(voc_val))
    train_aug = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(val))
    return train_aug, val


def convert_sbd(sbd_root: Path, voc_root: Path) -> int:
    """Write the VOC-aug labels and splits under ``voc_root``; return the number of label PNGs written."""
    sbd_root, voc_root = Path(sbd_root), Path(voc_root)
    sbd_train = read_split_file(sbd_root / "train.txt")
    sbd_val = read_split_file(sbd_root / "val.txt")
    voc_sets = voc_root / "ImageSets" / "Segmentation"
    voc_train = read_split_file(voc_sets / "train.txt")
    voc_val = read_split_file(voc_sets / "val.txt")

    out_dir = voc_root / "SegmentationClassAug"
    out_dir.mkdir(parents=True, exist_ok=True)
    voc_ids = sorted(set(voc_train) | set(voc_val))
    sbd_only = sorted((set(sbd_train) | set(sbd_val)) - set(voc_ids))
    written = 0
    for name in voc_ids:
        path = voc_root / "SegmentationClass" / f"{name}.png"
        write_label_png(check_voc_values(load_label(path), path), out_dir / f"{name}.png")
        written += 1
    for name in sbd_only:
        write_label_png(load_sbd_mat(sbd_root / "cls" / f"{name}.mat"), out_dir / f"{name}.png")
        written += 1
        if written % 1000 == 0:
            log.info("wrote %d label PNGs", written)

    train_aug, val = aug_splits(sbd_train, sbd_val, voc_train, voc_val)
    split_dir = voc_root / "ImageSets" / "SegmentationAug"
    split_dir.mkdir(parents=True, exist_ok=True)
    write_split_file(train_aug, split_dir / "train_aug.txt")
    write_split_file(val, split_dir / "val.txt")
    log.info("wrote %d label PNGs to %s; train_aug %d, val %d", written, out_dir, len(train_aug), len(val))
    return written
