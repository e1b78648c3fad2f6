"""Names of a ResNet's residual units in the two conventions papers use, and their mapping.

- torchvision: ``layer<s>.<i>`` -- stage ``s`` (1..4, then 5..7 for DeepLabv3's extra blocks), unit ``i``
  counted from 0;
- Caffe / MSRA (the released ResNet prototxts that DeepLab, FCRN and the pyramid-residual-block paper name
  their units by): ``res<s+1><suffix>`` for the four ImageNet stages. The first unit of a stage is ``a``.
  ResNet-101 and ResNet-152 number the other units of stages 3 and 4 ``b1, b2, ...`` (``res4b22`` is
  ResNet-101's last unit of layer3 = ``layer3.22``); every other stage, and every stage of ResNet-18/34/50,
  continues with letters (``res4f`` = ResNet-50's ``layer3.5``, ``res5c`` = ``layer4.2``).

Extra blocks (layer5+) have torchvision-style names only.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

NUMBERED_DEPTHS = (101, 152)
"""Depths whose stages 3 and 4 (layer2, layer3) are numbered a, b1, b2, ... in the MSRA prototxts."""


def caffe_suffix(depth: int, stage: int, index: int) -> str:
    """The MSRA suffix of unit ``index`` (from 0) of ImageNet stage ``stage`` (1..4 = layer1..layer4)."""
    if index == 0:
        return "a"
    if depth in NUMBERED_DEPTHS and stage in (2, 3):
        return f"b{index}"
    return string.ascii_lowercase[index]


def unit_names(depth: int, units_per_stage: Sequence[int]) -> dict[str, tuple[int, int]]:
    """Every accepted unit name -> (stage from 1, unit index from 0): torchvision names for every stage,
    Caffe/MSRA names for the four ImageNet stages."""
    names: dict[str, tuple[int, int]] = {}
    for stage, count in enumerate(units_per_stage, start=1):
        for index in range(count):
            names[f"layer{stage}.{index}"] = (stage, index)
            if stage <= 4:
                names[f"res{stage + 1}{caffe_suffix(depth, stage, index)}"] = (stage, index)
    return names


def resolve_unit(name: str, depth: int, units_per_stage: Sequence[int]) -> tuple[int, int]:
    """(stage, index) of ``name``; a ValueError lists the valid names of this ResNet when it is unknown."""
    names = unit_names(depth, units_per_stage)
    if name not in names:
        caffe = [n for n in names if n.startswith("res")]
        raise ValueError(
            f"unknown residual unit {name!r} for ResNet-{depth}: use torchvision names layer<stage>.<index> "
            f"(layer1.0 .. layer{len(units_per_stage)}.{units_per_stage[-1] - 1}) or Caffe/MSRA names "
            f"({', '.join(caffe)})"
        )
    return names[name]
