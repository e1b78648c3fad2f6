"""Builders of tiny dataset trees in the official layout of each dataset (images written with PIL).

Each builder writes into a given folder and returns the dataset root plus what the tests need to know
about the written labels. Labels hold known raw values so that the label encodings can be checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from segexp.data.datasets.base import IGNORE_INDEX
from segexp.data.datasets.voc import VOC_PALETTE
from tests.helpers.runs import FAST_RUN

HEIGHT, WIDTH = 24, 32


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A random ``HxWx3`` uint8 RGB image."""
    return _rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_rgb(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    """Write an RGB image (PNG or JPEG from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="RGB").save(path, format=fmt)


def write_gray(path: Path, array: np.ndarray) -> None:
    """Write a single-channel uint8 PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)


def write_palette_png(path: Path, array: np.ndarray) -> None:
    """Write a VOC-style palette ("P") PNG whose indices are ``array``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    flat = [channel for colour in VOC_PALETTE for channel in colour]
    flat += [0] * (768 - len(flat))
    flat[255 * 3 : 256 * 3] = [224, 224, 192]
    image.putpalette(flat)
    image.save(path)


def stripes_label(values: list[int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A label whose column bands take ``values`` in order (every value appears)."""
    label = np.zeros((height, width), dtype=np.uint8)
    for i, band in enumerate(np.array_split(np.arange(width), len(values))):
        label[:, band] = values[i]
    return label


def make_camvid(tmp: Path, splits: dict[str, int] | None = None) -> Path:
    """SegNet CamVid layout; every label holds raw values 0..11 (11 = Unlabelled)."""
    root = tmp / "CamVid"
    splits = splits or {"train": 3, "val": 2}
    for split, count in splits.items():
        lines = []
        for i in range(count):
            name = f"0001TP_{split}_{i:04d}.png"
            write_rgb(root / split / name, random_image(i))
            write_gray(root / f"{split}annot" / name, stripes_label(list(range(12))))
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


VOC_TRAIN = ["2007_000001", "2007_000002", "2008_000003"]
VOC_VAL = ["2007_000010", "2008_000011"]


def voc_label(seed: int) -> np.ndarray:
    """A VOC label: background, two classes, and a 255 border around the object."""
    label = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    label[4:20, 4:14] = 255
    label[5:19, 5:13] = 1 + seed % 20
    label[5:19, 20:28] = 15
    return label


def make_voc(tmp: Path, train: list[str] | None = None, val: list[str] | None = None) -> Path:
    """``VOC2012`` layout with JPEG images, palette PNG labels and the Segmentation splits."""
    root = tmp / "VOCdevkit" / "VOC2012"
    train, val = train or VOC_TRAIN, val or VOC_VAL
    for i, name in enumerate(train + val):
        write_rgb(root / "JPEGImages" / f"{name}.jpg", random_image(i))
        write_palette_png(root / "SegmentationClass" / f"{name}.png", voc_label(i))
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (sets / "val.txt").write_text("".join(f"{n}\n" for n in val))
    (sets / "trainval.txt").write_text("".join(f"{n}\n" for n in train + val))
    return root


def sbd_label(seed: int) -> np.ndarray:
    """An SBD class label: values 0..20, no border."""
    label = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    label[2:12, 2:30] = 1 + seed % 20
    label[14:22, 10:20] = 20
    return label


def _sbd_boundaries(segmentation: np.ndarray) -> np.ndarray:
    """SBD's 20x1 cell array of sparse per-class boundary maps (empty here)."""
    cells = np.empty((20, 1), dtype=object)
    for i in range(20):
        cells[i, 0] = scipy.sparse.csc_matrix(segmentation.shape, dtype=bool)
    return cells


def make_sbd(tmp: Path, train: list[str], val: list[str], voc_root: Path | None = None) -> Path:
    """SBD ``dataset`` layout: ``cls/<id>.mat`` (``GTcls.Segmentation``), ``img/<id>.jpg``, splits.

    Images are also written to ``voc_root/JPEGImages`` (SBD images are a subset of VOC2012's).
    """
    root = tmp / "benchmark_RELEASE" / "dataset"
    (root / "cls").mkdir(parents=True)
    for i, name in enumerate(train + val):
        segmentation = sbd_label(i)
        struct = {
            "Segmentation": segmentation,
            "Boundaries": _sbd_boundaries(segmentation),
            "CategoriesPresent": np.unique(segmentation[segmentation > 0]).astype(np.uint8),
        }
        scipy.io.savemat(root / "cls" / f"{name}.mat", {"GTcls": struct})
        write_rgb(root / "img" / f"{name}.jpg", random_image(100 + i))
        if voc_root is not None and not (voc_root / "JPEGImages" / f"{name}.jpg").exists():
            write_rgb(voc_root / "JPEGImages" / f"{name}.jpg", random_image(100 + i))
    (root / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return root


def make_ade20k(tmp: Path, count: int = 2) -> Path:
    """``ADEChallengeData2016`` layout; labels hold raw values 0 (other), 1, 2 and 150."""
    root = tmp / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(count):
            name = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            write_rgb(root / "images" / split / f"{name}.jpg", random_image(i))
            write_gray(root / "annotations" / split / f"{name}.png", stripes_label([0, 1, 2, 150]))
    return root


CITYSCAPES_LABEL_IDS = [0, 1, 7, 8, 11, 24, 26, 33, 34]
"""Raw labelIds written to every Cityscapes fixture label (34 = an id beyond the table)."""


def make_cityscapes(
    tmp: Path,
    mode: str = "fine",
    splits: tuple[str, ...] = ("train", "val"),
    cities: tuple[str, ...] = ("aachen", "bremen"),
    label_ids: list[int] | None = None,
) -> Path:
    """Cityscapes layout (``leftImg8bit`` + ``gtFine``/``gtCoarse``), one image per city and split.

    Labels are column bands of ``label_ids`` (default :data:`CITYSCAPES_LABEL_IDS`); calling it again with
    the same ``tmp`` adds splits (e.g. coarse ``train_extra`` beside fine ``train``) to the same root.
    """
    root = tmp / "cityscapes"
    folder = "gtFine" if mode == "fine" else "gtCoarse"
    for split in splits:
        for i, city in enumerate(cities):
            stem = f"{city}_{i:06d}_000019"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_image(i))
            label_dir = root / folder / split / city
            write_gray(label_dir / f"{stem}_{folder}_labelIds.png", stripes_label(label_ids or CITYSCAPES_LABEL_IDS))
            write_gray(label_dir / f"{stem}_{folder}_instanceIds.png", np.zeros((HEIGHT, WIDTH)))
    return root


def cut_in_half(path: Path) -> None:
    """Keep the first half of ``path``'s bytes: a file cut short (a copy interrupted, a disk error)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


FOLDER_HEIGHT, FOLDER_WIDTH = 40, 48
"""The image size of the ``dataset=folder`` trees (larger than the official-layout fixtures: the folder runs train
a ResNet-18 at OS 8 on 40x48 crops)."""
NAMES = ["sky", "road", "car"]


PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128]]


VOID_COLOUR = [255, 255, 255]


FOLDER_RUN = [
    *(o for o in FAST_RUN if not o.startswith(("experiment=", "dataset."))),
    "backbone=resnet18", "backbone.output_stride=8", "head=aspp", "head.rates=[2,4,6]", "head.rates_output_stride=8",
    "trainer=cpu", "data.crop_size=[40,48]", "data.batch_size=2", "data.val_batch_size=1",
    "trainer.max_steps=3", "trainer.val_check_interval=3",
]  # fmt: skip
"""FAST_RUN's small CPU run (resnet18 + narrow ASPP, a few steps) on a folder dataset instead of the synthetic one."""


def make_folder(
    tmp: Path,
    kind: str = "index",
    splits: dict[str, int] | None = None,
    classes_file: str | None = "names: [sky, road, car]\n",
    sizes: list[tuple[int, int]] | None = None,
) -> Path:
    """``root/images/<split>/img<i>.jpg`` + ``root/masks/<split>/img<i>.png`` holding :func:`known_label` (as class
    ids, or as PALETTE colours for ``kind="colour"``) and a ``classes.yaml``; ``sizes`` cycles image sizes."""
    root = tmp / "mydata"
    for split, count in (splits or {"train": 4, "val": 2}).items():
        for i in range(count):
            height, width = (sizes or [(FOLDER_HEIGHT, FOLDER_WIDTH)])[i % len(sizes or [0])]
            write_rgb(root / "images" / split / f"img{i}.jpg", random_image(i, height, width))
            label = known_label(i % 3, height, width)
            if kind == "index":
                write_gray(root / "masks" / split / f"img{i}.png", label)
            else:
                write_rgb(root / "masks" / split / f"img{i}.png", as_colours(label))
    if classes_file is not None:
        (root / "classes.yaml").write_text(classes_file)
    return root


COLOUR_CLASSES = f"names: {NAMES}\npalette: {PALETTE}\nignore_colour: {VOID_COLOUR}\n"


def known_label(seed: int, height: int = FOLDER_HEIGHT, width: int = FOLDER_WIDTH) -> np.ndarray:
    """Class ids 0, 1, 2 in three column bands (shifted by ``seed``) and a void (255) top row."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[:, (width // 3 + seed) :] = 1
    label[:, (2 * width // 3 + seed) :] = 2
    label[0] = IGNORE_INDEX
    return label


def as_colours(label: np.ndarray) -> np.ndarray:
    """The colour mask of ``label``: each class in its PALETTE colour, void white."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = PALETTE
    lut[IGNORE_INDEX] = VOID_COLOUR
    return lut[label]
