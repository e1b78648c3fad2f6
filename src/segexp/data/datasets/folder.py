"""Your own data: a folder of images and masks, with the classes in the config or in a small YAML beside it.

Layout under ``root`` (``dataset.root``); ``images/`` and ``masks/`` are ``image_dir`` and ``mask_dir``::

    images/train/a.jpg   masks/train/a.png        a split is a folder: images/<split>/ (subfolders too) ...
    images/val/b.jpg     masks/val/b.png
    train.txt  val.txt                            ... or a list <split>.txt: one image per line, its path under
                                                  images/ with or without the suffix ("a", "a.jpg", "city/a")
    classes.yaml                                  the classes unless dataset.classes gives them

A list, when ``<split>.txt`` exists, wins over the folder. The mask of ``images/<path>.<ext>`` is
``masks/<path>.png`` (``mask_suffix``). ``classes.yaml`` (``classes_file``) holds ``names`` (one per class id) and
optionally ``palette`` (one ``[R, G, B]`` per class), ``ignore_value`` (the mask value of void pixels, default 255)
and ``ignore_colour`` (the colour of void pixels in colour masks); ``dataset.classes`` / ``palette`` /
``ignore_value`` / ``ignore_colour`` set in the config win over the file's.

Masks are read in one of two ways. An index mask (a single-channel PNG, or a palette PNG whose colours are the
class palette's for the indices it uses, as VOC's) holds class ids: ``ignore_value`` and 255 are void, any other
value outside ``[0, len(names))`` is an error. A colour mask (an RGB PNG, or a palette PNG whose colours are not
the class palette's in index order) is mapped through ``palette``: every colour must be a class's colour or the
``ignore_colour``. Each bad input raises the :class:`~segexp.data.datasets.base.DatasetError` the other datasets
give, naming the file: a missing image or mask, an image/mask size mismatch, a value outside the classes, a colour
outside the palette (see :mod:`segexp.data.datasets.base`).

The class names depend on the settings, not on the class: :meth:`FolderDataset.configured` gives the subclass
that holds them as ``CLASSES`` / ``PALETTE`` (one per distinct set of classes), and constructing
``FolderDataset(...)`` returns an instance of it, so code that reads ``type(dataset).PALETTE`` (submission PNGs)
or the data module's ``dataset_class`` (class names, palette) sees this data's classes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import numpy as np
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from segexp.data.datasets.base import (
    _PIL_ERRORS,
    IGNORE_INDEX,
    Colour,
    DatasetError,
    SegmentationDataset,
    apply_lut,
    check_label_palette,
    identity_lut,
    load_image,
    read_split_file,
)
from segexp.data.datasets.voc import voc_colormap

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes read as images (any case) when a split folder is listed or a list entry has no suffix."""
CLASSES_FILE_KEYS: tuple[str, ...] = ("names", "palette", "ignore_value", "ignore_colour")
MAX_CLASSES = IGNORE_INDEX
"""Class ids are stored in uint8 labels beside the ignore value 255: at most 255 classes."""


@dataclass(frozen=True)
class ClassSpec:
    """The classes of a folder dataset: names (index = class id), the palette of colour masks (None: index masks
    only), the void mask value and the void colour, and where they were read from (for messages)."""

    names: tuple[str, ...]
    palette: tuple[Colour, ...] | None = None
    ignore_value: int = IGNORE_INDEX
    ignore_colour: Colour | None = None
    source: str = "dataset.classes"

    @property
    def display_palette(self) -> tuple[Colour, ...]:
        """The colours that draw each class: the palette, else the VOC colour map of as many classes."""
        return self.palette if self.palette is not None else voc_colormap(len(self.names))


# ------------------------------------------------------------------------------------------------ the classes


def read_classes_file(path: Path) -> dict[str, Any]:
    """The mapping of ``classes.yaml``; raise :class:`DatasetError` naming the file when it is unreadable, not a
    mapping or has a key other than :data:`CLASSES_FILE_KEYS`."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DatasetError(f"cannot read classes file {path}: {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"classes file {path} must be a mapping with 'names' (and optionally 'palette', "
                           f"'ignore_value', 'ignore_colour'), got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in CLASSES_FILE_KEYS)
    if unknown:
        raise DatasetError(f"classes file {path} has unknown key(s) {unknown}; valid keys: {list(CLASSES_FILE_KEYS)}")
    return data


def check_names(names: Any, where: str) -> tuple[str, ...]:
    """``names`` as a tuple after checking it lists 1..255 distinct non-empty strings."""
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetError(f"{where}: the class names must be a non-empty list, got {names!r}")
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{where}: {len(names)} classes; at most {MAX_CLASSES} fit beside the ignore value "
                           f"{IGNORE_INDEX}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: class name {name!r} is not a non-empty string")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"{where}: class name(s) {repeated} listed more than once")
    return tuple(names)


def check_colour(colour: Any, where: str) -> Colour:
    """``colour`` as an ``(R, G, B)`` tuple after checking it is three integers in 0..255."""
    if (not isinstance(colour, (list, tuple)) or len(colour) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
        raise DatasetError(f"{where}: expected a colour [R, G, B] of integers in 0..255, got {colour!r}")
    return int(colour[0]), int(colour[1]), int(colour[2])


def check_palette(palette: Any, names: tuple[str, ...], where: str) -> tuple[Colour, ...]:
    """One distinct colour per class."""
    if not isinstance(palette, (list, tuple)) or len(palette) != len(names):
        count = len(palette) if isinstance(palette, (list, tuple)) else palette
        raise DatasetError(f"{where}: the palette must give one [R, G, B] per class ({len(names)} classes), got "
                           f"{count!r}")
    colours = tuple(check_colour(c, f"{where}: palette entry {i} ({names[i]})") for i, c in enumerate(palette))
    for i, colour in enumerate(colours):
        first = colours.index(colour)
        if first != i:
            raise DatasetError(f"{where}: classes {names[first]!r} and {names[i]!r} have the same colour {colour}; "
                               "each class needs its own colour")
    return colours


def class_spec(
    names: Any, palette: Any = None, ignore_value: Any = None, ignore_colour: Any = None, source: str = ""
) -> ClassSpec:
    """A checked :class:`ClassSpec`; ``source`` names where the values came from in every error."""
    names = check_names(names, source)
    colours = check_palette(palette, names, source) if palette is not None else None
    if ignore_value is None:
        ignore_value = IGNORE_INDEX
    if not isinstance(ignore_value, int) or isinstance(ignore_value, bool) or not 0 <= ignore_value <= 255:
        raise DatasetError(f"{source}: ignore_value must be an integer mask value in 0..255, got {ignore_value!r}")
    if ignore_value < len(names):
        raise DatasetError(f"{source}: ignore_value {ignore_value} is the id of class {names[ignore_value]!r}; the "
                           f"void value must not be a class id (class ids are 0..{len(names) - 1})")
    void = check_colour(ignore_colour, f"{source}: ignore_colour") if ignore_colour is not None else None
    if void is not None and colours is not None and void in colours:
        raise DatasetError(f"{source}: ignore_colour {void} is the colour of class {names[colours.index(void)]!r}")
    return ClassSpec(names, colours, ignore_value, void, source)


def resolve_class_spec(
    root: Path,
    classes: Sequence[str] | None,
    palette: Sequence[Sequence[int]] | None,
    ignore_value: int | None,
    ignore_colour: Sequence[int] | None,
    classes_file: str,
) -> ClassSpec:
    """The classes from the config (``dataset.classes`` and friends) or, when the config lists none, from the
    classes file beside the data; config values that are set win over the file's."""
    given = {"palette": palette, "ignore_value": ignore_value, "ignore_colour": ignore_colour}
    given = {key: _plain(value) for key, value in given.items() if value is not None}
    if classes is not None:
        return class_spec(_plain(classes), source="dataset.classes", **given)
    path = root / classes_file
    if not path.is_file():
        raise DatasetError(
            f"FolderDataset: no classes: set dataset.classes=[name0,name1,...] or write {path} with 'names: [...]' "
            "(and optionally 'palette: [[R,G,B], ...]', 'ignore_value', 'ignore_colour')"
        )
    data = read_classes_file(path)
    if "names" not in data:
        raise DatasetError(f"classes file {path} has no 'names' (the class names, index = class id)")
    values = {key: data.get(key) for key in ("palette", "ignore_value", "ignore_colour")} | given
    return class_spec(data["names"], source=f"classes file {path}", **values)


def _plain(value: Any) -> Any:
    """A config's list (an OmegaConf ListConfig) as a plain list; other values as they are."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (ListConfig, DictConfig)) else value


# ------------------------------------------------------------------------------------------------ the masks


def colour_codes(colours: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours -> one int32 ``0xRRGGBB`` code each."""
    colours = colours.astype(np.int32)
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


def colours_to_ids(rgb: np.ndarray, spec: ClassSpec, path: Path) -> np.ndarray:
    """``(H, W, 3)`` mask colours -> ``(H, W)`` uint8 class ids through ``spec.palette`` (void colour ->
    IGNORE_INDEX); raise :class:`DatasetError` naming the file and the first few colours outside the palette."""
    assert spec.palette is not None
    colours = list(spec.palette) + ([spec.ignore_colour] if spec.ignore_colour is not None else [])
    ids = np.array([*range(len(spec.palette)), IGNORE_INDEX][: len(colours)], dtype=np.uint8)
    keys = colour_codes(np.asarray(colours, dtype=np.uint8))
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    codes = colour_codes(rgb)
    position = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
    found = keys[position] == codes
    if not found.all():
        raise DatasetError(unknown_colours_message(codes, found, spec, path))
    return ids[position]


def unknown_colours_message(codes: np.ndarray, found: np.ndarray, spec: ClassSpec, path: Path) -> str:
    """Which colours of a mask are no class's colour: each with its pixel count and first pixel (x, y)."""
    unknown, first, counts = np.unique(codes[~found], return_index=True, return_counts=True)
    rows, cols = np.nonzero(~found)
    shown = []
    for code, index, count in list(zip(unknown.tolist(), first.tolist(), counts.tolist()))[:5]:
        colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
        shown.append(f"{colour} ({count} px, first at x={cols[index]}, y={rows[index]})")
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    void = f"; void colour {spec.ignore_colour}" if spec.ignore_colour is not None else "; no ignore_colour set"
    return (f"label file {path} has colour(s) {', '.join(shown)}{more} not in the palette of {spec.source} "
            f"({len(spec.names)} classes{void})")


def mask_is_colour(path: Path, palette: Sequence[Colour] | None) -> bool:
    """Whether the mask at ``path`` is read by its colours: an RGB(A) image, or a palette PNG whose colours are not
    ``palette``'s for the indices it uses. Unreadable files answer False (the index reader then names the error)."""
    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA"):
                return True
            if image.mode != "P" or palette is None:
                return False
            image.load()
            try:
                check_label_palette(image, palette, path)
            except DatasetError:
                return True
            return False
    except (FileNotFoundError, *_PIL_ERRORS):
        return False


def load_colour_mask(path: Path) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 colours of a colour mask (alpha dropped); :class:`DatasetError` naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise DatasetError(f"label file not found: {path}") from err
    except _PIL_ERRORS as err:
        raise DatasetError(f"cannot read label file {path}: {err}") from err


def check_same_size(image: np.ndarray, image_path: Path, label: np.ndarray, label_path: Path) -> None:
    """Raise :class:`DatasetError` naming both files when the mask is not the image's size."""
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but label "
            f"{label_path} is {label.shape[1]}x{label.shape[0]}"
        )


# ------------------------------------------------------------------------------------------------ the listing


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_image_folder(folder: Path) -> list[Path]:
    """The image files under ``folder`` (subfolders too), sorted by their path."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / name for name in files if is_image_file(Path(name))]
    return sorted(found)


def image_of_entry(images: Path, entry: str, split_file: Path, number: int) -> Path:
    """The image a split-list line names: ``images/<entry>`` when it has an image suffix, else the one file
    ``images/<entry>.<suffix>``; an entry without a file is returned as ``images/<entry>`` (the listing check then
    names it)."""
    relative = Path(entry.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(f"{split_file}:{number}: {entry!r} must be a path under {images}")
    if relative.suffix.lower() in IMAGE_SUFFIXES:
        return images / relative
    folder = (images / relative).parent
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    candidates = sorted(folder / name for name in names
                        if Path(name).stem == relative.name and Path(name).suffix.lower() in IMAGE_SUFFIXES)
    if len(candidates) > 1:
        raise DatasetError(f"{split_file}:{number}: {entry!r} matches several images: "
                           f"{', '.join(str(c) for c in candidates)}; list it with its suffix")
    return candidates[0] if candidates else images / relative


# ------------------------------------------------------------------------------------------------ the dataset


class FolderDataset(SegmentationDataset):
    """Images and masks in ``image_dir`` / ``mask_dir`` under ``root``, split by folders or by ``<split>.txt``
    lists; the classes from ``classes`` (and ``palette``, ``ignore_value``, ``ignore_colour``) or from
    ``root/<classes_file>``. See the module docstring for the layout and the two kinds of mask."""

    SPEC: ClassVar[ClassSpec | None] = None
    """The classes of a configured subclass (:meth:`configured`); None on this generic class."""

    def __new__(cls, root: str | Path | None = None, *args: Any, **settings: Any) -> FolderDataset:
        if cls.SPEC is None:  # the generic class: an instance of the subclass configured with these classes
            cls = cls.configured(root=root, **settings)
        return super().__new__(cls)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: A.Compose | None = None,
        skip_bad_samples: bool = False,
        *,
        classes: list[str] | None = None,
        palette: list[list[int]] | None = None,
        ignore_value: int | None = None,
        ignore_colour: list[int] | None = None,
        classes_file: str = "classes.yaml",
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_suffix: str = ".png",
    ) -> None:
        assert self.SPEC is not None  # __new__ made this an instance of a configured subclass
        self.image_dir, self.mask_dir, self.mask_suffix = image_dir, mask_dir, mask_suffix
        self._lut = identity_lut()
        self._lut[self.SPEC.ignore_value] = IGNORE_INDEX
        super().__init__(root, split, transform, skip_bad_samples)

    @classmethod
    def configured(
        cls,
        root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_value: int | None = None,
        ignore_colour: Sequence[int] | None = None,
        classes_file: str = "classes.yaml",
        **other_settings: Any,
    ) -> type[FolderDataset]:
        """The subclass holding the classes these settings give (one class per distinct :class:`ClassSpec`):
        ``CLASSES``, ``PALETTE`` (for drawing: the palette, else VOC's colour map) and ``LABEL_PALETTE`` (the
        palette that palette-PNG index masks must agree with). Reads the classes file when the config lists no
        classes; settings that do not define classes (``split``, ``image_dir``, ...) are passed over."""
        if root is None:  # dataset.root=??? left unset (Hydra leaves a missing value out of a partial)
            raise DatasetError("FolderDataset: dataset.root=<folder> is required: the folder holding images/, masks/ "
                               "and classes.yaml")
        spec = resolve_class_spec(Path(root).expanduser(), classes, palette, ignore_value, ignore_colour,
                                  classes_file)
        return configured_class(spec)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (spawned loader workers, DDP) as its class's spec and its state: the subclass is made at run time."""
        return (_new_configured, (self.SPEC,), self.__dict__)

    # -------------------------------------------------------------------------------------------- listing
    def list_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """``(image, mask)`` pairs of ``<root>/<split>.txt`` when it exists, else of ``images/<split>/``."""
        images = self.root / self.image_dir
        split_file = self.root / f"{split}.txt"
        if split_file.is_file():
            paths = [image_of_entry(images, entry, split_file, number)
                     for number, entry in enumerate(read_split_file(split_file), start=1)]
        elif (images / split).is_dir():
            paths = list_image_folder(images / split)
            if not paths:
                raise DatasetError(f"FolderDataset: split folder {images / split} holds no images "
                                   f"({', '.join(IMAGE_SUFFIXES)})")
        else:
            raise DatasetError(
                f"FolderDataset: split {split!r} not found under {self.root}: expected a folder {images / split}/ "
                f"(with its masks in {self.root / self.mask_dir / split}/) or a list {split_file}"
            )
        return [(path, self.mask_of(path)) for path in paths]

    def mask_of(self, image: Path) -> Path:
        """``<mask_dir>/<path under image_dir without its suffix><mask_suffix>``."""
        relative = image.relative_to(self.root / self.image_dir).with_suffix("")
        return self.root / self.mask_dir / f"{relative}{self.mask_suffix}"

    # -------------------------------------------------------------------------------------------- loading
    def encode_label(self, label: np.ndarray) -> np.ndarray:
        """Index masks: ``ignore_value`` becomes IGNORE_INDEX, class ids stay."""
        return apply_lut(label, self._lut)

    def read_label(self, index: int) -> np.ndarray:
        """Index masks as the other datasets read them; a colour mask through the palette (with its image, for the
        size check)."""
        label_path = self.samples[index][1]
        if label_path is None or not mask_is_colour(label_path, self.LABEL_PALETTE):
            return super().read_label(index)
        return self.load_sample(index)[1]

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Index masks as the other datasets read them (:meth:`SegmentationDataset.load_sample`); colour masks
        mapped through the palette."""
        image_path, label_path = self.samples[index]
        if label_path is None or not mask_is_colour(label_path, self.LABEL_PALETTE):
            return super().load_sample(index)
        assert self.SPEC is not None
        if self.SPEC.palette is None:
            raise DatasetError(
                f"label file {label_path} is a colour image, but {self.SPEC.source} gives no palette: add "
                "'palette: [[R,G,B], ...]' (one colour per class), or save the masks as single-channel PNGs of "
                "class ids"
            )
        image = load_image(image_path)
        colours = load_colour_mask(label_path)
        check_same_size(image, image_path, colours, label_path)
        return image, colours_to_ids(colours, self.SPEC, label_path)


@functools.cache
def configured_class(spec: ClassSpec) -> type[FolderDataset]:
    """The :class:`FolderDataset` subclass of one set of classes (the same class for the same spec)."""
    attributes = {
        "SPEC": spec,
        "CLASSES": spec.names,
        "PALETTE": spec.display_palette,
        "LABEL_PALETTE": spec.palette,
        "__module__": __name__,
        "__doc__": f"FolderDataset of {len(spec.names)} classes from {spec.source}.",
    }
    return type("FolderDataset", (FolderDataset,), attributes)


def _new_configured(spec: ClassSpec) -> FolderDataset:
    """An empty instance of the subclass of ``spec`` (unpickling restores its state)."""
    return object.__new__(configured_class(spec))
