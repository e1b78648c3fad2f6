"""Bad data planted one fault at a time in tiny VOC and CamVid trees: a DatasetError naming the file and the
fault, when the dataset is built or when the sample is read; ``dataset.skip_bad_samples`` leaves bad samples out
and counts them."""

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
from segexp.training.build import build_datamodule
from tests.helpers.data_files import (
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
