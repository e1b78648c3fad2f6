"""Pyramid residual block ("Improving Residual Block for Semantic Image Segmentation", Sec. III, Fig. 2).

What it computes: it wraps a residual unit exposing ``residual(x)`` (the branch after its last BN, ``r``, C
channels) and ``shortcut(x)`` (BasicBlock, Bottleneck of :mod:`segexp.models.backbones.resnet`) and returns

    full (Sec. III-C):             relu(r * A + shortcut(x))          A = pyramid(r), element-wise product
    pyramid_only (Table III):      relu(r + P + shortcut(x))          P = pyramid(r), added instead
    attention_only (Table III):    relu(r * A' + shortcut(x))         A' = full-resolution attention(r)

* Pyramid pooling module (Sec. III-A): one branch per bin size b in ``bins`` ((1, 2, 4) in the paper;
  Table II also uses (1,), (1, 2), (1, 2, 4, 6)): AdaptiveAvgPool2d(b) -> ReLU -> 1x1 conv C -> D (with bias,
  "dimensionality reduction", 'Conv1' of Fig. 2, D = ``reduction``: 256 in the paper, Table I also 1024,
  512, 128) -> 1x1 conv D -> C (with bias, "recovering the original channel number") -> sigmoid -> bilinear
  upsampling (align_corners=False) to r's h x w. The branches' maps are summed: A in (0, len(bins)).
  The text lists a branch's layers without fixing their order; they are taken in the order listed (ReLU
  right after pooling, nothing between the two convs).
* pyramid_only, Sec. IV-C: "we remove element-wise multiplication, and add the feature maps from the pyramid
  pooling module to the feature maps from the identity branch". Read as: the pyramid module is unchanged,
  sigmoid included (Sec. III-A counts the sigmoid among each branch's layers, and the ablation retains that
  module), and only the product goes: its output P joins the sum of the residual unit, which keeps its own
  branch r (without r the unit would lose its residual function). The sigmoid makes P a bounded, positive
  (0, len(bins)) context term.
* attention_only, Sec. IV-C: the pyramid is replaced by "one conv-relu and one conv-sigmoid, while with the
  same number of parameters", at full resolution (no pooling, no upsampling): a 1x1 conv C -> nD (bias)
  -> ReLU (between the convs, as "conv-relu" says; the pyramid has its ReLU after pooling) -> a grouped
  1x1 conv nD -> nC with n groups (bias) -> sigmoid, the n groups of C maps summed, n = len(bins). Each
  group is one pyramid branch's second conv and sigmoid, so A' has A's range (0, n) and the parameter count
  is the pyramid's exactly, n * (2CD + D + C), for every C and D. A plain (ungrouped) conv nD -> C with
  bias would be (n - 1) * C short, and no hidden width H evens it: (2C + 1) * H + C = n * (2CD + D + C)
  means (2C + 1) * (H - nD) = (n - 1) * C, solvable only when 2C + 1 divides n - 1 (never for n = 2..4).

Parameters of the block besides the unit's: ``n * (C*D + D + D*C + C)`` in every mode.

Initialisation: the paper gives none; the new convs keep PyTorch's default init (``ResNet.wrap_unit`` wraps
after ImageNet weights are loaded), so at the start every sigmoid is near 1/2 and A is near len(bins) / 2.

Placement (Sec. IV-C, Table IV): ``ResNet(..., unit_wrappers={"res5c": partial(PyramidResidualBlock, ...)})``
or :meth:`ResNet.wrap_unit` by unit name: res5c, res4f, res4c (ResNet-50); res5c, res4b22, res4b19
(ResNet-101), see :mod:`segexp.models.backbones.unit_names`. The wrapped unit stays ``self.unit``, so
``ResNet.set_output_stride`` still reaches its convs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("full", "pyramid_only", "attention_only")
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


def _check_arguments(reduction: int, bins: Sequence[int], mode: str) -> tuple[int, ...]:
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"PyramidResidualBlock: reduction (channels of the dimensionality-reduction conv) must be "
                         f"an integer >= 1, got {reduction!r}")
    sizes = tuple(bins)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ValueError(f"PyramidResidualBlock: bins must be a non-empty list of positive integers (pooling bin "
                         f"sizes, e.g. [1, 2, 4]), got {list(sizes)}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"PyramidResidualBlock: bins must be distinct, got {list(sizes)}")
    if mode not in MODES:
        raise ValueError(f"PyramidResidualBlock: mode must be one of {', '.join(MODES)} (Table III), got {mode!r}")
    return sizes


class PyramidBranch(nn.Module):
    """One pyramid level: avg pool to b x b -> ReLU -> 1x1 conv C->D -> 1x1 conv D->C -> sigmoid -> upsample."""

    def __init__(self, channels: int, reduction: int, bin_size: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(bin_size)
        self.reduce = nn.Conv2d(channels, reduction, kernel_size=1)
        self.expand = nn.Conv2d(reduction, channels, kernel_size=1)

    def forward(self, r: Tensor) -> Tensor:
        maps = torch.sigmoid(self.expand(self.reduce(F.relu(self.pool(r)))))
        return F.interpolate(maps, size=r.shape[-2:], mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """Sec. III-A: the sum of the branches' maps, (B, C, h, w) -> (B, C, h, w) with values in (0, len(bins))."""

    def __init__(self, channels: int, reduction: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(PyramidBranch(channels, reduction, b) for b in bins)

    def forward(self, r: Tensor) -> Tensor:
        total = self.branches[0](r)
        for branch in self.branches[1:]:
            total = total + branch(r)
        return total


class FullResolutionAttention(nn.Module):
    """Table III's "only attention mechanism": 1x1 conv C->nD + ReLU, grouped 1x1 conv nD->nC (n groups) +
    sigmoid, the n groups summed; the pyramid's parameter count without its pooling."""

    def __init__(self, channels: int, reduction: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.hidden = nn.Conv2d(channels, groups * reduction, kernel_size=1)
        self.gate = nn.Conv2d(groups * reduction, groups * channels, kernel_size=1, groups=groups)

    def forward(self, r: Tensor) -> Tensor:
        maps = torch.sigmoid(self.gate(F.relu(self.hidden(r))))
        return maps.unflatten(1, (self.groups, -1)).sum(dim=1)


class PyramidResidualBlock(nn.Module):
    """Wraps a residual unit (``residual(x)``, ``shortcut(x)``; kept as ``self.unit``); ``context`` maps the
    branch r to A (full, attention_only) or P (pyramid_only)."""

    def __init__(self, unit: nn.Module, reduction: int = 256, bins: Sequence[int] = (1, 2, 4),
                 mode: str = "full") -> None:
        super().__init__()
        self.bins = _check_arguments(reduction, bins, mode)
        if not (hasattr(unit, "residual") and hasattr(unit, "shortcut")):
            raise ValueError(f"PyramidResidualBlock wraps a residual unit with residual() and shortcut(), got "
                             f"{type(unit).__name__}")
        self.unit = unit
        self.channels = branch_channels(unit)
        self.reduction = reduction
        self.mode = mode
        self.context: nn.Module
        if mode == "attention_only":
            self.context = FullResolutionAttention(self.channels, reduction, groups=len(self.bins))
        else:
            self.context = PyramidPooling(self.channels, reduction, self.bins)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        r = self.unit.residual(x)
        if self.mode == "pyramid_only":
            return self.relu(r + self.context(r) + self.unit.shortcut(x))
        return self.relu(r * self.context(r) + self.unit.shortcut(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, bins={list(self.bins)}, mode={self.mode}"
