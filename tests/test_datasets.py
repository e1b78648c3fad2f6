"""Dataset loaders on tiny official-layout fixture trees: label encodings, errors, seeded augmentation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segexp.datasets.ade20k import ADE20K
from segexp.datasets.base import IGNORE_INDEX, DatasetError, load_image, load_label
from segexp.datasets.camvid import CamVid
from segexp.datasets.cityscapes import TRAIN_ID_LUT, Cityscapes
from segexp.datasets.sbd import aug_splits, convert_sbd, main
from segexp.datasets.synthetic import SyntheticShapes
from segexp.datasets.transforms import build_eval_transform, build_train_transform
from segexp.datasets.voc import VOC, VOCAug
from tests.fixtures import (
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
    root = make_cityscapes(tmp_path, mode="coarse", splits=("train_extra",))
    dataset = Cityscapes(root, "train_extra", mode="coarse")
    assert dataset.samples[0][1].name.endswith("_gtCoarse_labelIds.png")
    assert dataset[0]["label"].shape == (HEIGHT, WIDTH)
    with pytest.raises(DatasetError, match="unknown split 'train_extra'"):
        Cityscapes(root, "train_extra", mode="fine")
    with pytest.raises(DatasetError, match="unknown mode"):
        Cityscapes(root, "train", mode="medium")


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
    (root / "SegmentationClass" / f"{VOC_TRAIN[1]}.png").unlink()
    dataset = VOC(root)
    with pytest.raises(DatasetError, match=f"cannot read image file .*{VOC_TRAIN[0]}.jpg"):
        dataset[0]
    with pytest.raises(DatasetError, match=f"label file not found: .*{VOC_TRAIN[1]}.png"):
        dataset[1]
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
