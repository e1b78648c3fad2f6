"""Hard-image bootstrapping: training images that contain a "hard" class are drawn several times per epoch.

DeepLabv3 Sec. 4.3 ("Test set result and an effective bootstrapping method"): for the VOC test-server
model, "we duplicate the images that contain hard classes (namely bicycle, chair, table, pottedplant, and
sofa) in the training set". Here ``data.hard_classes`` names the classes and ``data.hard_repeat`` is how
many copies in total each such image gets per epoch (2 = duplicated); :func:`sample_repeats` gives the
per-image copy counts that :class:`segexp.data.datamodule.SeededSampler` expands into its epoch.

Which classes an image contains is read from its encoded label once (:func:`class_presence`) and cached as
JSON in ``<dataset root>/.segexp_cache/<split>_classes_<key>.json`` (``key`` = a hash of the dataset class,
its scalar settings and the label file names, so different datasets sharing a root never collide), or in a
fallback folder (the run dir) when the root is not writable or the dataset has no files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segexp import atomic
from segexp.data.datasets.base import IGNORE_INDEX, SegmentationDataset

log = logging.getLogger(__name__)

CACHE_FOLDER = ".segexp_cache"


def hard_class_ids(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Indices of ``names`` in ``class_names``; an unknown name raises naming it and the valid names."""
    ids = []
    for name in names:
        if name not in class_names:
            raise ValueError(
                f"data.hard_classes: unknown class {name!r}; valid classes: {', '.join(class_names)}"
            )
        ids.append(list(class_names).index(name))
    return ids


def sample_repeats(presence: Sequence[Sequence[int]], hard_ids: Sequence[int], hard_repeat: int) -> list[int]:
    """Copies per epoch of each image: ``hard_repeat`` if it contains any of ``hard_ids``, else 1."""
    if hard_repeat < 1:
        raise ValueError(f"data.hard_repeat must be >= 1 (copies of each hard image in total), got {hard_repeat}")
    hard = set(hard_ids)
    return [hard_repeat if hard.intersection(classes) else 1 for classes in presence]


def image_classes(dataset: SegmentationDataset, index: int) -> list[int]:
    """The sorted class ids present in sample ``index``'s label (void excluded)."""
    counts = np.bincount(dataset.read_label(index).ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    return np.flatnonzero(counts).tolist()


def cache_identity(dataset: SegmentationDataset) -> dict[str, Any]:
    """What the cached presence depends on: dataset class, scalar settings, classes, label file names."""
    root = Path(dataset.root) if getattr(dataset, "root", None) is not None else None
    settings = {
        key: value for key, value in sorted(vars(dataset).items())
        if isinstance(value, (bool, int, float, str)) and not key.startswith("_")
    }
    labels = [
        str(Path(label).relative_to(root)) if root and label is not None else str(label)
        for _, label in dataset.samples
    ]
    return {
        "dataset": type(dataset).__name__,
        "settings": settings,
        "classes": list(dataset.CLASSES),
        "num_samples": len(dataset),
        "labels": labels,
    }


def cache_file_name(identity: dict[str, Any]) -> str:
    """``<split>_classes_<8 hex digits of the identity's hash>.json``."""
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{identity['settings'].get('split', 'data')}_classes_{digest}.json"


def cache_folders(dataset: SegmentationDataset, fallback: Path | None) -> list[Path]:
    """Candidate cache folders in order: ``<root>/.segexp_cache`` (datasets with a root), then ``fallback``."""
    folders = []
    if getattr(dataset, "root", None) is not None:
        folders.append(Path(dataset.root) / CACHE_FOLDER)
    if fallback is not None:
        folders.append(Path(fallback))
    return folders


def read_cache(path: Path, identity: dict[str, Any]) -> list[list[int]] | None:
    """The cached presence lists of ``path`` if the file exists, parses and has the same identity."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("identity") != identity:
        return None
    presence = payload.get("present")
    if not isinstance(presence, list) or len(presence) != identity["num_samples"]:
        return None
    return presence


def write_cache(path: Path, identity: dict[str, Any], presence: list[list[int]]) -> bool:
    """Write the cache atomically (:mod:`segexp.atomic`); False when the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, {"identity": identity, "present": presence}, indent=None)
    except OSError as err:
        log.info("cannot write class-presence cache %s (%s)", path, err)
        return False
    return True


def class_presence(dataset: SegmentationDataset, fallback_dir: Path | None = None) -> list[list[int]]:
    """For every sample of ``dataset``, the class ids its label contains (read once, then cached)."""
    identity = cache_identity(dataset)
    name = cache_file_name(identity)
    folders = cache_folders(dataset, fallback_dir)
    for folder in folders:
        cached = read_cache(folder / name, identity)
        if cached is not None:
            return cached
    log.info("reading %d labels of %s to find the classes of each image", len(dataset), dataset)
    presence = [image_classes(dataset, index) for index in range(len(dataset))]
    for folder in folders:
        if write_cache(folder / name, identity, presence):
            break
    return presence
