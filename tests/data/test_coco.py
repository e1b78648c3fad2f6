"""COCO -> VOC relabelling (DeepLabv3 Sec. 4.3, Table 6): RLE/polygon masks, selection, converted dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segexp.cli.convert_coco import main
from segexp.data.convert.coco_masks import annotation_mask, polygon_mask
from segexp.data.convert.coco_rle import rle_counts_from_string, rle_counts_to_string, rle_decode, rle_encode
from segexp.data.convert.coco_to_voc import COCO_CATEGORY_IDS, COCO_TO_VOC_NAMES, voc_category_map
from segexp.data.datasets.base import DatasetError, load_label
from segexp.data.datasets.coco import COCOVOC
from segexp.data.datasets.voc import VOC_CLASSES, VOC_PALETTE
from segexp.training.build import build_datamodule, validate
from tests.helpers.data_files import random_image, write_rgb

# A 3x3 mask and its COCO RLE, encoded by hand (column-major runs 0,0 | 1,1,1,1 | 0 | 1 | 0):
#   counts [2, 4, 1, 1, 1]; chars '2', '4', '1'; from the 4th count on the difference to the count two
#   places earlier is stored: 1 - 4 = -3 -> 5-bit group 0b11101 (sign bit 0x10 set) = 29 -> chr(29 + 48) = 'M';
#   1 - 1 = 0 -> '0'.
HAND_MASK = np.array([[0, 1, 0], [0, 1, 1], [1, 1, 0]], dtype=bool)
HAND_COUNTS = [2, 4, 1, 1, 1]
HAND_STRING = "241M0"


def test_compressed_rle_decodes_a_hand_encoded_mask() -> None:
    assert rle_counts_from_string(HAND_STRING) == HAND_COUNTS
    assert np.array_equal(rle_decode(HAND_COUNTS, 3, 3), HAND_MASK)
    assert np.array_equal(annotation_mask({"size": [3, 3], "counts": HAND_STRING}, 3, 3), HAND_MASK)
    assert np.array_equal(annotation_mask({"size": [3, 3], "counts": HAND_COUNTS}, 3, 3), HAND_MASK)
    assert rle_encode(HAND_MASK) == HAND_COUNTS and rle_counts_to_string(HAND_COUNTS) == HAND_STRING
    # multi-character counts: 100 = 0b00011_00100 -> groups 4 (+0x20 "more") and 3 -> 'T', '3'
    assert rle_counts_from_string("T3") == [100] and rle_counts_to_string([100]) == "T3"


def test_rle_round_trips_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
        counts = rle_encode(mask)
        assert np.array_equal(rle_decode(rle_counts_from_string(rle_counts_to_string(counts)), *mask.shape), mask)


def test_bad_rle_is_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 8"):
        rle_decode([2, 4, 1, 1], 3, 3)
    with pytest.raises(ValueError, match="truncated"):
        rle_counts_from_string("T")


def test_polygon_mask_includes_the_boundary() -> None:
    mask = polygon_mask([[1, 1, 4, 1, 4, 3, 1, 3]], height=5, width=6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:4, 1:5] = True
    assert np.array_equal(mask, expected)


def box(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A rectangle polygon covering columns x0..x1 and rows y0..y1 (inclusive)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def categories() -> list[dict[str, Any]]:
    return [{"id": i, "name": name} for name, i in COCO_CATEGORY_IDS.items()] + [{"id": 8, "name": "truck"}]


def annotation(ann_id: int, image_id: int, name: str, segmentation: Any, crowd: int = 0) -> dict[str, Any]:
    category = 8 if name == "truck" else COCO_CATEGORY_IDS[name]
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
            "iscrowd": crowd}


def crowd_rle(height: int, width: int, rows: slice, cols: slice) -> dict[str, Any]:
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, cols] = True
    return {"size": [height, width], "counts": rle_encode(mask)}


H, W = 40, 50


def make_coco(tmp: Path) -> Path:
    """Three train2017 images: A (person 20x30 + overlapping cat + truck + crowd), B (truck only), C (small dog)."""
    root = tmp / "coco"
    images = [
        {"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "000000000002.jpg", "height": H, "width": W},
        {"id": 3, "file_name": "000000000003.jpg", "height": H, "width": W},
    ]
    annotations = [
        annotation(1, 1, "person", box(0, 0, 19, 29)),                     # 600 px
        annotation(2, 1, "cat", box(15, 5, 24, 9)),                         # 50 px, over the person
        annotation(3, 1, "truck", box(30, 0, 49, 9)),                       # not VOC -> background
        annotation(4, 1, "person", crowd_rle(H, W, slice(32, 40), slice(40, 50)), crowd=1),  # -> 255
        annotation(5, 2, "truck", box(0, 0, 49, 39)),
        annotation(6, 3, "dog", {"size": [H, W], "counts": rle_counts_to_string(
            rle_encode(np.pad(np.ones((4, 5), dtype=bool), ((10, H - 14), (10, W - 15)))))}),  # 20 px
    ]
    (root / "annotations").mkdir(parents=True)
    payload = {"images": images, "annotations": annotations, "categories": categories()}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(payload))
    for i, image in enumerate(images):
        write_rgb(root / "train2017" / image["file_name"], random_image(i, H, W))
    return root


def test_voc_category_ids_follow_the_official_coco_ids() -> None:
    mapping = voc_category_map(categories(), Path("instances.json"))
    assert len(mapping) == 20 and 8 not in mapping
    assert mapping[5] == VOC_CLASSES.index("aeroplane") and mapping[63] == VOC_CLASSES.index("sofa")
    assert mapping[72] == VOC_CLASSES.index("tvmonitor") and mapping[4] == VOC_CLASSES.index("motorbike")
    assert sorted(COCO_TO_VOC_NAMES.values()) == sorted(VOC_CLASSES[1:])
    with pytest.raises(DatasetError, match=r"instances.json: categories \['couch'\]"):
        voc_category_map([c for c in categories() if c["name"] != "couch"], Path("instances.json"))


def test_conversion_cli_labels_selection_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_coco(tmp_path)
    assert main(["--root", str(root), "--splits", "train2017"]) == 0
    assert "train2017: 2 images" in capsys.readouterr().out
    labels = root / "voc_labels" / "train2017"
    assert sorted(p.name for p in labels.iterdir()) == ["000000000001.png", "000000000003.png"]  # B: no VOC class
    assert (root / "voc_labels" / "train2017.txt").read_text() == "000000000001 600\n000000000003 20\n"

    label = load_label(labels / "000000000001.png")
    person, cat = VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[32:40, 40:50] = 255
    expected[0:30, 0:20] = person
    expected[5:10, 15:25] = cat  # the smaller instance is painted last
    assert np.array_equal(label, expected)

    dataset = COCOVOC(root, split="train", min_region_pixels=100)
    assert [image.name for image, _ in dataset.samples] == ["000000000001.jpg"]
    assert dataset.CLASSES == VOC_CLASSES and dataset.PALETTE == VOC_PALETTE
    sample = dataset[0]
    assert tuple(sample["image"].shape) == (3, H, W) and np.array_equal(sample["label"].numpy(), expected)
    assert len(COCOVOC(root, split="train2017", min_region_pixels=19)) == 2
    assert len(COCOVOC(root, split="train", min_region_pixels=20)) == 1  # "larger than": strictly more pixels

    before = (root / "voc_labels" / "train2017.txt").stat().st_mtime_ns
    assert main(["--root", str(root), "--splits", "train2017"]) == 0  # converted once: the split is skipped
    assert (root / "voc_labels" / "train2017.txt").stat().st_mtime_ns == before


def test_split_union_of_converted_splits(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    assert main(["--root", str(root), "--splits", "train2017"]) == 0
    (root / "voc_labels" / "val2017.txt").write_text("000000000009 700\n000000000008 50\n")  # as if converted
    for stem in ("000000000009", "000000000008"):  # the listed files exist (a dataset checks that when built)
        for path in (root / "val2017" / f"{stem}.jpg", root / "voc_labels" / "val2017" / f"{stem}.png"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    union = COCOVOC(root, split="val+train", min_region_pixels=30)
    assert [str(image.relative_to(root)) for image, _ in union.samples] == [
        "val2017/000000000009.jpg", "val2017/000000000008.jpg", "train2017/000000000001.jpg"
    ]
    assert union.samples[0][1] == root / "voc_labels" / "val2017" / "000000000009.png"
    with pytest.raises(DatasetError, match=r"COCOVOC: split 'train' of 'val\+train' under .* yields no samples"):
        COCOVOC(root, split="val+train", min_region_pixels=600)  # val keeps 000000000009, train keeps none
    with pytest.raises(DatasetError, match=r"split 'train\+train2017' lists image .*000000000001.jpg in both"):
        COCOVOC(root, split="train+train2017", min_region_pixels=0)


def test_converted_layout_errors_name_the_files(tmp_path: Path) -> None:
    root = make_coco(tmp_path)
    with pytest.raises(DatasetError, match=r"voc_labels/train2017.txt not found; convert"):
        COCOVOC(root, split="train")
    with pytest.raises(SystemExit):
        main(["--root", str(root), "--splits", "val2017"])  # no instances_val2017.json


def test_coco_voc_dataset_config(tmp_path: Path, make_cfg) -> None:
    root = make_coco(tmp_path)
    main(["--root", str(root), "--out", str(tmp_path / "converted"), "--splits", "train2017"])
    cfg = make_cfg("dataset=coco_voc", f"dataset.root={tmp_path / 'converted'}", f"dataset.image_root={root}",
                   "data.train_split=train", "dataset.min_region_pixels=0", base=["logger=csv", "data.num_workers=0"])
    validate(cfg)
    datamodule = build_datamodule(cfg)
    dataset = datamodule.split_dataset("train", train=False)
    assert len(dataset) == 2 and datamodule.num_classes == 21
    assert Image.open(dataset.samples[0][0]).size == (W, H)
