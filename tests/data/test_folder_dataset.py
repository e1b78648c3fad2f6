"""``dataset=folder`` (segexp.data.datasets.folder): layouts, the two kinds of mask, the classes, bad input named by
file, and training a few steps on files the tests write."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segexp.cli.train import run_training
from segexp.config import compose_config
from segexp.data.datasets.base import IGNORE_INDEX, DatasetError
from segexp.data.datasets.folder import FolderDataset, configured_class
from segexp.data.datasets.voc import voc_colormap
from segexp.data.submission import palette_png
from segexp.training.build import build_datamodule, build_module, validate
from tests.helpers.data_files import (
    COLOUR_CLASSES,
    FOLDER_HEIGHT,
    FOLDER_RUN,
    FOLDER_WIDTH,
    NAMES,
    PALETTE,
    VOID_COLOUR,
    as_colours,
    known_label,
    make_folder,
    random_image,
    write_gray,
    write_rgb,
)

HEIGHT, WIDTH = FOLDER_HEIGHT, FOLDER_WIDTH

MODEL_BASE = ["backbone=resnet18", "backbone.output_stride=8", "trainer=cpu", "logger=csv", "data.num_workers=0",
              "data.crop_size=[40,48]", "data.batch_size=2"]
"""A model of each head and loss (their own settings) on the folder data, built but not trained."""










def labels_of(dataset: FolderDataset) -> list[np.ndarray]:
    return [dataset[i]["label"].numpy() for i in range(len(dataset))]


# ---------------------------------------------------------------------------------------------- layouts


def test_split_folders_pair_images_with_masks_and_read_the_classes_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    train = FolderDataset(root, "train")
    assert [image.name for image, _ in train.samples] == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"]
    assert train.samples[1][1] == root / "masks" / "train" / "img1.png"
    assert type(train).CLASSES == ("sky", "road", "car") and train.num_classes == 3
    palette = type(train).PALETTE
    assert palette == voc_colormap(3)  # no palette given: the VOC colour map draws the classes
    for i, label in enumerate(labels_of(train)):
        np.testing.assert_array_equal(label, known_label(i % 3))
    np.testing.assert_array_equal(train[2]["image"].permute(1, 2, 0).numpy(), np.asarray(Image.open(
        root / "images" / "train" / "img2.jpg").convert("RGB")))
    assert len(FolderDataset(str(root), "val")) == 2


def test_split_lists_name_images_with_or_without_suffix_and_in_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("a", "b", "city/c"):
        write_rgb(root / "images" / f"{name}.png", random_image(0, HEIGHT, WIDTH))
        write_gray(root / "masks" / f"{name}.png", known_label(0))
    (root / "train.txt").write_text("a\nb.png\n")
    (root / "val.txt").write_text("city/c\n")
    train = FolderDataset(root, "train", classes=NAMES)
    assert train.samples == [(root / "images" / "a.png", root / "masks" / "a.png"),
                             (root / "images" / "b.png", root / "masks" / "b.png")]
    val = FolderDataset(root, "val", classes=NAMES)
    assert val.samples == [(root / "images" / "city" / "c.png", root / "masks" / "city" / "c.png")]
    assert [len(FolderDataset(root, split, classes=NAMES)) for split in ("train+val", "val")] == [3, 1]


def test_classes_from_the_config_win_over_the_file_and_set_the_void_value(tmp_path: Path) -> None:
    root = make_folder(tmp_path, classes_file="names: [a, b, c]\nignore_value: 200\n")
    label = known_label(0)
    label[1] = 7  # 7: void by the config's ignore_value below
    write_gray(root / "masks" / "train" / "img0.png", label)
    dataset = FolderDataset(root, "train", classes=["x", "y", "z"], ignore_value=7)
    assert type(dataset).CLASSES == ("x", "y", "z")
    expected = known_label(0)
    expected[1] = IGNORE_INDEX
    np.testing.assert_array_equal(dataset[0]["label"].numpy(), expected)
    from_file = FolderDataset(root, "val")
    assert type(from_file).CLASSES == ("a", "b", "c") and from_file.SPEC.ignore_value == 200
    assert type(FolderDataset(root, "train")) is type(from_file)  # one class per set of classes


# ---------------------------------------------------------------------------------------------- colour masks


def test_colour_masks_are_mapped_through_the_palette(tmp_path: Path) -> None:
    root = make_folder(tmp_path, kind="colour", classes_file=COLOUR_CLASSES)
    dataset = FolderDataset(root, "train")
    palette = type(dataset).PALETTE
    assert palette == tuple(map(tuple, PALETTE))
    for i, label in enumerate(labels_of(dataset)):
        np.testing.assert_array_equal(label, known_label(i % 3))


def test_palette_masks_are_read_by_index_when_their_colours_agree_and_by_colour_when_not(tmp_path: Path) -> None:
    root = make_folder(tmp_path, classes_file=COLOUR_CLASSES)
    label = known_label(0)
    write = root / "masks" / "train" / "img0.png"
    palette_png(np.where(label == IGNORE_INDEX, 0, label), [tuple(c) for c in PALETTE]).save(write)
    agreeing = np.where(label == IGNORE_INDEX, 0, label)  # a VOC-style palette PNG: index = class id
    np.testing.assert_array_equal(FolderDataset(root, "train")[0]["label"].numpy(), agreeing)
    reordered = [PALETTE[2], PALETTE[0], VOID_COLOUR, PALETTE[1]]  # index -> colour, in another order
    to_index = np.array([1, 3, 0], dtype=np.uint8)  # class id -> index of its colour in `reordered`
    indices = np.where(label == IGNORE_INDEX, 2, to_index[np.minimum(label, 2)]).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([v for colour in reordered for v in colour])
    image.save(write)
    np.testing.assert_array_equal(FolderDataset(root, "train")[0]["label"].numpy(), label)


# ---------------------------------------------------------------------------------------------- bad input


def plant_missing_mask(root: Path) -> tuple[str, str]:
    mask = root / "masks" / "train" / "img1.png"
    mask.unlink()
    return "build", f"lists 1 file(s) that do not exist: label {mask}"


def plant_size_mismatch(root: Path) -> tuple[str, str]:
    mask = root / "masks" / "train" / "img1.png"
    write_gray(mask, known_label(0, HEIGHT + 2, WIDTH))
    image = root / "images" / "train" / "img1.jpg"
    return "load", f"size mismatch: image {image} is {WIDTH}x{HEIGHT} (WxH) but label {mask} is {WIDTH}x{HEIGHT + 2}"


def plant_value_outside_classes(root: Path) -> tuple[str, str]:
    mask = root / "masks" / "train" / "img1.png"
    label = known_label(0)
    label[5, 5] = 3  # classes are 0, 1, 2
    write_gray(mask, label)
    return "load", f"label file {mask} has values [3] outside [0, 3)"


def plant_missing_image(root: Path) -> tuple[str, str]:
    (root / "train.txt").write_text("train/img0\ntrain/gone\n")
    image, mask = root / "images" / "train" / "gone", root / "masks" / "train" / "gone.png"
    return "build", f"split 'train' lists 2 file(s) that do not exist: image {image}; label {mask}"


@pytest.mark.parametrize("plant", [plant_missing_mask, plant_size_mismatch, plant_value_outside_classes,
                                   plant_missing_image])
def test_bad_index_input_is_named(tmp_path: Path, plant: Callable[[Path], tuple[str, str]]) -> None:
    root = make_folder(tmp_path)
    when, message = plant(root)
    with pytest.raises(DatasetError, match=re.escape(message)):
        dataset = FolderDataset(root, "train")
        assert when == "load"
        dataset[1]


def test_a_colour_not_in_the_palette_is_named_with_its_file_and_pixels(tmp_path: Path) -> None:
    root = make_folder(tmp_path, kind="colour", classes_file=COLOUR_CLASSES)
    mask = root / "masks" / "train" / "img1.png"
    colours = as_colours(known_label(1))
    colours[3, 7] = (1, 2, 3)
    write_rgb(mask, colours)
    dataset = FolderDataset(root, "train")
    expected = f"label file {mask} has colour(s) (1, 2, 3) (1 px, first at x=7, y=3) not in the palette of classes file"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        dataset[1]
    no_palette = FolderDataset(root, "train", classes=NAMES)
    with pytest.raises(DatasetError, match=re.escape(f"label file {mask} is a colour image, but dataset.classes "
                                                     "gives no palette")):
        no_palette[1]


def test_skip_bad_samples_leaves_out_a_sample_with_a_foreign_colour(tmp_path: Path) -> None:
    root = make_folder(tmp_path, kind="colour", classes_file=COLOUR_CLASSES)
    colours = as_colours(known_label(1))
    colours[0, 0] = (9, 9, 9)
    write_rgb(root / "masks" / "train" / "img1.png", colours)
    dataset = FolderDataset(root, "train", skip_bad_samples=True)
    assert len(dataset) == 3 and [image.name for image, _ in dataset.skipped] == ["img1.jpg"]


@pytest.mark.parametrize(("classes_file", "message"), [
    (None, "no classes: set dataset.classes=[name0,name1,...] or write {root}/classes.yaml"),
    ("names: [a, b]\ncolours: []\n", "classes file {root}/classes.yaml has unknown key(s) ['colours']"),
    ("palette: [[0, 0, 0]]\n", "classes file {root}/classes.yaml has no 'names'"),
    ("names: [a, a]\n", "classes file {root}/classes.yaml: class name(s) ['a'] listed more than once"),
    ("names: [a, b]\npalette: [[0, 0, 0]]\n", "the palette must give one [R, G, B] per class (2 classes), got 1"),
    ("names: [a, b]\npalette: [[0, 0, 0], [0, 0, 0]]\n", "classes 'a' and 'b' have the same colour (0, 0, 0)"),
    ("names: [a, b]\npalette: [[0, 0, 0], [0, 0, 256]]\n", "palette entry 1 (b): expected a colour [R, G, B]"),
    ("names: [a, b]\nignore_value: 1\n", "ignore_value 1 is the id of class 'b'"),
    ("names: [a, b]\n  bad: indent\n", "cannot read classes file {root}/classes.yaml"),
])  # fmt: skip
def test_bad_classes_are_named_with_their_file(tmp_path: Path, classes_file: str | None, message: str) -> None:
    root = make_folder(tmp_path, classes_file=classes_file)
    with pytest.raises(DatasetError, match=re.escape(message.format(root=root))):
        FolderDataset(root, "train")


def test_a_missing_split_names_both_places_it_looked(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    expected = (f"FolderDataset: split 'test' not found under {root}: expected a folder {root / 'images' / 'test'}/ "
                f"(with its masks in {root / 'masks' / 'test'}/) or a list {root / 'test.txt'}")
    with pytest.raises(DatasetError, match=re.escape(expected)):
        FolderDataset(root, "test")
    with pytest.raises(DatasetError, match=re.escape("FolderDataset: dataset.root=<folder> is required")):
        FolderDataset(split="train")  # the partial of a config that left dataset.root=???


# ---------------------------------------------------------------------------------------------- in a run


def test_the_data_module_sees_the_folder_classes_and_instances_pickle(tmp_path: Path) -> None:
    import pickle

    root = make_folder(tmp_path, kind="colour", classes_file=COLOUR_CLASSES)
    cfg = compose_config(["dataset=folder", f"dataset.root={root}"])
    validate(cfg)
    datamodule = build_datamodule(cfg)
    assert datamodule.class_names == tuple(NAMES) and datamodule.palette == tuple(map(tuple, PALETTE))
    dataset = datamodule.split_dataset("train", train=False)
    assert type(dataset) is datamodule.dataset_class is configured_class(dataset.SPEC)
    copy = pickle.loads(pickle.dumps(dataset))
    assert type(copy) is type(dataset) and torch.equal(copy[1]["label"], dataset[1]["label"])


@pytest.mark.parametrize("kind", ["index", "colour"])
def test_a_folder_dataset_trains_a_few_steps(tmp_path: Path, make_cfg, kind: str) -> None:
    root = make_folder(tmp_path, kind=kind, classes_file=COLOUR_CLASSES)
    cfg = make_cfg("dataset=folder", f"dataset.root={root}", base=FOLDER_RUN)
    metrics = run_training(cfg)
    assert metrics["steps"] == 3 and metrics["val_images"] == 2
    assert set(metrics["per_class_iou"]) == set(NAMES)
    stored = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["segexp"]
    assert stored["class_names"] == NAMES


HEADS = ("aspp", "aspp_v2", "fcn", "largefov", "pac", "psp")


@pytest.mark.parametrize(("head", "loss"), [*((head, "ce") for head in HEADS), ("aspp", "bootstrap"), ("aspp", "bal")])
def test_every_head_and_loss_takes_a_folder_batch(tmp_path: Path, make_cfg, head: str, loss: str) -> None:
    root = make_folder(tmp_path, kind="colour", classes_file=COLOUR_CLASSES)
    cfg = make_cfg("dataset=folder", f"dataset.root={root}", f"head={head}", f"loss={loss}", base=MODEL_BASE)
    validate(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    outputs = module.raw_outputs(batch["image"])
    assert outputs["out"].shape[1] == 3
    assert torch.isfinite(module.output_loss(outputs["out"], batch))




def test_hard_image_bootstrapping_reads_colour_masks_through_the_palette(tmp_path: Path) -> None:
    """data.hard_classes reads every label once (segexp.data.bootstrapping): colour masks too, as training does."""
    from segexp.data.bootstrapping import image_classes

    colour = FolderDataset(make_folder(tmp_path / "c", kind="colour", classes_file=COLOUR_CLASSES), "train")
    index = FolderDataset(make_folder(tmp_path / "i", classes_file=COLOUR_CLASSES), "train")
    for i in range(len(colour)):
        expected = sorted(set(np.unique(known_label(i % 3)).tolist()) - {255})
        assert image_classes(colour, i) == image_classes(index, i) == expected
