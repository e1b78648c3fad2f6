"""Evaluation-server submission PNGs: one file per test image in the server's own format.

DeepLabv3 reports test-server numbers (Table 7: PASCAL VOC 2012 test; Table 13: Cityscapes test). The
servers read class maps, not scores:

* PASCAL VOC 2012: a palette ("P" mode) PNG per image holding the class index (0..20) of every pixel, with
  the standard VOC colour map, named ``<image id>.png`` (the server's ``results/VOC2012/Segmentation/
  comp6_test_cls/`` folder).
* Cityscapes: an 8-bit single-channel PNG of *labelIds* (the 34-id scheme of ``cityscapesScripts``; the
  19 trainIds the network predicts are mapped back: 0->7, 1->8, 2->11, ..., 18->33), named after the input
  image, ``<city>_<seq>_<frame>_leftImg8bit.png`` (the server matches ``<city>_<seq>_<frame>*.png``).
* Any other dataset: a palette PNG with the dataset's own ``PALETTE`` and class indices.

Predictions are written at the resolution of the original label (= the input image; the evaluation
transform never resizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segexp.data.datasets.base import SegmentationDataset
from segexp.data.datasets.cityscapes import LABEL_ID_TO_TRAIN_ID, Cityscapes

Palette = Sequence[tuple[int, int, int]]


def train_id_to_label_id_lut() -> np.ndarray:
    """256-entry lookup array trainId -> Cityscapes labelId; every non-trainId value maps to 0 (unlabeled)."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[train_id] = label_id
    return lut


TRAIN_ID_TO_LABEL_ID: np.ndarray = train_id_to_label_id_lut()


def check_class_map(prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """``prediction`` as a 2-D uint8 array after checking every value is a class index."""
    if prediction.ndim != 2:
        raise ValueError(f"a prediction must be a 2-D class map, got shape {prediction.shape}")
    if prediction.size and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise ValueError(
            f"prediction values must be class indices in [0, {num_classes}), got [{prediction.min()}, "
            f"{prediction.max()}]"
        )
    return prediction.astype(np.uint8)


def palette_png(prediction: np.ndarray, palette: Palette) -> Image.Image:
    """A "P"-mode image whose pixel values are the class indices and whose palette is ``palette``."""
    image = Image.fromarray(check_class_map(prediction, len(palette)), mode="P")
    flat = [channel for colour in palette for channel in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def cityscapes_label_id_png(prediction: np.ndarray) -> Image.Image:
    """An "L"-mode image of Cityscapes labelIds from a map of the 19 trainIds."""
    train_ids = check_class_map(prediction, len(LABEL_ID_TO_TRAIN_ID))
    return Image.fromarray(TRAIN_ID_TO_LABEL_ID[train_ids], mode="L")


def submission_png(prediction: np.ndarray, dataset_class: type[SegmentationDataset]) -> Image.Image:
    """The server-format image of one class map for a dataset class (see the module docstring)."""
    if issubclass(dataset_class, Cityscapes):
        return cityscapes_label_id_png(prediction)
    return palette_png(prediction, dataset_class.PALETTE)


def submission_name(image_path: str | Path | None, index: int) -> str:
    """``<image file stem>.png`` (VOC ``<id>.png``; Cityscapes ``<city>_<seq>_<frame>_leftImg8bit.png``).

    File-free datasets (no image path) get ``<index, 6 digits>.png``.
    """
    if image_path is None:
        return f"{index:06d}.png"
    return f"{Path(image_path).stem}.png"

