"""What each part of a segmentor must provide: the contracts of backbones, heads and fusions, as Protocols.

The segmentor (:mod:`segexp.models.segmentor`) and the builder (:mod:`segexp.models.build`) rely on these
members and on nothing else; a new part plugged in from a config (``_target_``) needs only to provide them
(structural typing: no base class to inherit). In the manner of segmentation_models.pytorch's encoders, which
declare ``out_channels`` and ``output_stride``, a backbone declares the features it returns so that the builder
derives every head's input channels from it instead of repeating them in YAML.

Required contracts (the builder refuses a part without them, naming the part and the missing members):

* :class:`Backbone` -- ``forward(images) -> {name: features}``, ``feature_channels`` (channels of each name),
  ``output_stride`` (current) and ``set_output_stride`` (the hole algorithm, DeepLabv3 Sec. 3.1; a
  fixed-geometry trunk raises a ValueError for any other stride). ResNet and VGG16 also give ``out_channels``
  (= ``feature_channels["out"]``) and ``feature_strides()``; nothing here relies on them.
* :class:`Head` -- ``forward(features) -> logits``, on the features named by its ``in_keys`` (one tensor for
  one key, else a list in ``in_keys`` order; ``"out"`` without ``in_keys``). The builder passes
  ``in_channels``, ``num_classes`` and ``output_stride`` to its constructor.
* :class:`Fusion` -- ``forward(logits, features) -> logits``: the per-scale logits on one grid and each scale's
  features (the backbone's, plus ``"head"`` when it reads the head's).
* :class:`ReadsFeatures` -- ``in_keys``, of a head or fusion whose config node names ``in_keys`` (else the
  segmentor would hand it ``"out"`` or nothing, whatever the node says).

Optional capabilities, each asked by an ``isinstance`` check on its Protocol:

* :class:`FollowsOutputStride` -- ``set_output_stride``: a head or fusion without it cannot run at another
  output stride, and the segmentor raises, naming it, rather than evaluating a different model.
* :class:`ExposesFeatures` -- ``forward_features`` / ``classify`` / ``feature_channels``: a head whose
  penultimate features a fusion can read as ``"head"`` (fc7 of DeepLab-LargeFOV for attention to scale).
* :class:`ScaleWeighting` -- ``scale_weights``: a fusion that weighs the scales per pixel (attention), whose
  weights the dashboards show.
* :class:`ShiftablePasses` -- ``last_strided_stage`` / ``dense_last_stride``: a backbone that can run the
  shifted passes of FCRN Sec. 3.2 (:mod:`segexp.models.shifted_passes`).
* :class:`ResidualUnit` -- ``residual`` / ``shortcut``: a residual unit a block or dropout wrapper can wrap.

Every member is a method, a property or a plain attribute, never a submodule or parameter: Python >= 3.12
looks members up statically (``inspect.getattr_static``), which does not see ``nn.Module``'s registered
children. :func:`missing_members` looks them up the same way and :func:`check_contract` turns a refusal into a
:class:`ContractError` naming the part, the contract and what it lacks.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = [
    "Backbone",
    "ContractError",
    "ExposesFeatures",
    "FollowsOutputStride",
    "Fusion",
    "Head",
    "ReadsFeatures",
    "ResidualUnit",
    "ScaleWeighting",
    "ShiftablePasses",
    "check_contract",
    "contract_members",
    "feature_keys",
    "missing_members",
]


@runtime_checkable
class FollowsOutputStride(Protocol):
    """A part whose geometry follows the output stride (same weights, other dilations)."""

    def set_output_stride(self, output_stride: int) -> None:
        """Re-configure for ``output_stride``; a ValueError naming it when the part cannot run there."""
        ...


@runtime_checkable
class ReadsFeatures(Protocol):
    """A head or fusion that reads the backbone features named by ``in_keys`` (and ``"head"`` for a fusion
    reading the head's penultimate features)."""

    in_keys: tuple[str, ...]


@runtime_checkable
class Backbone(FollowsOutputStride, Protocol):
    """A trunk returning named feature maps, and describing them before it runs."""

    output_stride: int
    """The current output stride: input pixels per pixel of ``"out"``."""
    feature_channels: Mapping[str, int]
    """Channels of every feature name ``forward`` returns (``"out"``, the last stage, included)."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``(B, C, H, W)`` images to ``{name: (B, feature_channels[name], h, w)}``."""
        ...


@runtime_checkable
class Head(Protocol):
    """Logits at the grid of the features it reads (those named by its ``in_keys``, :class:`ReadsFeatures`)."""

    def forward(self, features: Tensor | list[Tensor]) -> Tensor:
        """``(B, num_classes, h, w)`` logits from the ``in_keys`` features (a list for several keys)."""
        ...


@runtime_checkable
class ExposesFeatures(Protocol):
    """A head split in two, ``forward(x) == classify(forward_features(x))``, so its penultimate features can be
    read by a fusion (``"head"``)."""

    feature_channels: int
    """Channels of :meth:`forward_features`' output (the classifier's input)."""

    def forward_features(self, features: Tensor) -> Tensor:
        """The classifier's input, ``(B, feature_channels, h, w)``."""
        ...

    def classify(self, features: Tensor) -> Tensor:
        """Logits from :meth:`forward_features`' output."""
        ...


@runtime_checkable
class Fusion(Protocol):
    """Several scale streams to one output (DeepLab-V2's MSC, attention to scale)."""

    def forward(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]]) -> Tensor:
        """The S per-scale logits ``(B, C, h, w)`` on one grid and each scale's features to one ``(B, C, h, w)``."""
        ...


@runtime_checkable
class ScaleWeighting(Protocol):
    """A fusion that weighs the scale streams per pixel."""

    def scale_weights(self, logits: Sequence[Tensor], features: Sequence[dict[str, Tensor]]) -> Tensor:
        """``(B, S, h, w)`` weights of the S scales on the logits' grid."""
        ...


@runtime_checkable
class ShiftablePasses(Protocol):
    """A backbone that can evaluate its last strided layer densely at one of four offsets (FCRN Sec. 3.2)."""

    def last_strided_stage(self) -> str:
        """The stage holding the last stride; a ValueError when none after the stem strides."""
        ...

    def dense_last_stride(self, offset: tuple[int, int]) -> AbstractContextManager[None]:
        """Within the context, the last strided layer runs densely and keeps the rows/columns from ``offset``."""
        ...


@runtime_checkable
class ResidualUnit(Protocol):
    """A residual unit, ``forward(x) = relu(residual(x) + shortcut(x))``, that a wrapper can take apart."""

    def residual(self, x: Tensor) -> Tensor:
        """The residual branch, before it is added to the shortcut."""
        ...

    def shortcut(self, x: Tensor) -> Tensor:
        """The identity, subsampled identity or projection the branch is added to."""
        ...


class ContractError(ValueError):
    """A part that does not provide a contract; a ValueError, so the builder reports it as a config error."""


def contract_members(contract: type) -> tuple[str, ...]:
    """The public members a Protocol declares (its own and those of the Protocols it extends), in order."""
    members: dict[str, None] = {}
    for cls in reversed(contract.__mro__):
        if cls is object or cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        for name in (*getattr(cls, "__annotations__", {}), *vars(cls)):
            if not name.startswith("_"):
                members[name] = None
    return tuple(members)


_ABSENT = object()


def missing_members(part: object, contract: type) -> list[str]:
    """The members of ``contract`` that ``part`` lacks, looked up statically (as ``isinstance`` does)."""
    return [name for name in contract_members(contract) if inspect.getattr_static(part, name, _ABSENT) is _ABSENT]


def check_contract(part: object, contract: type, name: str) -> None:
    """Raise a :class:`ContractError` naming ``name`` (e.g. ``"head"``), the part's class, the contract and the
    members it lacks, unless ``part`` provides ``contract``."""
    if isinstance(part, contract):
        return
    lacking = missing_members(part, contract) or list(contract_members(contract))
    raise ContractError(
        f"{name} ({type(part).__name__}) does not provide the {contract.__name__} contract "
        f"({', '.join(contract_members(contract))}): it lacks {', '.join(lacking)}"
    )


def feature_keys(part: object, default: tuple[str, ...]) -> tuple[str, ...]:
    """The feature names ``part`` reads: its ``in_keys`` (:class:`ReadsFeatures`), else ``default``."""
    return tuple(part.in_keys) if isinstance(part, ReadsFeatures) else default
