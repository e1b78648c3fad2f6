"""Pyramid residual block ("Improving Residual Block for Semantic Image Segmentation", Sec. III, Fig. 2).

What it computes: it wraps a residual unit exposing ``residual(x)`` (the branch after its last BN, ``r``, C
channels) and ``shortcut(x)`` (BasicBlock, Bottleneck of :mod:`segexp.models.backbones.resnet`) and returns

    full (Sec. III-C):             relu(r * A + shortcut(x))          A = pyramid(r), element-wise product
    pyramid_only (Table III):      relu(r + P + shortcut(x))          P = pyramid(r), added instead
    attention_only (Table III):    relu(r * A' + shortcut(x))         A' = full-resolution attention(r)

* Pyramid pooling module (Sec. III-A): one branch per bin size b in ``bins`` ((1, 2, 4) in the paper;
  Table II also uses (1,), (1, 2), (1, 2, 4, 6)): AdaptiveAvgPool2d(b), a ReLU, 1x1 conv C -> D (with bias,
  "dimensionality reduction", 'Conv1' of Fig. 2, D = ``reduction``: 256 in the paper, Table I also 1024,
  512, 128), 1x1 conv D -> C (with bias, "recovering the original channel number"), sigmoid, bilinear
  upsampling (align_corners=False) to r's h x w. The branches' maps are summed: A in (0, len(bins)).
* Where the ReLU sits (``relu``). Sec. III-A lists a branch's layers as "one pooling layer, one ReLU
  activation function, two convolutional layers (1x1 convolution), one sigmoid function and one upsampling
  operation"; ``relu="after_pool"`` (the default) takes them in that order: pool -> ReLU -> conv -> conv ->
  sigmoid. Nothing then separates the two convs, so together they are one affine map whose weight
  ``W2 @ W1`` (C x C) has rank at most D: the reduction is a rank constraint, not a nonlinear bottleneck.
  ``relu="between_convs"`` is the SE-style reading (pool -> conv -> ReLU -> conv -> sigmoid, Hu et al.'s
  squeeze-and-excitation, which Sec. II compares with): Sec. III-B speaks of "the activation function after
  the second convolution" (sigmoid "instead of the frequently used ReLU"), and Table III's replacement is
  "one conv-relu and one conv-sigmoid". The parameter count is the same either way.
* pyramid_only, Sec. IV-C: "we remove element-wise multiplication, and add the feature maps from the pyramid
  pooling module to the feature maps from the identity branch". Read as: the pyramid module is unchanged,
  sigmoid included (Sec. III-A counts the sigmoid among each branch's layers, and the ablation retains that
  module), and only the product goes: its output P joins the sum of the residual unit, which keeps its own
  branch r (without r the unit would lose its residual function). The sigmoid makes P a bounded, positive
  (0, len(bins)) context term.
* attention_only, Sec. IV-C: the pyramid is replaced by "one conv-relu and one conv-sigmoid, while with the
  same number of parameters", at full resolution (no pooling, no upsampling). ``attention_maps="one"`` (the
  default) reads it literally: a 1x1 conv C -> nD (bias) -> ReLU -> a 1x1 conv nD -> C (bias) -> sigmoid,
  n = len(bins): ONE map A' in (0, 1), an "attention probability" map as Sec. III-B names it. Its hidden
  width nD is the pyramid's total reduction width; it has n * (2CD + D + C) - (n - 1) * C parameters, the
  pyramid's less (n - 1) * C (2C: 4,096 of 3,152,640 at C = 2048, D = 256, 0.13%). No hidden width makes the
  counts equal: (2C + 1) * H + C = n * (2CD + D + C) needs (2C + 1) * (H - nD) = (n - 1) * C, solvable only
  when 2C + 1 divides n - 1 (never for n = 2..4). ``attention_maps="per_level"`` keeps the pyramid's shape
  instead: the second conv is grouped (nD -> nC, n groups), each group a sigmoid map, the n maps summed, so
  A' has A's range (0, n) and exactly the pyramid's parameter count.

Parameters of the block besides the unit's: ``n * (C*D + D + D*C + C)`` in full and pyramid_only mode (and
attention_only with per-level maps); ``n * (2CD + D) + C`` in attention_only with one map.

Initialisation: the paper gives none; the new convs keep PyTorch's default init (``ResNet.wrap_unit`` wraps
after ImageNet weights are loaded), so at the start every sigmoid is near 1/2 and A is near len(bins) / 2.

Placement (Sec. IV-C, Table IV): ``ResNet(..., unit_wrappers={"res5c": partial(PyramidResidualBlock, ...)})``
or :meth:`ResNet.wrap_unit` by unit name: res5c, res4f, res4c (ResNet-50); res5c, res4b22, res4b19
(ResNet-101), see :mod:`segexp.models.backbones.unit_names`. The wrapped unit stays ``self.unit``, so
``ResNet.set_output_stride`` still reaches its convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.models.contracts import ResidualUnit

Mode = Literal["full", "pyramid_only", "attention_only"]
ReluPlace = Literal["after_pool", "between_convs"]
AttentionMaps = Literal["one", "per_level"]
MODES: tuple[str, ...] = get_args(Mode)
RELU_PLACES: tuple[str, ...] = get_args(ReluPlace)
ATTENTION_MAPS: tuple[str, ...] = get_args(AttentionMaps)
BRANCH_NORMS = ("bn3", "bn2")
"""The last BN of a unit's residual branch: Bottleneck's bn3 (it has a bn2 too, so bn3 is looked up first),
BasicBlock's bn2."""


def branch_channels(unit: nn.Module) -> int:
    """C: the channels of ``unit``'s residual branch, read (without running it) from its last BN's
    ``num_features`` (torch's BN or FrozenBatchNorm2d)."""
    for name in BRANCH_NORMS:
        norm = getattr(unit, name, None)
        if norm is not None and hasattr(norm, "num_features"):
            return int(norm.num_features)
    raise ValueError(f"PyramidResidualBlock: cannot tell the branch channels of {type(unit).__name__}: it has no "
                     f"last BN named {' or '.join(BRANCH_NORMS)} (Bottleneck, BasicBlock)")


def _check_choice(name: str, value: object, choices: tuple[str, ...], why: str) -> None:
    if value not in choices:
        raise ValueError(f"PyramidResidualBlock: {name} must be one of {', '.join(choices)} ({why}), got {value!r}")


def _check_arguments(reduction: int, bins: Sequence[int], mode: str, relu: str, attention_maps: str) -> tuple[int, ...]:
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"PyramidResidualBlock: reduction (channels of the dimensionality-reduction conv) must be "
                         f"an integer >= 1, got {reduction!r}")
    sizes = tuple(bins)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ValueError(f"PyramidResidualBlock: bins must be a non-empty list of positive integers (pooling bin "
                         f"sizes, e.g. [1, 2, 4]), got {list(sizes)}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"PyramidResidualBlock: bins must be distinct, got {list(sizes)}")
    _check_choice("mode", mode, MODES, "Table III")
    _check_choice("relu", relu, RELU_PLACES, "where a pyramid branch's ReLU sits")
    _check_choice("attention_maps", attention_maps, ATTENTION_MAPS, "Table III's attention_only: one sigmoid map "
                  "or one per pooling level, summed")
    return sizes


class PyramidBranch(nn.Module):
    """One pyramid level: avg pool to b x b, ReLU (``relu``: right after the pooling, or between the two
    convs), 1x1 conv C -> D, 1x1 conv D -> C, sigmoid, bilinear upsampling to the input's size."""

    def __init__(self, channels: int, reduction: int, bin_size: int, relu: ReluPlace = "after_pool") -> None:
        super().__init__()
        _check_choice("relu", relu, RELU_PLACES, "where a pyramid branch's ReLU sits")
        self.relu = relu
        self.pool = nn.AdaptiveAvgPool2d(bin_size)
        self.reduce = nn.Conv2d(channels, reduction, kernel_size=1)
        self.expand = nn.Conv2d(reduction, channels, kernel_size=1)

    def gate_logits(self, pooled: Tensor) -> Tensor:
        """The pre-sigmoid map of the pooled features (B, C, b, b)."""
        if self.relu == "after_pool":
            return self.expand(self.reduce(F.relu(pooled)))
        return self.expand(F.relu(self.reduce(pooled)))

    def forward(self, r: Tensor) -> Tensor:
        maps = torch.sigmoid(self.gate_logits(self.pool(r)))
        return F.interpolate(maps, size=r.shape[-2:], mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


class PyramidPooling(nn.Module):
    """Sec. III-A: the sum of the branches' maps, (B, C, h, w) -> (B, C, h, w) with values in (0, len(bins))."""

    def __init__(self, channels: int, reduction: int, bins: Sequence[int], relu: ReluPlace = "after_pool") -> None:
        super().__init__()
        self.branches = nn.ModuleList(PyramidBranch(channels, reduction, b, relu=relu) for b in bins)

    def forward(self, r: Tensor) -> Tensor:
        total = self.branches[0](r)
        for branch in self.branches[1:]:
            total = total + branch(r)
        return total


class FullResolutionAttention(nn.Module):
    """Table III's "only attention mechanism" at every pixel: 1x1 conv C -> nD + ReLU, then a 1x1 conv to one
    sigmoid map of C channels (``maps="one"``, values in (0, 1)), or a grouped 1x1 conv nD -> nC (n groups)
    whose n sigmoid maps are summed (``maps="per_level"``, values in (0, n), the pyramid's parameter count)."""

    def __init__(self, channels: int, reduction: int, groups: int, maps: AttentionMaps = "one") -> None:
        super().__init__()
        _check_choice("attention_maps", maps, ATTENTION_MAPS, "one sigmoid map or one per pooling level")
        self.groups = groups if maps == "per_level" else 1
        self.hidden = nn.Conv2d(channels, groups * reduction, kernel_size=1)
        self.gate = nn.Conv2d(groups * reduction, self.groups * channels, kernel_size=1, groups=self.groups)

    def forward(self, r: Tensor) -> Tensor:
        maps = torch.sigmoid(self.gate(F.relu(self.hidden(r))))
        if self.groups == 1:
            return maps
        return maps.unflatten(1, (self.groups, -1)).sum(dim=1)


class PyramidResidualBlock(nn.Module):
    """Wraps a residual unit (``residual(x)``, ``shortcut(x)``; kept as ``self.unit``); ``context`` maps the
    branch r to A (full, attention_only) or P (pyramid_only). ``relu`` places the pyramid branches' ReLU
    (module docstring); ``attention_maps`` shapes attention_only's replacement of the pyramid."""

    def __init__(self, unit: nn.Module, reduction: int = 256, bins: Sequence[int] = (1, 2, 4),
                 mode: Mode = "full", relu: ReluPlace = "after_pool", attention_maps: AttentionMaps = "one") -> None:
        super().__init__()
        self.bins = _check_arguments(reduction, bins, mode, relu, attention_maps)
        if not isinstance(unit, ResidualUnit):
            raise ValueError(f"PyramidResidualBlock wraps a residual unit with residual() and shortcut(), got "
                             f"{type(unit).__name__}")
        self.unit = unit
        self.channels = branch_channels(unit)
        self.reduction = reduction
        self.mode = mode
        self.relu_place = relu
        self.attention_maps = attention_maps
        self.context: nn.Module
        if mode == "attention_only":
            self.context = FullResolutionAttention(self.channels, reduction, groups=len(self.bins),
                                                   maps=attention_maps)
        else:
            self.context = PyramidPooling(self.channels, reduction, self.bins, relu=relu)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        r = self.unit.residual(x)
        if self.mode == "pyramid_only":
            return self.relu(r + self.context(r) + self.unit.shortcut(x))
        return self.relu(r * self.context(r) + self.unit.shortcut(x))

    def extra_repr(self) -> str:
        design = f"attention_maps={self.attention_maps}" if self.mode == "attention_only" else f"relu={self.relu_place}"
        return (f"channels={self.channels}, reduction={self.reduction}, bins={list(self.bins)}, mode={self.mode}, "
                f"{design}")
