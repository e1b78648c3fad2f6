"""Reading pretrained weight files shared by the backbones (and heads initialised from ImageNet classifiers).

What it computes: the state dict held by a ``torch.save``-d file (torchvision format, or wrapped under
``state_dict`` / ``model``), read on the CPU with ``weights_only=True``, and a short printable summary of
a list of state-dict keys for error messages. Each caller checks names and shapes against its own model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def key_summary(keys: Sequence[str], limit: int = 20) -> str:
    """``keys`` joined by commas, cut after ``limit`` with the total count."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def read_state_dict(path: str | os.PathLike[str]) -> Mapping[str, Tensor]:
    """The state dict in ``path``. Raises FileNotFoundError for a missing file and ValueError naming the file
    when it holds something else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {os.fspath(path)}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{os.fspath(path)} does not hold a state dict (got {type(loaded).__name__})")
    return loaded
