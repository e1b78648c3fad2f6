"""Labels on the score grid: the targets a loss sees with ``model.downsample_labels`` (DeepLabv3 Table 8).

A network whose strided layers are 'same'-padded (kernel k, padding k // 2, as the ResNets here) centres
score pixel i on input pixel ``i * OS`` and has ``ceil(H / OS)`` scores along a side of H pixels (513 -> 65
at OS 8: input pixels 0, 8, ..., 512). The labels on that grid are ``labels[..., ::OS, ::OS]``: nearest
sampling, so a void pixel (255, e.g. VOC's object outlines) stays void where the grid hits it and no class
ever replaces it (no mode or majority vote). ``F.interpolate(mode="nearest", size=65)`` samples
``floor(i * 513 / 65)`` instead (0, 7, 15, ..., 505), which drifts off that grid by up to 7 pixels.

It lives with the losses because it defines what a loss is computed against: a loss over the score grid
(the bootstrapping loss counts its ``top_k`` among these labels) reads it here, next to its own code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def labels_on_score_grid(labels: Tensor, size: Sequence[int], stride: int | None = None) -> Tensor:
    """``labels`` ``(..., H, W)`` sampled nearest (void kept) on a score grid of ``size`` ``(h, w)``.

    1. ``(h, w) == (H, W)``: the labels themselves.
    2. An integer stride ``s`` with ``ceil(H / s) == h`` and ``ceil(W / s) == w``: ``labels[..., ::s, ::s]``
       (score pixel i on input pixel ``i * s``). ``stride``, the network's output stride when the caller
       knows it, is tried first; otherwise the smallest such ``s`` (several fit only for maps with fewer
       score pixels along a side than their stride).
    3. Otherwise (outputs of other input scales: 513 at 0.75x is 385 pixels, 49 scores at OS 8, a stride of
       10.67 input pixels): corner-aligned positions, score pixel i at input position
       ``i * (H - 1) / (h - 1)`` (0 when h = 1), rounded half up to a pixel index. Score pixel 0 sits on
       input pixel 0 at every scale; for crop sizes ``k * OS + 1`` (DeepLab's 513, 321) whose scaled size is
       also ``k' * OS + 1`` (513 at 0.75x and 1.25x) the last score pixel sits on the last input pixel, so
       these are the scaled grid's positions (up to the resize's sub-pixel offset); otherwise they are off
       by less than one score pixel (most at the far edge).
    """
    height, width = labels.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (h, w) == (height, width):
        return labels
    s = _integer_stride(height, width, h, w, stride)
    if s is not None:
        return labels[..., ::s, ::s]
    rows = _corner_aligned(height, h, labels.device)
    cols = _corner_aligned(width, w, labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _integer_stride(height: int, width: int, h: int, w: int, hint: int | None) -> int | None:
    """The integer s with ``ceil(height / s) == h`` and ``ceil(width / s) == w`` (``hint`` if it fits, else the
    smallest), or None. ``ceil(n / s)`` does not increase with s and is <= h from ``s = ceil(n / h)`` on, so
    the smallest candidate is ``max(ceil(height / h), ceil(width / w))`` and fits or nothing does."""
    def fits(s: int) -> bool:
        return s >= 1 and _ceil_div(height, s) == h and _ceil_div(width, s) == w

    if hint is not None and fits(int(hint)):
        return int(hint)
    smallest = max(_ceil_div(height, h), _ceil_div(width, w), 1)
    return smallest if fits(smallest) else None


def _corner_aligned(n: int, m: int, device: torch.device) -> Tensor:
    """Indices ``floor(i * (n - 1) / (m - 1) + 1/2)`` for i < m, in integer arithmetic (0 when m = 1)."""
    i = torch.arange(m, device=device)
    if m == 1:
        return i
    return (2 * i * (n - 1) + (m - 1)) // (2 * (m - 1))
