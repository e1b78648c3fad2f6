"""Dataset loaders on tiny official-layout fixture trees: label encodings, errors, seeded augmentation."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segexp.cli.convert_sbd import main
from segexp.data.convert.sbd_to_voc import aug_splits, convert_sbd
from segexp.data.datasets.ade20k import ADE20K
from segexp.data.datasets.base import (
    IGNORE_INDEX,
    DatasetError,
    SegmentationDataset,
    check_split,
    load_image,
    load_label,
)
from segexp.data.datasets.camvid import CamVid
from segexp.data.datasets.cityscapes import TRAIN_ID_LUT, Cityscapes
from segexp.data.datasets.synthetic import SyntheticShapes
from segexp.data.datasets.voc import VOC, VOCAug
from segexp.data.transforms import build_eval_transform, build_train_transform
from segexp.training.build import build_datamodule, validate
from tests.helpers.data_files import (
    CITYSCAPES_LABEL_IDS,
    HEIGHT,
    VOC_TRAIN,
    VOC_VAL,
    WIDTH,
    make_ade20k,
    make_camvid,
    make_cityscapes,
    make_sbd,
    make_voc,
    random_image,
    sbd_label,
    stripes_label,
    voc_label,
    write_gray,
    write_rgb,
)

CAMVID_REAL = Path("/work/shared/data/camvid")


def _band_values(label: torch.Tensor, count: int) -> list[int]:
    """The value of each of ``count`` column bands of a fixture label (see ``stripes_label``)."""
    bands = np.array_split(np.arange(label.shape[1]), count)
    return [int(label[0, band[0]]) for band in bands]


# ---------------------------------------------------------------- CamVid


def test_camvid_lists_rerooted_pairs_and_maps_void(tmp_path: Path) -> None:
    root = make_camvid(tmp_path)
    train, val = CamVid(root, "train"), CamVid(str(root), "val")
    assert (len(train), len(val)) == (3, 2)
    image_path, label_path = train.samples[0]
    assert image_path == root / "train" / "0001TP_train_0000.png"
    assert label_path == root / "trainannot" / "0001TP_train_0000.png"
    sample = train[0]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, HEIGHT, WIDTH)
    assert sample["label"].dtype == torch.long and sample["label"].shape == (HEIGHT, WIDTH)
    assert sample["index"] == 0
    assert _band_values(sample["label"], 12) == [*range(11), IGNORE_INDEX]
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), random_image(0))
    assert train.num_classes == 11 and len(train.PALETTE) == 11
    assert train.PALETTE[3] == (128, 64, 128)  # Road


def test_camvid_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'training'"):
        CamVid(make_camvid(tmp_path), "training")


@pytest.mark.skipif(not CAMVID_REAL.is_dir(), reason=f"CamVid not found at {CAMVID_REAL}")
def test_camvid_real_samples() -> None:
    for split, count in (("train", 367), ("val", 101)):
        dataset = CamVid(CAMVID_REAL, split, transform=build_eval_transform())
        assert len(dataset) == count
    dataset = CamVid(CAMVID_REAL, "val", transform=build_eval_transform())
    for index in (0, len(dataset) - 1):
        sample = dataset[index]
        assert sample["image"].shape == (3, 360, 480) and sample["image"].dtype == torch.float32
        assert sample["label"].shape == (360, 480)
        values = set(sample["label"].unique().tolist())
        assert values <= set(range(11)) | {IGNORE_INDEX}
        assert len(values - {IGNORE_INDEX}) >= 3


# ---------------------------------------------------------------- VOC / VOC aug / SBD


def test_voc_palette_png_gives_indices_and_keeps_border(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    assert Image.open(root / "SegmentationClass" / f"{VOC_TRAIN[0]}.png").mode == "P"
    dataset = VOC(root, "train")
    assert [p[0].name for p in dataset.samples] == [f"{n}.jpg" for n in VOC_TRAIN]
    label = dataset[0]["label"].numpy()
    np.testing.assert_array_equal(label, voc_label(0))
    assert label[4, 4] == IGNORE_INDEX and label[10, 8] == 1 and label[10, 24] == 15
    assert len(VOC(root, "trainval")) == len(VOC_TRAIN) + len(VOC_VAL)
    assert dataset.num_classes == 21
    assert dataset.PALETTE[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert dataset.PALETTE[15] == (192, 128, 128)  # person


def test_aug_split_arithmetic() -> None:
    train_aug, val = aug_splits(["c", "a", "v1"], ["b", "a"], ["t", "b"], ["v1", "v2"])
    assert train_aug == ["a", "b", "c", "t"]
    assert val == ["v1", "v2"]


def test_convert_sbd_writes_labels_and_splits(tmp_path: Path) -> None:
    voc_root = make_voc(tmp_path)
    sbd_train = ["2008_000100", "2008_000101", VOC_VAL[0]]
    sbd_val = ["2008_000102", VOC_TRAIN[0]]
    sbd_root = make_sbd(tmp_path, sbd_train, sbd_val, voc_root)
    written = convert_sbd(sbd_root, voc_root)
    assert written == 8  # 5 VOC ids + 3 SBD-only ids
    split_dir = voc_root / "ImageSets" / "SegmentationAug"
    train_aug = (split_dir / "train_aug.txt").read_text().split()
    assert train_aug == sorted({"2008_000100", "2008_000101", "2008_000102", *VOC_TRAIN})
    assert (split_dir / "val.txt").read_text().split() == sorted(VOC_VAL)
    out_dir = voc_root / "SegmentationClassAug"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{n}.png" for n in train_aug + VOC_VAL)
    sbd_png = Image.open(out_dir / "2008_000101.png")
    assert sbd_png.mode == "L"
    np.testing.assert_array_equal(np.array(sbd_png), sbd_label(1))
    # VOC ids keep the official label (with its 255 border) even when SBD also labels them
    np.testing.assert_array_equal(np.array(Image.open(out_dir / f"{VOC_TRAIN[0]}.png")), voc_label(0))

    aug = VOCAug(voc_root, "train_aug")
    assert len(aug) == len(train_aug) and len(VOCAug(voc_root)) == len(train_aug)
    labels = {aug.samples[i][1].stem: aug[i]["label"].numpy() for i in range(len(aug))}
    np.testing.assert_array_equal(labels["2008_000102"], sbd_label(3))
    assert len(VOCAug(voc_root, "val")) == len(VOC_VAL)


def test_sbd_cli_and_missing_mat(tmp_path: Path) -> None:
    voc_root = make_voc(tmp_path)
    sbd_root = make_sbd(tmp_path, ["2008_000100"], ["2008_000102"], voc_root)
    assert main(["--sbd-root", str(sbd_root), "--voc-root", str(voc_root)]) == 0
    (sbd_root / "cls" / "2008_000100.mat").unlink()
    with pytest.raises(DatasetError, match="2008_000100.mat"):
        convert_sbd(sbd_root, voc_root)
    assert not list((voc_root / "SegmentationClassAug").glob(".*"))  # no temporary files left


# ---------------------------------------------------------------- ADE20K


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path: Path) -> None:
    root = make_ade20k(tmp_path)
    train, val = ADE20K(root, "train"), ADE20K(root, "val")
    assert (len(train), len(val)) == (2, 2)
    assert val.samples[0][1] == root / "annotations" / "validation" / "ADE_val_00000001.png"
    assert _band_values(train[1]["label"], 4) == [IGNORE_INDEX, 0, 1, 149]
    assert train.num_classes == 150 and len(train.PALETTE) == 150 and len(set(train.PALETTE)) == 150
    assert train.CLASSES[0] == "wall" and train.CLASSES[-1] == "flag"


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_label_ids_to_train_ids(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path)
    dataset = Cityscapes(root, "val")
    assert len(dataset) == 2
    image_path, label_path = dataset.samples[1]
    assert image_path.name == "bremen_000001_000019_leftImg8bit.png"
    assert label_path == root / "gtFine" / "val" / "bremen" / "bremen_000001_000019_gtFine_labelIds.png"
    expected = [255, 255, 0, 1, 2, 11, 13, 18, 255]  # ids 0, 1, 7, 8, 11, 24, 26, 33, 34
    assert _band_values(dataset[0]["label"], len(CITYSCAPES_LABEL_IDS)) == expected
    assert TRAIN_ID_LUT.shape == (256,)
    assert (TRAIN_ID_LUT[7], TRAIN_ID_LUT[26], TRAIN_ID_LUT[0], TRAIN_ID_LUT[255]) == (0, 13, 255, 255)
    assert int((TRAIN_ID_LUT != 255).sum()) == 19
    assert dataset.num_classes == 19 and dataset.PALETTE[13] == (0, 0, 142)


def test_cityscapes_coarse_mode(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path, mode="coarse", splits=("train", "train_extra"))
    dataset = Cityscapes(root, "train_extra", mode="coarse")
    assert dataset.samples[0][1] == (
        root / "gtCoarse" / "train_extra" / "aachen" / "aachen_000000_000019_gtCoarse_labelIds.png"
    )
    assert dataset[0]["label"].shape == (HEIGHT, WIDTH)
    assert Cityscapes(root, "train", mode="coarse").samples[1][1].name == "bremen_000001_000019_gtCoarse_labelIds.png"
    with pytest.raises(DatasetError, match=r"Cityscapes \(coarse\): unknown split 'test'; expected one of"):
        Cityscapes(root, "test", mode="coarse")
    with pytest.raises(DatasetError, match="unknown mode 'medium'"):
        Cityscapes(root, "train", mode="medium")


FINE_IDS = CITYSCAPES_LABEL_IDS
COARSE_IDS = [7, 0, 26, 24]
"""labelIds of the coarse fixture labels (road, unlabeled, car, person): different from the fine ones."""


def test_cityscapes_fine_union_reads_coarse_labels_for_train_extra_only(tmp_path: Path) -> None:
    """DeepLabv3 Table 13: ``mode=fine``, ``train+val+train_extra`` = fine trainval + coarse train_extra."""
    root = make_cityscapes(tmp_path, mode="fine", splits=("train", "val"))
    make_cityscapes(tmp_path, mode="coarse", splits=("train", "val"), label_ids=COARSE_IDS)  # must stay unread
    make_cityscapes(tmp_path, mode="coarse", splits=("train_extra",), cities=("augsburg",), label_ids=COARSE_IDS)
    dataset = Cityscapes(root, "train+val+train_extra", mode="fine")
    assert dataset.split == "train+val+train_extra" and dataset.has_labels
    assert [(str(image.relative_to(root)), str(label.relative_to(root))) for image, label in dataset.samples] == [
        ("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
         "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"),
        ("leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png",
         "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png"),
        ("leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png",
         "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"),
        ("leftImg8bit/val/bremen/bremen_000001_000019_leftImg8bit.png",
         "gtFine/val/bremen/bremen_000001_000019_gtFine_labelIds.png"),
        ("leftImg8bit/train_extra/augsburg/augsburg_000000_000019_leftImg8bit.png",
         "gtCoarse/train_extra/augsburg/augsburg_000000_000019_gtCoarse_labelIds.png"),
    ]  # fmt: skip
    fine_train_ids = [255, 255, 0, 1, 2, 11, 13, 18, 255]  # ids 0, 1, 7, 8, 11, 24, 26, 33, 34
    assert _band_values(dataset[0]["label"], len(FINE_IDS)) == fine_train_ids
    assert _band_values(dataset[3]["label"], len(FINE_IDS)) == fine_train_ids
    assert _band_values(dataset[4]["label"], len(COARSE_IDS)) == [0, 255, 13, 11]  # ids 7, 0, 26, 24
    assert len(Cityscapes(root, "train_extra", mode="fine")) == 1
    coarse = Cityscapes(root, "train+train_extra", mode="coarse")
    assert [label.parts[-4] for _, label in coarse.samples] == ["gtCoarse"] * 3
    assert _band_values(coarse[0]["label"], len(COARSE_IDS)) == [0, 255, 13, 11]


def test_cityscapes_table13_training_split_from_the_command_line(tmp_path: Path, make_cfg) -> None:
    root = make_cityscapes(tmp_path, mode="fine", splits=("train", "val"))
    make_cityscapes(tmp_path, mode="coarse", splits=("train_extra",), cities=("augsburg",), label_ids=COARSE_IDS)
    cfg = make_cfg("dataset=cityscapes", f"dataset.root={root}", "dataset.mode=fine",
                   "data.train_split=train+val+train_extra", base=["data.num_workers=0"])
    validate(cfg)
    datamodule = build_datamodule(cfg)
    dataset = datamodule.split_dataset(datamodule.train_split, train=True)
    assert dataset.split == "train+val+train_extra" and len(dataset) == 5
    assert [label.parts[-4] for _, label in dataset.samples] == ["gtFine"] * 4 + ["gtCoarse"]


def test_cityscapes_test_split_is_unlabelled(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path, mode="fine", splits=("val", "test"))  # writes dummy gtFine/test files too
    test = Cityscapes(root, "test")
    assert [(image.name, label) for image, label in test.samples] == [
        ("aachen_000000_000019_leftImg8bit.png", None), ("bremen_000001_000019_leftImg8bit.png", None)
    ]
    assert not test.has_labels and Cityscapes(root, "val").has_labels
    sample = test[1]
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), random_image(1))
    assert sample["label"].shape == (HEIGHT, WIDTH) and bool((sample["label"] == IGNORE_INDEX).all())


# ---------------------------------------------------------------- split unions


class Listed(SegmentationDataset):
    """A dataset whose splits are the given lists of ``(image, label)`` names under ``root``."""

    CLASSES = ("a", "b")
    SPLITS: dict[str, list[tuple[str, str | None]]] = {
        "train": [("t1.png", "t1_l.png"), ("t2.png", "t2_l.png")],
        "val": [("v1.png", "v1_l.png")],
        "extra": [("e1.png", "e1_l.png"), ("e2.png", "e2_l.png"), ("e3.png", "e3_l.png")],
        "empty": [],
        "test": [("x1.png", None)],
        "overlap": [("v1.png", "other_l.png")],
    }

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        check_split(split, self.SPLITS, "Listed")
        listed = [(self.root / image, None if label is None else self.root / label)
                  for image, label in self.SPLITS[split]]
        for image, label in listed:  # listed files must exist
            image.touch()
            if label is not None:
                label.touch()
        return listed


def _names(dataset: SegmentationDataset) -> list[str]:
    return [image.name for image, _ in dataset.samples]


def test_split_union_concatenates_the_parts_in_the_given_order(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("x")
    union = Listed(tmp_path, "val+extra+train")
    assert _names(union) == ["v1.png", "e1.png", "e2.png", "e3.png", "t1.png", "t2.png"]
    assert union.samples[1] == (tmp_path / "e1.png", tmp_path / "e1_l.png")
    assert union.split == "val+extra+train" and repr(union) == "Listed(split='val+extra+train', samples=6, classes=2)"
    assert union.has_labels and not Listed(tmp_path, "test").has_labels
    assert _names(Listed(tmp_path, "train")) == ["t1.png", "t2.png"]


def test_split_union_errors_name_the_split(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("x")
    with pytest.raises(DatasetError, match=r"Listed: split 'train\+val\+train' lists 'train' more than once"):
        Listed(tmp_path, "train+val+train")
    for split in ("train+", "+train", "train++val", "+"):
        with pytest.raises(DatasetError, match=rf"Listed: split '{re.escape(split)}' has an empty part"):
            Listed(tmp_path, split)
    with pytest.raises(DatasetError, match=r"unknown split 'vall'; expected one of .* \(in split 'train\+vall'\)"):
        Listed(tmp_path, "train+vall")
    with pytest.raises(DatasetError, match=r"^Listed: unknown split 'vall'; expected one of \('train', 'val'"):
        Listed(tmp_path, "vall")  # a plain split keeps the message it always had
    with pytest.raises(DatasetError, match=r"^Listed: unknown split ''; expected one of"):
        Listed(tmp_path, "")
    with pytest.raises(DatasetError, match=r"Listed: split 'empty' of 'train\+empty' under .* yields no samples"):
        Listed(tmp_path, "train+empty")
    with pytest.raises(DatasetError, match=r"Listed: split 'empty' under .* yields no samples"):
        Listed(tmp_path, "empty")
    with pytest.raises(DatasetError, match=r"split 'val\+overlap' lists image .*v1.png in both 'val' and 'overlap'"):
        Listed(tmp_path, "val+overlap")
    with pytest.raises(DatasetError, match=r"split 'val\+test' joins labelled parts \['val'\] with unlabelled parts"):
        Listed(tmp_path, "val+test")


TRAIN_3 = [("train", 0), ("train", 1), ("train", 2)]


def test_every_dataset_accepts_split_unions(tmp_path: Path) -> None:
    camvid = CamVid(make_camvid(tmp_path), "val+train")
    assert _names(camvid) == [f"0001TP_{split}_{i:04d}.png" for split, i in [("val", 0), ("val", 1), *TRAIN_3]]
    assert _band_values(camvid[2]["label"], 12) == [*range(11), IGNORE_INDEX]

    ade = ADE20K(make_ade20k(tmp_path), "train+val")
    assert _names(ade) == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg", "ADE_val_00000001.jpg",
                           "ADE_val_00000002.jpg"]
    assert ade.samples[3][1].parent.name == "validation"

    voc_root = make_voc(tmp_path)
    voc = VOC(voc_root, "val+train")
    assert _names(voc) == [f"{n}.jpg" for n in VOC_VAL + VOC_TRAIN] and voc.split == "val+train"
    np.testing.assert_array_equal(voc[2]["label"].numpy(), voc_label(0))  # the first train image
    with pytest.raises(DatasetError, match=rf"split 'train\+trainval' lists image .*{VOC_TRAIN[0]}.jpg in both"):
        VOC(voc_root, "train+trainval")

    aug_sets = voc_root / "ImageSets" / "SegmentationAug"
    aug_sets.mkdir(parents=True)
    (aug_sets / "train_aug.txt").write_text("".join(f"{n}\n" for n in VOC_TRAIN))
    (aug_sets / "val.txt").write_text("".join(f"{n}\n" for n in VOC_VAL))
    shutil.copytree(voc_root / "SegmentationClass", voc_root / "SegmentationClassAug")
    aug = VOCAug(voc_root, "train+val")
    assert _names(aug) == [f"{n}.jpg" for n in VOC_TRAIN + VOC_VAL]
    assert aug.samples[0][1] == voc_root / "SegmentationClassAug" / f"{VOC_TRAIN[0]}.png"
    with pytest.raises(DatasetError, match=r"split 'train\+train_aug' lists image .* in both 'train' and 'train_aug'"):
        VOCAug(voc_root, "train+train_aug")  # an alias and its split are the same images


# ---------------------------------------------------------------- errors


def test_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="root not found: .*nowhere"):
        CamVid(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="root is empty: .*empty"):
        VOC(tmp_path / "empty")


def test_missing_and_empty_split(tmp_path: Path) -> None:
    root = make_camvid(tmp_path, {"train": 1})
    with pytest.raises(DatasetError, match=r"split file not found: .*val\.txt"):
        CamVid(root, "val")
    (root / "val.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"val\.txt lists no samples"):
        CamVid(root, "val")
    ade_root = make_ade20k(tmp_path, count=1)
    (ade_root / "images" / "validation" / "ADE_val_00000001.jpg").unlink()
    with pytest.raises(DatasetError, match="no \\*.jpg images .*validation"):
        ADE20K(ade_root, "val")
    with pytest.raises(DatasetError, match="leftImg8bit.*test"):
        Cityscapes(make_cityscapes(tmp_path), "test")


def test_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    root = make_camvid(tmp_path, {"train": 2})
    write_gray(root / "trainannot" / "0001TP_train_0001.png", np.zeros((10, 12), np.uint8))
    dataset = CamVid(root)
    dataset[0]
    with pytest.raises(DatasetError, match=r"0001TP_train_0001\.png is 32x24.*trainannot.*is 12x10"):
        dataset[1]


def test_out_of_range_label_value(tmp_path: Path) -> None:
    root = make_camvid(tmp_path, {"train": 1})
    write_gray(root / "trainannot" / "0001TP_train_0000.png", stripes_label([0, 3, 12, 40]))
    with pytest.raises(DatasetError, match=r"trainannot/0001TP_train_0000\.png has values \[12, 40\]"):
        CamVid(root)[0]


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    root = make_voc(tmp_path)
    (root / "JPEGImages" / f"{VOC_TRAIN[0]}.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    dataset = VOC(root)
    with pytest.raises(DatasetError, match=f"cannot read image file .*{VOC_TRAIN[0]}.jpg"):
        dataset[0]
    (root / "SegmentationClass" / f"{VOC_TRAIN[1]}.png").unlink()
    with pytest.raises(DatasetError, match=f"label file not found: .*{VOC_TRAIN[1]}.png"):
        dataset[1]  # removed after the dataset was built
    with pytest.raises(DatasetError, match=f"split 'train' lists 1 file.* do not exist: label .*{VOC_TRAIN[1]}.png"):
        VOC(root)
    png = tmp_path / "truncated.png"
    write_rgb(png, random_image(0, 64, 64))
    png.write_bytes(png.read_bytes()[:200])
    with pytest.raises(DatasetError, match="truncated.png"):
        load_image(png)
    write_rgb(tmp_path / "colour.png", random_image(0))
    with pytest.raises(DatasetError, match="colour.png has mode 'RGB'"):
        load_label(tmp_path / "colour.png")


def test_index_out_of_range(tmp_path: Path) -> None:
    dataset = CamVid(make_camvid(tmp_path, {"train": 2}))
    assert dataset[-1]["index"] == 1
    with pytest.raises(IndexError):
        dataset[2]


# ---------------------------------------------------------------- seeded augmentation


def test_index_seed_pairs_are_pure(tmp_path: Path) -> None:
    dataset = Cityscapes(make_cityscapes(tmp_path), "train", transform=build_train_transform((16, 16)))
    first = dataset[(1, 123)]
    dataset[(0, 5)]
    dataset[1]
    again = dataset[(1, 123)]
    assert first["index"] == again["index"] == 1
    assert first["image"].shape == (3, 16, 16) and first["image"].dtype == torch.float32
    assert first["label"].dtype == torch.long
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    others = [dataset[(1, seed)]["image"] for seed in range(1, 6)]
    assert any(not torch.equal(first["image"], other) for other in others)


def test_dataloader_collates_seeded_samples(tmp_path: Path) -> None:
    dataset = CamVid(make_camvid(tmp_path), transform=build_train_transform((16, 16)))
    batch = next(iter(DataLoader(dataset, batch_size=3, sampler=[(0, 1), (1, 2), (2, 3)])))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["label"].shape == (3, 16, 16)
    assert batch["index"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_splits_differ() -> None:
    train = SyntheticShapes("train", num_images=10)
    assert len(train) == 10 and train.num_classes == 6 and len(train.PALETTE) == 6
    a, b = train[3], SyntheticShapes("train", num_images=10)[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].shape == (3, 128, 128) and a["image"].dtype == torch.uint8
    val = SyntheticShapes("val", num_images=10)
    assert not torch.equal(a["image"], val[3]["image"])
    assert not torch.equal(a["image"], SyntheticShapes("train", num_images=10, seed=1)[3]["image"])
    with pytest.raises(IndexError):
        train[10]


def test_synthetic_split_union_holds_each_parts_scenes() -> None:
    train, val = SyntheticShapes("train", num_images=3), SyntheticShapes("val", num_images=3)
    union = SyntheticShapes("val+train", num_images=3)
    assert len(union) == 6 and union.split == "val+train" and union.has_labels
    for index, (part, within) in enumerate([(val, 0), (val, 1), (val, 2), (train, 0), (train, 1), (train, 2)]):
        assert torch.equal(union[index]["image"], part[within]["image"])
        assert torch.equal(union[index]["label"], part[within]["label"])
    with pytest.raises(IndexError):
        union[6]
    with pytest.raises(DatasetError, match=r"SyntheticShapes: split 'train\+train' lists 'train' more than once"):
        SyntheticShapes("train+train")
    with pytest.raises(DatasetError, match=r"SyntheticShapes: split 'train\+' has an empty part"):
        SyntheticShapes("train+")


def test_synthetic_scenes_hold_all_classes() -> None:
    dataset = SyntheticShapes("train", num_images=20, image_size=96)
    labels = torch.stack([dataset[i]["label"] for i in range(20)])
    assert labels.shape == (20, 96, 96)
    counts = torch.bincount(labels.flatten(), minlength=6)
    assert counts.numel() == 6 and bool((counts > 0).all())
    assert 0.5 < counts[0] / labels.numel() < 0.95  # background dominates but objects are many


def test_synthetic_with_seeded_train_transform() -> None:
    dataset = SyntheticShapes("train", num_images=4, transform=build_train_transform((96, 96)))
    first, again = dataset[(2, 9)], dataset[(2, 9)]
    assert first["image"].shape == (3, 96, 96)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])


def test_synthetic_generation_is_cheap() -> None:
    """About 1.5 ms per 128x128 scene on one core; the bound leaves room for a busy machine."""
    dataset = SyntheticShapes("val", num_images=60)
    dataset.load_sample(0)
    per_image = []
    for batch in range(3):
        start = time.perf_counter()
        for index in range(20 * batch, 20 * batch + 20):
            dataset.load_sample(index)
        per_image.append((time.perf_counter() - start) / 20)
    assert min(per_image) < 0.010
