"""Bad input planted one fault at a time: in tiny VOC and CamVid trees (a DatasetError naming the file, and the
split or id where one is at fault; or, with ``skip_bad_samples``, the sample left out and counted) and in table
specs and profiles (a SpecError naming the file and the full key)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segexp.data.datasets.base import DatasetError, SegmentationDataset, load_image
from segexp.data.datasets.camvid import CamVid
from segexp.data.datasets.voc import VOC
from segexp.tables.spec import load_profile, load_spec
from segexp.training.build import build_datamodule
from tests.fixtures import (
    HEIGHT,
    VOC_TRAIN,
    VOC_VAL,
    WIDTH,
    cut_in_half,
    make_camvid,
    make_voc,
    random_image,
    stripes_label,
    voc_label,
    write_gray,
    write_palette_png,
    write_rgb,
)
from tests.specs import assert_spec_error, write_spec

BUILD, LOAD = "build", "load"
"""When a fault shows: when the dataset is built (the listing shows it) or when the bad sample is loaded."""
BAD = 1
"""The index of the sample a ``LOAD`` fault is planted in; the others must still load."""


def esc(path: Path) -> str:
    return re.escape(str(path))


def write_16bit(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"


def load_every_sample(dataset: SegmentationDataset) -> None:
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, HEIGHT, WIDTH) and sample["label"].shape == (HEIGHT, WIDTH)


def check_fault(build: Callable[[], SegmentationDataset], when: str, pattern: str) -> None:
    """``build()`` fails with ``pattern`` (BUILD), or builds and fails with it on sample BAD only (LOAD)."""
    if when == BUILD:
        with pytest.raises(DatasetError, match=pattern):
            build()
        return
    dataset = build()
    for index in range(len(dataset)):
        if index != BAD:
            dataset[index]
    with pytest.raises(DatasetError, match=pattern):
        dataset[BAD]


# ---------------------------------------------------------------------------------------------- VOC layout
# JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG, index = class id, 255 = border),
# ImageSets/Segmentation/<split>.txt (one id per line).


def voc_files(root: Path, name: str) -> tuple[Path, Path]:
    return root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"


def voc_split(root: Path, split: str = "train") -> Path:
    return root / "ImageSets" / "Segmentation" / f"{split}.txt"


def voc_truncated_jpeg(root: Path) -> tuple[str, str]:
    image, _ = voc_files(root, VOC_TRAIN[BAD])
    cut_in_half(image)
    return LOAD, rf"^cannot read image file {esc(image)}: .*[Tt]runcated"  # Pillow's words depend on where


def voc_value_not_a_class(root: Path) -> tuple[str, str]:
    _, label = voc_files(root, VOC_TRAIN[BAD])
    values = voc_label(BAD)
    values[0:3, 0:3] = 77  # neither one of the 21 classes nor the 255 border
    write_palette_png(label, values)
    return LOAD, rf"^label file {esc(label)} has values \[77\] outside \[0, 21\) and the ignore value 255"


def voc_foreign_palette(root: Path) -> tuple[str, str]:
    """Valid indices, but the label's palette is not VOC's (a grey ramp): its indices are not class ids."""
    _, label = voc_files(root, VOC_TRAIN[BAD])
    image = Image.fromarray(voc_label(BAD), mode="P")
    image.putpalette([value for index in range(256) for value in (index, index, index)])
    image.save(label)
    return LOAD, (rf"^label file {esc(label)} is a palette PNG whose index 2 has colour \(2, 2, 2\), not the "
                  r"dataset's colour \(0, 128, 0\) of class 2")


def voc_wrong_size(root: Path) -> tuple[str, str]:
    image, label = voc_files(root, VOC_TRAIN[BAD])
    write_palette_png(label, voc_label(BAD)[:12, :16])
    return LOAD, rf"^size mismatch: image {esc(image)} is 32x24 \(WxH\) but label {esc(label)} is 16x12$"


def voc_16bit_label(root: Path) -> tuple[str, str]:
    _, label = voc_files(root, VOC_TRAIN[BAD])
    write_16bit(label, voc_label(BAD).astype(np.uint16) * 256)  # class ids scaled to the 16-bit range
    return LOAD, (rf"^label file {esc(label)} is a 16-bit image \(mode 'I;16'\) with values in \[0, 65280\]; "
                  r"expected class ids in 0\.\.255")


def voc_empty_split(root: Path) -> tuple[str, str]:
    voc_split(root).write_text("")
    return BUILD, rf"^split file {esc(voc_split(root))} lists no samples$"


def voc_blank_split(root: Path) -> tuple[str, str]:
    voc_split(root).write_text("\n  \n\n")
    return BUILD, rf"^split file {esc(voc_split(root))} lists no samples$"


def voc_missing_image(root: Path) -> tuple[str, str]:
    image, _ = voc_files(root, VOC_TRAIN[BAD])
    image.unlink()
    return BUILD, rf"^VOC: split 'train' lists 1 file\(s\) that do not exist: image {esc(image)} \(restore them"


def voc_missing_label(root: Path) -> tuple[str, str]:
    _, label = voc_files(root, VOC_TRAIN[BAD])
    label.unlink()
    return BUILD, rf"^VOC: split 'train' lists 1 file\(s\) that do not exist: label {esc(label)} \("


def voc_unknown_id(root: Path) -> tuple[str, str]:
    voc_split(root).write_text("".join(f"{name}\n" for name in [*VOC_TRAIN, "2099_123456"]))
    image, label = voc_files(root, "2099_123456")
    return BUILD, rf"^VOC: split 'train' lists 2 file\(s\) that do not exist: image {esc(image)}; label {esc(label)}"


def voc_duplicate_id(root: Path) -> tuple[str, str]:
    voc_split(root).write_text("".join(f"{name}\n" for name in [*VOC_TRAIN, VOC_TRAIN[0]]))
    return BUILD, (rf"^split file {esc(voc_split(root))} lists '{VOC_TRAIN[0]}' more than once \(lines 1 and 4\); "
                   "every sample must be listed once$")


VOC_FAULTS = [voc_truncated_jpeg, voc_value_not_a_class, voc_foreign_palette, voc_wrong_size, voc_16bit_label,
              voc_empty_split, voc_blank_split, voc_missing_image, voc_missing_label, voc_unknown_id,
              voc_duplicate_id]


def test_the_valid_trees_load(tmp_path: Path) -> None:
    voc = VOC(make_voc(tmp_path), "train")
    assert len(voc) == len(VOC_TRAIN) and voc.LABEL_PALETTE is voc.PALETTE
    load_every_sample(voc)
    camvid = CamVid(make_camvid(tmp_path, {"train": 3}), "train")
    assert len(camvid) == 3 and camvid.LABEL_PALETTE is None
    load_every_sample(camvid)


@pytest.mark.parametrize("plant", VOC_FAULTS, ids=lambda plant: plant.__name__)
def test_voc_fault_names_the_file(tmp_path: Path, plant: Callable[[Path], tuple[str, str]]) -> None:
    root = make_voc(tmp_path)
    when, pattern = plant(root)
    check_fault(lambda: VOC(root, "train"), when, pattern)


def test_voc_16bit_label_within_8_bits_is_read_as_its_values(tmp_path: Path) -> None:
    """A label stored at 16 bits whose values are class ids is not wrong, only wide: it reads as the 8-bit one."""
    root = make_voc(tmp_path)
    _, label = voc_files(root, VOC_TRAIN[BAD])
    write_16bit(label, voc_label(BAD))
    np.testing.assert_array_equal(VOC(root, "train")[BAD]["label"].numpy(), voc_label(BAD))


def test_grayscale_image_is_converted_to_rgb(tmp_path: Path) -> None:
    """load_image's documented choice: a grayscale photograph is trained on, its grey in all three channels."""
    root = make_voc(tmp_path)
    image, _ = voc_files(root, VOC_TRAIN[BAD])
    Image.fromarray(random_image(7)[..., 0], mode="L").save(image)  # a grayscale JPEG
    grey = np.asarray(Image.open(image))
    assert Image.open(image).mode == "L" and grey.shape == (HEIGHT, WIDTH)
    loaded = load_image(image)
    assert loaded.shape == (HEIGHT, WIDTH, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, np.repeat(grey[..., None], 3, axis=2))
    sample = VOC(root, "train")[BAD]
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), loaded)
    np.testing.assert_array_equal(sample["label"].numpy(), voc_label(BAD))


# ---------------------------------------------------------------------------------------------- CamVid layout
# Materially different: PNG images, single-channel (grayscale) labels with 11 = void, and split lines that
# pair an image with its label by published path (<root>/<split>.txt).


def camvid_files(root: Path, index: int = BAD) -> tuple[Path, Path]:
    name = f"0001TP_train_{index:04d}.png"
    return root / "train" / name, root / "trainannot" / name


def camvid_line(index: int, label_index: int | None = None) -> str:
    label = f"0001TP_train_{index if label_index is None else label_index:04d}.png"
    return f"/SegNet/CamVid/train/0001TP_train_{index:04d}.png /SegNet/CamVid/trainannot/{label}"


def camvid_truncated_png(root: Path) -> tuple[str, str]:
    image, _ = camvid_files(root)
    cut_in_half(image)
    return LOAD, rf"^cannot read image file {esc(image)}: "


def camvid_value_not_a_class(root: Path) -> tuple[str, str]:
    _, label = camvid_files(root)
    write_gray(label, stripes_label([0, 3, 11, 12, 40]))  # 11 is void; 12 and 40 are no class
    return LOAD, rf"^label file {esc(label)} has values \[12, 40\] outside \[0, 11\) and the ignore value 255"


def camvid_colour_label(root: Path) -> tuple[str, str]:
    """CamVid's colour-coded labels (LabeledApproved_full) in place of the SegNet index labels."""
    _, label = camvid_files(root)
    write_rgb(label, np.array(CamVid.PALETTE, dtype=np.uint8)[stripes_label(list(range(11)))])
    return LOAD, rf"^label file {esc(label)} has mode 'RGB'; expected a single-channel image$"


def camvid_wrong_size(root: Path) -> tuple[str, str]:
    image, label = camvid_files(root)
    write_gray(label, np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    return LOAD, rf"^size mismatch: image {esc(image)} is 32x24 \(WxH\) but label {esc(label)} is 33x24$"


def camvid_16bit_label(root: Path) -> tuple[str, str]:
    _, label = camvid_files(root)
    write_16bit(label, stripes_label(list(range(12))).astype(np.uint16) + 1000)
    return LOAD, (rf"^label file {esc(label)} is a 16-bit image \(mode 'I;16'\) with values in \[1000, 1011\]; "
                  r"expected class ids in 0\.\.255")


def camvid_empty_split(root: Path) -> tuple[str, str]:
    (root / "train.txt").write_text("")
    return BUILD, rf"^split file {esc(root / 'train.txt')} lists no samples$"


def camvid_missing_image(root: Path) -> tuple[str, str]:
    image, _ = camvid_files(root)
    image.unlink()
    return BUILD, rf"^CamVid: split 'train' lists 1 file\(s\) that do not exist: image {esc(image)} \("


def camvid_duplicate_line(root: Path) -> tuple[str, str]:
    (root / "train.txt").write_text("\n".join([camvid_line(0), camvid_line(1), camvid_line(2), camvid_line(1)]))
    return BUILD, (rf"^split file {esc(root / 'train.txt')} lists '{re.escape(camvid_line(1))}' more than once "
                   r"\(lines 2 and 4\)")


def camvid_image_listed_twice(root: Path) -> tuple[str, str]:
    """The same image paired with two labels: not a repeated line, but still a repeated sample."""
    (root / "train.txt").write_text("\n".join([camvid_line(0), camvid_line(1), camvid_line(2), camvid_line(1, 0)]))
    image, _ = camvid_files(root)
    return BUILD, rf"^CamVid: split 'train' lists image {esc(image)} more than once \(samples 1 and 3\)"


def camvid_malformed_line(root: Path) -> tuple[str, str]:
    (root / "train.txt").write_text("\n".join([camvid_line(0), "/SegNet/CamVid/train/0001TP_train_0001.png"]))
    return BUILD, rf"^{esc(root / 'train.txt')}:2: expected 'image label', got '/SegNet/CamVid/train/0001TP"


CAMVID_FAULTS = [camvid_truncated_png, camvid_value_not_a_class, camvid_colour_label, camvid_wrong_size,
                 camvid_16bit_label, camvid_empty_split, camvid_missing_image, camvid_duplicate_line,
                 camvid_image_listed_twice, camvid_malformed_line]


@pytest.mark.parametrize("plant", CAMVID_FAULTS, ids=lambda plant: plant.__name__)
def test_camvid_fault_names_the_file(tmp_path: Path, plant: Callable[[Path], tuple[str, str]]) -> None:
    root = make_camvid(tmp_path, {"train": 3})
    when, pattern = plant(root)
    check_fault(lambda: CamVid(root, "train"), when, pattern)


def test_camvid_grayscale_image_is_converted_to_rgb(tmp_path: Path) -> None:
    root = make_camvid(tmp_path, {"train": 3})
    image, _ = camvid_files(root)
    grey = random_image(3)[..., 1]
    write_gray(image, grey)
    np.testing.assert_array_equal(CamVid(root)[BAD]["image"].permute(1, 2, 0).numpy(),
                                  np.repeat(grey[..., None], 3, axis=2))


# ---------------------------------------------------------------------------------------------- skip_bad_samples


def test_skip_bad_samples_leaves_out_counts_and_logs_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_voc(tmp_path)
    truncated, _ = voc_files(root, VOC_TRAIN[0])
    cut_in_half(truncated)
    missing, _ = voc_files(root, VOC_TRAIN[1])
    missing.unlink()
    _, bad_value = voc_files(root, VOC_VAL[0])
    write_palette_png(bad_value, np.full((HEIGHT, WIDTH), 30, np.uint8))
    with pytest.raises(DatasetError, match=f"that do not exist: image {esc(missing)}"):
        VOC(root, "trainval")  # strict by default

    with caplog.at_level(logging.WARNING, logger="segexp.data.datasets.base"):
        dataset = VOC(root, "trainval", skip_bad_samples=True)
    assert [image.stem for image, _ in dataset.samples] == [VOC_TRAIN[2], VOC_VAL[1]]
    assert [image for image, _ in dataset.skipped] == [truncated, missing, voc_files(root, VOC_VAL[0])[0]]
    reasons = [reason for _, reason in dataset.skipped]
    assert re.match(rf"cannot read image file {esc(truncated)}: .*[Tt]runcated", reasons[0])
    assert reasons[1] == f"image file not found: {missing}"
    assert reasons[2].startswith(f"label file {bad_value} has values [30] outside [0, 21)")
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"VOC: skipped 3 bad samples of split 'trainval' (2 kept): cannot read image file {truncated}: "
    )
    assert str(missing) in record.getMessage() and str(bad_value) in record.getMessage()
    load_every_sample(dataset)
    assert [sample["index"] for sample in (dataset[0], dataset[1])] == [0, 1]

    assert VOC(root, "val", skip_bad_samples=True).skipped[0][0] == voc_files(root, VOC_VAL[0])[0]
    _, last = voc_files(root, VOC_TRAIN[2])
    write_palette_png(last, voc_label(2)[:10])
    with pytest.raises(DatasetError, match=rf"^VOC: all 3 samples of split 'train' under {esc(root)} are bad: "):
        VOC(root, "train", skip_bad_samples=True)


def test_skip_bad_samples_does_not_skip_a_bad_split_file(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    voc_duplicate_id(root)
    with pytest.raises(DatasetError, match=f"lists '{VOC_TRAIN[0]}' more than once"):
        VOC(root, "train", skip_bad_samples=True)
    voc_empty_split(root)
    with pytest.raises(DatasetError, match="lists no samples"):
        VOC(root, "train", skip_bad_samples=True)
    clean = VOC(make_voc(tmp_path / "clean"), "train", skip_bad_samples=True)
    assert len(clean) == len(VOC_TRAIN) and clean.skipped == []


def test_skip_bad_samples_from_the_command_line(tmp_path: Path, make_cfg) -> None:
    root = make_camvid(tmp_path, {"train": 3, "val": 2})
    cut_in_half(camvid_files(root)[0])
    cfg = make_cfg("dataset=camvid", f"dataset.root={root}", "dataset.skip_bad_samples=true",
                   base=["data.num_workers=0"])
    train = build_datamodule(cfg).split_dataset("train", train=False)
    assert len(train) == 2 and [image for image, _ in train.skipped] == [camvid_files(root)[0]]
    strict = make_cfg("dataset=camvid", f"dataset.root={root}", base=["data.num_workers=0"])
    with pytest.raises(DatasetError, match=f"cannot read image file {esc(camvid_files(root)[0])}"):
        build_datamodule(strict).split_dataset("train", train=False)[BAD]


# ---------------------------------------------------------------------------------------------- table specs
# Every field load_spec reads -- top level: id, title, paper, dataset, metrics, status, pending_reason, notes,
# base, protocol.{effective_batch,max_steps}, baseline, paper_values, rows; rows[i]: name, label, overrides,
# paper, notes, eval_of, eval_overrides, init_from, measure, baseline, protocol -- given a wrong type, a wrong
# value or an unknown key. The cases of tests/test_tables.py (a misspelt row key, a paper value that is no
# number or no table metric, baseline/init_from naming no row, an init_from cycle, a wrong id, sweeps, reserved
# keys, deletions, a bad row name, an unknown metric, pending without a reason, overrides on an eval row) are
# not repeated.

SPEC = """\
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
base: [data.batch_size=4]
protocol: {effective_batch: 4, max_steps: 100}
baseline: a
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {mIoU: 50.0}
    measure: [size_mb]
  - name: b
    label: the second row
    overrides: [backbone=resnet34]
    paper: {mIoU: 51.0}
"""
ROW_B = "  - name: b\n"
ROWS = SPEC[SPEC.index("rows:\n"):]

SPEC_CASES = [
    # top level: types
    ("id: demo.t1", "id: 5", "id", "expected str, got 5"),
    ("title: demo", "title: [demo]", "title", "expected str, got ['demo']"),
    ("title: demo", "title: ''", "title", "must not be empty"),
    ("paper: demo", "paper: {name: demo}", "paper", "expected str, got {'name': 'demo'}"),
    ("dataset: synthetic\n", "", "dataset", "required key is missing"),
    ("dataset: synthetic", "dataset: 3.5", "dataset", "expected str, got 3.5"),
    ("metrics: [mIoU]", "metrics: mIoU", "metrics", "expected list, got 'mIoU'"),
    ("metrics: [mIoU]", "metrics: {mIoU: 1}", "metrics", "expected list, got {'mIoU': 1}"),
    ("metrics: [mIoU]", "metrics: []", "metrics", "list at least one metric"),
    ("metrics: [mIoU]", "metrics: [mIoU, 3]", "metrics[1]", "expected a string, got 3"),
    ("metrics: [mIoU]", "metrics: [mIoU, mIoU]", "metrics[1]", "'mIoU' is listed twice (also metrics[0])"),
    ("title: demo", "title: demo\nstatus: done", "status", "must be one of ready, pending, got 'done'"),
    ("title: demo", "title: demo\nstatus: 1", "status", "expected str, got 1"),
    ("title: demo", "title: demo\nstatus: pending\npending_reason: [x]", "pending_reason", "expected str"),
    ("title: demo", "title: demo\nnotes: 3", "notes", "expected str, got 3"),
    ("base: [data.batch_size=4]", "base: data.batch_size=4", "base", "expected list, got 'data.batch_size=4'"),
    ("base: [data.batch_size=4]", "base: [4]", "base[0]", "expected a string, got 4"),
    ("base: [data.batch_size=4]", "base: [data.batch_size]", "base[0]", "is not an override (expected key=value)"),
    ("base: [data.batch_size=4]", "base: ['data.batch_size=[4']", "base[0]", "does not parse as a Hydra override"),
    ("base: [data.batch_size=4]", "base: [data.batch_size=4, data.batch_size=8]", "base[1]",
     "sets data.batch_size again (already set by base[0])"),
    ("protocol: {effective_batch: 4, max_steps: 100}", "protocol: [4, 100]", "protocol",
     "expected a mapping, got a list"),
    ("protocol: {effective_batch: 4, max_steps: 100}", "protocol: {batch: 4}", "protocol.batch",
     "unknown key; allowed keys: effective_batch, max_steps"),
    ("effective_batch: 4", "effective_batch: four", "protocol.effective_batch", "expected int, got 'four'"),
    ("effective_batch: 4", "effective_batch: 4.5", "protocol.effective_batch", "expected int, got 4.5"),
    ("max_steps: 100", "max_steps: 0", "protocol.max_steps", "must be >= 1, got 0"),
    ("baseline: a", "baseline: [a]", "baseline", "expected str, got ['a']"),
    ("title: demo", "title: demo\npaper_values: relative", "paper_values", "must be one of absolute, delta"),
    ("baseline: a", "paper_values: delta", "baseline", "paper_values: delta needs the baseline row"),
    ("title: demo", "titel: demo", "titel", "unknown key (did you mean 'title'?)"),
    # rows
    (ROWS, "rows: {name: a}\n", "rows", "expected list, got {'name': 'a'}"),
    (f"baseline: a\n{ROWS}", "rows: []\n", "rows", "list at least one row"),
    (f"baseline: a\n{ROWS}", "", "rows", "required key is missing"),
    ("  - name: a\n", "  - a\n  - name: x\n", "rows[0]", "expected a mapping, got a string"),
    ("  - name: a\n", "  -\n  - name: x\n", "rows[0]", "expected a mapping, got null"),
    (f"{ROW_B}    label: the second row\n", "  - label: the second row\n", "rows[1].name",
     "required key is missing"),
    (ROW_B, "  - name: 7\n", "rows[1].name", "expected str, got 7"),
    (ROW_B, "  - name: a\n", "rows[1].name", "duplicate row name 'a' (also rows[0].name)"),
    ("    label: the second row", "    label: 2", "rows[1].label", "expected str, got 2"),
    ("    overrides: [backbone=resnet34]", "    overrides: backbone=resnet34", "rows[1].overrides",
     "expected list, got 'backbone=resnet34'"),
    ("    overrides: [backbone=resnet34]", "    overrides: {backbone: resnet34}", "rows[1].overrides",
     "expected list, got {'backbone': 'resnet34'}"),
    ("[backbone=resnet34]", "[34]", "rows[1].overrides[0]", "expected a string, got 34"),
    ("[backbone=resnet34]", "[backbone=resnet34, backbone=resnet50]", "rows[1].overrides[1]",
     "'backbone=resnet50' sets backbone again (already set by rows[1].overrides[0]); keep one"),
    ("    paper: {mIoU: 51.0}\n", "", "rows[1].paper", "required key is missing"),
    ("paper: {mIoU: 51.0}", "paper: [51.0]", "rows[1].paper", "expected dict, got [51.0]"),
    ("paper: {mIoU: 51.0}", "paper: 51.0", "rows[1].paper", "expected dict, got 51.0"),
    ("paper: {mIoU: 51.0}", "paper: {mIoU: true}", "rows[1].paper.mIoU", "expected a number, got True"),
    ("paper: {mIoU: 51.0}", "paper: {mIoU: .nan}", "rows[1].paper.mIoU", "expected a finite number, got nan"),
    ("    label: the second row", "    notes: 3", "rows[1].notes", "expected str, got 3"),
    ("    label: the second row", "    notes: '  '", "rows[1].notes", "must not be empty"),
    ("    overrides: [backbone=resnet34]", "    eval_of: z", "rows[1].eval_of", "no row named 'z' in this table"),
    ("    overrides: [backbone=resnet34]", "    eval_of: [a]", "rows[1].eval_of", "expected str, got ['a']"),
    ("    overrides: [backbone=resnet34]", "    eval_of: b", "rows[1].eval_of", "a row cannot evaluate itself"),
    ("    label: the second row", "    eval_overrides: [data.val_batch_size=2]", "rows[1].eval_overrides",
     "only eval-only rows (with eval_of) take eval_overrides"),
    ("    overrides: [backbone=resnet34]", "    eval_of: a\n    eval_overrides: data.val_batch_size=2",
     "rows[1].eval_overrides", "expected list, got 'data.val_batch_size=2'"),
    ("    overrides: [backbone=resnet34]", "    eval_of: a\n    eval_overrides: [data.val_batch_size]",
     "rows[1].eval_overrides[0]", "is not an override"),
    ("    label: the second row", "    init_from: 3", "rows[1].init_from", "expected str, got 3"),
    ("    label: the second row", "    init_from: b", "rows[1].init_from", "starts a cycle back to 'b'"),
    ("    measure: [size_mb]", "    measure: [fps]", "rows[0].measure[0]", "'fps' is not measurable"),
    ("    measure: [size_mb]", "    measure: size_mb", "rows[0].measure", "expected list, got 'size_mb'"),
    ("    measure: [size_mb]", "    measure: [size_mb, size_mb]", "rows[0].measure[1]",
     "'size_mb' is listed twice (also rows[0].measure[0])"),
    ("    overrides: [backbone=resnet18]", "    eval_of: b", "rows[0].measure",
     "size and speed are measured on trained rows"),
    ("    label: the second row", "    baseline: z", "rows[1].baseline", "no row named 'z' in this table"),
    ("    label: the second row", "    protocol: 16", "rows[1].protocol", "expected a mapping, got an integer"),
    ("    label: the second row", "    protocol: {steps: 5}", "rows[1].protocol.steps",
     "unknown key (did you mean 'max_steps'?); allowed keys: effective_batch, max_steps"),
    ("    label: the second row", "    protocol: {max_steps: -5}", "rows[1].protocol.max_steps", "must be >= 1"),
    ("    label: the second row", "    labels: x", "rows[1].labels", "unknown key (did you mean 'label'?)"),
    # the file itself
    ("title: demo", "title: [demo", "<yaml>",
     "not valid YAML: line 3, column 6: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2, "
     "column 8)"),
    ("title: demo", "title: demo\ntitle: other", "title", "written twice (lines 2 and 3)"),
    ("    label: the second row", "    overrides: [x=1]", "rows[1].overrides", "written twice (lines 15 and 16)"),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), SPEC_CASES)
def test_spec_field_errors_name_the_file_and_the_key(tmp_path: Path, old: str, new: str, key: str,
                                                     message: str) -> None:
    spec = load_spec(write_spec(tmp_path, SPEC))
    assert [row.name for row in spec.rows] == ["a", "b"] and spec.protocol.max_steps == 100
    assert SPEC.count(old) == 1
    path = write_spec(tmp_path, SPEC.replace(old, new))
    assert_spec_error(path, key, message)


@pytest.mark.parametrize(("text", "key", "message"), [
    ("", "<top level>", "the file is empty; expected a mapping with the keys id, title, paper"),
    ("# nothing but a comment\n", "<top level>", "the file is empty"),
    ("- id: demo.t1\n- title: demo\n", "<top level>", "expected a mapping, got a list"),
    ("demo.t1\n", "<top level>", "expected a mapping, got a string"),
    ("id: demo.t1\n  title: demo\n", "<yaml>", "not valid YAML: line 2, column 8: mapping values are not allowed"),
    ("id: [demo.t1\n", "<yaml>", "not valid YAML"),
    (b"id: \xff\xfe\n", "<file>", "cannot read the file"),
])
def test_unusable_spec_files_name_the_file(tmp_path: Path, text: str | bytes, key: str, message: str) -> None:
    path = write_spec(tmp_path, "")
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_spec_error(path, key, message)


# ---------------------------------------------------------------------------------------------- profiles
# Every field load_profile reads: description, drop, overrides, eval_overrides, evidence, check_protocol,
# checkpoints, distributed.{max_processes,overrides}.

PROFILE = """\
description: a test profile
drop: [dataset, data.crop_size]
overrides: [dataset=synthetic]
eval_overrides: [data.val_batch_size=2]
check_protocol: false
checkpoints: last
evidence: false
distributed:
  max_processes: 2
  overrides: [trainer=ddp_cpu]
"""

PROFILE_CASES = [
    ("description: a test profile\n", "", "description", "required key is missing"),
    ("description: a test profile", "description: 3", "description", "expected str, got 3"),
    ("description: a test profile", "description: ''", "description", "must not be empty"),
    ("description: a test profile", "descripton: a test profile", "descripton",
     "unknown key (did you mean 'description'?)"),
    ("drop: [dataset, data.crop_size]", "drop: dataset", "drop", "expected list, got 'dataset'"),
    ("drop: [dataset, data.crop_size]", "drop: [dataset, 3]", "drop[1]", "expected a string, got 3"),
    ("drop: [dataset, data.crop_size]", "drop: [dataset, dataset]", "drop[1]", "'dataset' is listed twice"),
    ("drop: [dataset, data.crop_size]", "drop: [dataset=voc]", "drop[0]", "'dataset=voc' is not a config group"),
    ("drop: [dataset, data.crop_size]", "drop: ['']", "drop[0]", "'' is not a config group or key"),
    ("overrides: [dataset=synthetic]", "overrides: {dataset: synthetic}", "overrides",
     "expected list, got {'dataset': 'synthetic'}"),
    ("overrides: [dataset=synthetic]", "overrides: [dataset]", "overrides[0]", "is not an override"),
    ("overrides: [dataset=synthetic]", "overrides: [output_dir=/x]", "overrides[0]", "set by segexp-table"),
    ("overrides: [dataset=synthetic]", "overrides: [dataset=synthetic, dataset=voc]", "overrides[1]",
     "sets dataset again"),
    ("eval_overrides: [data.val_batch_size=2]", "eval_overrides: data.val_batch_size=2", "eval_overrides",
     "expected list"),
    ("eval_overrides: [data.val_batch_size=2]", "eval_overrides: ['data.val_batch_size=1,2']", "eval_overrides[0]",
     "is a sweep"),
    ("check_protocol: false", "check_protocol: 'no'", "check_protocol", "expected bool, got 'no'"),
    ("checkpoints: last", "checkpoints: all", "checkpoints", "must be one of keep, last, none, got 'all'"),
    ("checkpoints: last", "checkpoints: [last]", "checkpoints", "expected str, got ['last']"),
    ("evidence: false", "evidence: 1", "evidence", "expected bool, got 1"),
    ("distributed:\n  max_processes: 2\n  overrides: [trainer=ddp_cpu]\n", "distributed: [2]\n", "distributed",
     "expected a mapping, got a list"),
    ("  max_processes: 2", "  processes: 2", "distributed.processes", "unknown key (did you mean 'max_processes'?)"),
    ("  max_processes: 2", "  max_processes: two", "distributed.max_processes", "expected int, got 'two'"),
    ("  max_processes: 2", "  max_processes: true", "distributed.max_processes", "expected int, got True"),
    ("  overrides: [trainer=ddp_cpu]", "  overrides: trainer=ddp_cpu", "distributed.overrides", "expected list"),
    ("  overrides: [trainer=ddp_cpu]", "  overrides: [~trainer]", "distributed.overrides[0]", "deletions"),
    ("evidence: false", "evidence: false\nevidence: true", "evidence", "written twice (lines 7 and 8)"),
    ("checkpoints: last", "checkpoints: [last", "<yaml>", "not valid YAML"),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), PROFILE_CASES)
def test_profile_field_errors_name_the_file_and_the_key(tmp_path: Path, old: str, new: str, key: str,
                                                        message: str) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(PROFILE)
    profile = load_profile("demo", root=tmp_path)
    assert profile.distributed is not None and profile.distributed.max_processes == 2
    assert PROFILE.count(old) == 1
    path.write_text(PROFILE.replace(old, new))
    assert_spec_error(path, key, message, lambda: load_profile("demo", root=tmp_path))


@pytest.mark.parametrize(("text", "key", "message"), [
    ("", "<top level>", "the file is empty; expected a mapping with the keys description, overrides"),
    ("- description: x\n", "<top level>", "expected a mapping, got a list"),
])
def test_unusable_profile_files_name_the_file(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    assert_spec_error(path, key, message, lambda: load_profile("demo", root=tmp_path))
