"""Common machinery of every segmentation dataset: file loading, label validation, seeded transforms.

A dataset is a list of ``(image path, label path)`` pairs plus a per-dataset mapping from raw label
values to training ids (``encode_label``); void pixels are mapped to :data:`IGNORE_INDEX`. A split may be
a union of the dataset's splits joined by ``+`` (``"train+val"``): the samples of each part, in order.
Indexing with ``(index, seed)`` re-seeds the albumentations pipeline first, so the augmented sample is a
pure function of the pair, which is what makes resumed training bit-exact.

Bad input fails with a :class:`DatasetError` naming the file: when the dataset is built for what the listing
shows (an empty split file, an id listed twice, a listed image or label that does not exist), when the
sample is loaded for what only decoding shows (a truncated or unreadable image, a label of another size than
its image, a label value that is no class, a 16-bit label beyond 0..255, a palette label whose colours are
not the dataset's). ``skip_bad_samples=True`` instead decodes every sample once when the dataset is built and
leaves out (and counts, and logs) those that fail; see :class:`SegmentationDataset`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segexp.labels import IGNORE_INDEX

"""The single label value ignored by losses and metrics, project-wide."""

log = logging.getLogger(__name__)

_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
Colour = tuple[int, int, int]


class DatasetError(ValueError):
    """A dataset file, folder or split is missing, unreadable or inconsistent; the message names it."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``HxWx3`` uint8 RGB array; raise :class:`DatasetError` naming the file.

    Every image is decoded in full, so a truncated or corrupt file fails here (Pillow's
    ``LOAD_TRUNCATED_IMAGES`` is left off: a half-grey image would be trained on silently). Images that are not
    RGB are converted rather than rejected, since they are valid photographs a user would rather train on:
    a grayscale ("L") image gives its grey value in all three channels, a palette image its colours, an
    RGBA image its colours without the alpha channel, a CMYK JPEG its RGB conversion.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as err:
        raise DatasetError(f"image file not found: {path}") from err
    except _PIL_ERRORS as err:
        raise DatasetError(f"cannot read image file {path}: {err}") from err


def load_label(path: str | Path, palette: Sequence[Colour] | None = None) -> np.ndarray:
    """Read a single-channel label image as an ``HxW`` uint8 array of raw values.

    Palette ("P") PNGs give their palette indices (the class ids of VOC), grayscale PNGs their values.
    Colour label images are rejected: they need an explicit colour-to-id mapping. With ``palette`` (the
    colours of a dataset whose label files are palette PNGs, index = class id), a palette PNG must give every
    index it uses below ``len(palette)`` that colour; one that does not (a label re-quantised from a colour
    image, or painted with another dataset's palette) is rejected, since its indices are not class ids.
    16- and 32-bit labels are read when every value fits in 0..255 (class ids stored at a larger depth) and
    rejected otherwise. Every error is a :class:`DatasetError` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                im = im.convert("L")
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(f"label file {path} has mode {im.mode!r}; expected a single-channel image")
            if im.mode == "P" and palette is not None:
                check_label_palette(im, palette, path)
            mode = im.mode
            label = np.array(im)
    except FileNotFoundError as err:
        raise DatasetError(f"label file not found: {path}") from err
    except DatasetError:
        raise
    except _PIL_ERRORS as err:
        raise DatasetError(f"cannot read label file {path}: {err}") from err
    if label.dtype != np.uint8 and label.size:
        low, high = int(label.min()), int(label.max())
        if low < 0 or high > 255:
            bits = 16 if mode.startswith("I;16") else 32
            raise DatasetError(
                f"label file {path} is a {bits}-bit image (mode {mode!r}) with values in [{low}, {high}]; "
                "expected class ids in 0..255 (save labels as 8-bit single-channel PNGs)"
            )
        label = label.astype(np.uint8)
    return label


def check_label_palette(image: Image.Image, palette: Sequence[Colour], path: Path) -> None:
    """Raise :class:`DatasetError` unless every index below ``len(palette)`` that the palette ("P") label
    ``image`` uses has the colour ``palette`` gives that class."""
    colours = image.getpalette("RGB") or []
    used = sorted(index for _, index in image.getcolors(256) or [])
    for index in used:
        if index >= len(palette):
            continue  # no class: check_label_values reports it (or it is IGNORE_INDEX)
        got = tuple(colours[3 * index : 3 * index + 3])
        if got != tuple(palette[index]):
            shown = f"colour {got}" if len(got) == 3 else "no colour"
            raise DatasetError(
                f"label file {path} is a palette PNG whose index {index} has {shown}, not the dataset's "
                f"colour {tuple(palette[index])} of class {index}; its palette is not the dataset's, so its "
                "indices are not class ids (a label re-saved from colours?)"
            )


def apply_lut(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw label values through a 256-entry lookup table.

    Values outside ``[0, 256)`` (possible in 16-bit label files) are passed through unchanged so that
    validation reports them.
    """
    if label.dtype == np.uint8:
        return lut[label]
    values = label.astype(np.int64)
    inside = (values >= 0) & (values < len(lut))
    out = values.copy()
    out[inside] = lut[values[inside]]
    return out


def identity_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table mapping every value to itself (start point for label maps)."""
    return np.arange(256, dtype=np.uint8)


def read_split_file(path: Path) -> list[str]:
    """Non-blank, stripped lines of a split file; raise :class:`DatasetError` naming the file if it is
    missing, unreadable or empty, or if it lists a line twice (naming the entry and both line numbers)."""
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    try:
        numbered = [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), start=1)]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read split file {path}: {err}") from err
    first: dict[str, int] = {}
    for number, line in numbered:
        if line and line in first:
            raise DatasetError(
                f"split file {path} lists {line!r} more than once (lines {first[line]} and {number}); "
                "every sample must be listed once"
            )
        first.setdefault(line, number)
    lines = [line for _, line in numbered if line]
    if not lines:
        raise DatasetError(f"split file {path} lists no samples")
    return lines


def check_split(split: str, allowed: Iterable[str], dataset: str) -> None:
    """Raise :class:`DatasetError` unless ``split`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if split not in allowed:
        raise DatasetError(f"{dataset}: unknown split {split!r}; expected one of {allowed}")


SPLIT_UNION = "+"
"""Joins the parts of a split union: ``"train+val+train_extra"``."""


def split_parts(split: str, dataset: str) -> list[str]:
    """The parts of a split union ``"a+b+c"`` in order (a plain split is its only part).

    Raise :class:`DatasetError` naming ``split`` when a part is empty (``"train+"``) or repeated
    (``"train+train"``).
    """
    parts = split.split(SPLIT_UNION)
    if len(parts) > 1 and not all(parts):
        raise DatasetError(
            f"{dataset}: split {split!r} has an empty part; join split names with '{SPLIT_UNION}', e.g. 'train+val'"
        )
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise DatasetError(f"{dataset}: split {split!r} lists {', '.join(map(repr, repeated))} more than once")
    return parts


def check_root(root: Path, dataset: str) -> None:
    """Raise :class:`DatasetError` unless ``root`` is an existing, non-empty folder; the message gives the
    normalised path and the two ways of pointing segexp at the data."""
    where = os.path.normpath(os.path.abspath(root))
    hint = ("point segexp at the data with SEGEXP_DATA_DIR=<folder holding the datasets> or "
            f"dataset.root=<path of the {dataset} folder>")
    if not root.is_dir():
        raise DatasetError(f"{dataset}: dataset root not found: {where}; {hint}")
    if not any(root.iterdir()):
        raise DatasetError(f"{dataset}: dataset root is empty: {where}; {hint}")


def check_label_values(label: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """Return ``label`` as uint8 after checking every value is in ``[0, num_classes)`` or IGNORE_INDEX."""
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        counts[IGNORE_INDEX] = 0
        bad = np.flatnonzero(counts[num_classes:]) + num_classes
    else:
        values = np.unique(label)
        bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DatasetError(
            f"label file {path} has values [{shown}] outside [0, {num_classes}) and the ignore value "
            f"{IGNORE_INDEX} (after encode_label)"
        )
    return label.astype(np.uint8, copy=False)


def check_disjoint(listed: dict[str, list[tuple[Path, Path | None]]], split: str, dataset: str) -> None:
    """Raise :class:`DatasetError` naming the image and both parts if two parts of ``split`` list one image."""
    owner: dict[Path, str] = {}
    for part, samples in listed.items():
        for image, _ in samples:
            if image in owner:
                raise DatasetError(
                    f"{dataset}: split {split!r} lists image {image} in both {owner[image]!r} and {part!r}; "
                    "a union's parts must not overlap"
                )
            owner[image] = part


def check_listed(samples: Sequence[tuple[Path, Path | None]], where: str, dataset: str, exist: bool = True) -> None:
    """Raise :class:`DatasetError` naming ``where`` (``"split 'train'"``) and the files if it lists an image
    twice or, with ``exist``, a file (image, or label when there is one) that does not exist.

    Existence is checked by listing each folder once, not by a ``stat`` per file: cheap on large splits.
    """
    first: dict[Path, int] = {}
    for number, (image, _) in enumerate(samples):
        if image in first:
            raise DatasetError(
                f"{dataset}: {where} lists image {image} more than once (samples {first[image]} and {number}); "
                "every sample must be listed once"
            )
        first[image] = number
    if not exist:
        return
    folders: dict[Path, set[str]] = {}
    missing = []
    for image, label in samples:
        for kind, path in (("image", image), ("label", label)):
            if path is None:
                continue
            if path.parent not in folders:
                try:
                    folders[path.parent] = set(os.listdir(path.parent))
                except OSError:
                    folders[path.parent] = set()
            if path.name not in folders[path.parent]:
                missing.append(f"{kind} {path}")
    if missing:
        shown = "; ".join(missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetError(
            f"{dataset}: {where} lists {len(missing)} file(s) that do not exist: {shown} (restore them, "
            "fix the split, or leave such samples out with dataset.skip_bad_samples=true)"
        )


def check_uniformly_labelled(listed: dict[str, list[tuple[Path, Path | None]]], split: str, dataset: str) -> None:
    """Raise :class:`DatasetError` if ``split`` joins labelled parts with unlabelled (test-server) ones."""
    unlabelled = [part for part, samples in listed.items() if all(label is None for _, label in samples)]
    if unlabelled and len(unlabelled) < len(listed):
        labelled = [part for part in listed if part not in unlabelled]
        raise DatasetError(
            f"{dataset}: split {split!r} joins labelled parts {labelled} with unlabelled parts {unlabelled}; "
            "evaluate or train on them separately"
        )


def parse_item(item: int | tuple[int, int] | Sequence[int]) -> tuple[int, int | None]:
    """Split a dataset key into ``(index, seed)``; a plain index has no seed."""
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise TypeError(f"dataset key must be an index or an (index, seed) pair, got {item!r}")
        return int(item[0]), int(item[1])
    if isinstance(item, torch.Tensor):
        return int(item.item()), None
    return int(item), None


def to_tensors(image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Image as a ``[3,H,W]`` tensor (dtype kept) and label as a long ``[H,W]`` tensor."""
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))
    if not isinstance(label, torch.Tensor):
        label = torch.from_numpy(np.ascontiguousarray(label))
    return image, label.long()


class SegmentationDataset(Dataset):
    """A list of (image, label) files with a label encoding, returning seeded-augmentation samples.

    Subclasses set ``CLASSES`` and ``PALETTE``, implement :meth:`list_samples` and, when raw label values
    are not already training ids, :meth:`encode_label`. A split published without annotations (a test-server
    split) lists ``None`` as its label paths; its labels are all IGNORE_INDEX and :attr:`has_labels` is False.

    ``split`` may be a union ``"a+b+c"`` of the dataset's splits: the samples are those of each part, in the
    given order, and ``self.split`` keeps the whole string. Every part must yield samples, no image may be
    listed by two parts, and labelled and unlabelled parts cannot be mixed (their union would be scored
    on part of its images only).

    Bad input (see the module docstring) raises :class:`DatasetError` naming the file: what the listing shows
    when the dataset is built, what decoding shows when the sample is loaded. With ``skip_bad_samples=True``
    (``dataset.skip_bad_samples=true``) the dataset instead decodes and checks every listed sample once when
    it is built (in threads; a full read of the split, meant for crawled data rather than curated
    benchmarks), leaves out those that raise :class:`DatasetError`, keeps the reasons in :attr:`skipped` and
    logs ``skipped N bad samples of split ...: <first few reasons>``. It fails only when no sample is left.
    Evaluating such a split scores the kept images only. Files added or damaged after that pass still raise
    when loaded. A split file that lists an id twice is an error in both modes.

    ``LABEL_PALETTE``: the colours that palette ("P") label files must give the class indices they use (the
    official VOC labels); ``None`` (the default) leaves the palette of label files unchecked.

    Indexing with ``index`` or ``(index, seed)`` returns ``{"image", "label", "index"}``; with a seed the
    transform is re-seeded with exactly ``seed`` first (the caller derives a per-sample seed, e.g. from
    the epoch seed and the index). With a transform ending in ``ToTensorV2`` the image is the normalised
    float tensor ``[3,H,W]``; without a transform it is the raw uint8 ``[3,H,W]`` tensor. The label is
    always a long ``[H,W]`` tensor with void = :data:`IGNORE_INDEX`.
    """

    CLASSES: ClassVar[tuple[str, ...]] = ()
    PALETTE: ClassVar[tuple[tuple[int, int, int], ...]] = ()
    LABEL_PALETTE: ClassVar[tuple[tuple[int, int, int], ...] | None] = None

    @classmethod
    def configured(cls, **settings: Any) -> type[SegmentationDataset]:
        """The dataset class that the config node's ``settings`` describe, asked before any sample is read (the
        data module takes ``CLASSES`` and ``PALETTE`` from it). Datasets with fixed classes are their own class;
        one whose classes are settings (``dataset=folder``) returns the class holding them."""
        return cls

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: A.Compose | None = None,
        skip_bad_samples: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self._skip_bad_samples = bool(skip_bad_samples)
        self.skipped: list[tuple[Path, str]] = []
        """``(image path, reason)`` of each sample left out by ``skip_bad_samples``."""
        check_root(self.root, type(self).__name__)
        self.samples: list[tuple[Path, Path | None]] = self.list_union(split)
        if self._skip_bad_samples:
            self.drop_bad_samples()

    @property
    def num_classes(self) -> int:
        """Number of training classes (labels are in ``[0, num_classes)`` or IGNORE_INDEX)."""
        return len(self.CLASSES)

    @property
    def has_labels(self) -> bool:
        """False for a split published without annotations (every label path is None), e.g. VOC "test"."""
        return any(label is not None for _, label in self.samples)

    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """The ``(image path, label path or None)`` pairs of one (plain) ``split`` under ``self.root``."""
        raise NotImplementedError

    def list_union(self, split: str) -> list[tuple[Path, Path | None]]:
        """The samples of each part of ``split`` (see :func:`split_parts`), concatenated in order."""
        name = type(self).__name__
        parts = split_parts(split, name)
        listed: dict[str, list[tuple[Path, Path | None]]] = {}
        for part in parts:
            try:
                listed[part] = self.list_samples(part)
            except DatasetError as err:
                if len(parts) == 1:
                    raise
                raise DatasetError(f"{err} (in split {split!r})") from err
            if not listed[part]:
                where = f"split {part!r} of {split!r}" if len(parts) > 1 else f"split {split!r}"
                raise DatasetError(f"{name}: {where} under {self.root} yields no samples")
        if len(parts) > 1:
            check_disjoint(listed, split, name)
            check_uniformly_labelled(listed, split, name)
        for part in parts:
            where = f"split {part!r} of {split!r}" if len(parts) > 1 else f"split {split!r}"
            check_listed(listed[part], where, name, exist=not self._skip_bad_samples)  # else drop_bad_samples
        return [sample for part in parts for sample in listed[part]]

    def drop_bad_samples(self) -> None:
        """Load every sample once; leave out those that raise :class:`DatasetError` (``skip_bad_samples``)."""

        def problem(index: int) -> str | None:
            try:
                self.load_sample(index)
            except DatasetError as err:
                return str(err)
            return None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(problem, range(len(self.samples))))
        name = type(self).__name__
        self.skipped = [(sample[0], reason) for sample, reason in zip(self.samples, problems) if reason]
        if not self.skipped:
            return
        shown = "; ".join(reason for _, reason in self.skipped[:3]) + ("; ..." if len(self.skipped) > 3 else "")
        kept = [sample for sample, reason in zip(self.samples, problems) if reason is None]
        if not kept:
            raise DatasetError(
                f"{name}: all {len(self.samples)} samples of split {self.split!r} under {self.root} are bad: {shown}"
            )
        log.warning("%s: skipped %d bad samples of split %r (%d kept): %s", name, len(self.skipped), self.split,
                    len(kept), shown)
        self.samples = kept

    def encode_label(self, label: np.ndarray) -> np.ndarray:
        """Map raw label values to training ids (void -> IGNORE_INDEX); identity by default."""
        return label

    def read_label(self, index: int) -> np.ndarray:
        """Sample ``index``'s label in training ids, reading only the label file when there is one (the hard-image
        bootstrapping reads every label once); a dataset whose labels need more than the file overrides it."""
        label_path = self.samples[index][1] if self.samples else None
        if label_path is None:
            return self.load_sample(index)[1]
        raw = load_label(label_path, self.LABEL_PALETTE)
        return check_label_values(self.encode_label(raw), self.num_classes, label_path)

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read, check and encode sample ``index``: ``(HxWx3 uint8 image, HxW uint8 label)``."""
        image_path, label_path = self.samples[index]
        image = load_image(image_path)
        if label_path is None:  # unannotated (test-server) split
            return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        raw = load_label(label_path, self.LABEL_PALETTE)
        if image.shape[:2] != raw.shape[:2]:
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but label "
                f"{label_path} is {raw.shape[1]}x{raw.shape[0]}"
            )
        return image, check_label_values(self.encode_label(raw), self.num_classes, label_path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = parse_item(item)
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {size}")
        index %= size
        image, label = self.load_sample(index)
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        image_t, label_t = to_tensors(image, label)
        return {"image": image_t, "label": label_t, "index": index}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, classes={self.num_classes})"
