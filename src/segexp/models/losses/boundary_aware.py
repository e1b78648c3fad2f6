"""Boundary-aware loss, BAL (Yu, "Pyramid Atrous Convolution and Boundary-aware Loss", Sec. 3.2, 4.1, Eqs. 1-6).

Cross-entropy weighted per pixel by a blurred map of the label's class boundaries:

* Eq. 1-2: for each class i, the edge map ``E_i = [ |l_i (*) f_E| > 0 ]`` of the one-hot label ``l_i`` with the 2x2
  filter ``f_E = [[1, -0.5], [-0.5, 0]]``. ``(*)`` is read as the convolution the paper writes (the filter
  flipped, not the cross-correlation of ``conv2d``): ``(l_i (*) f_E)(y, x) = l_i(y, x) - 0.5 l_i(y, x-1) -
  0.5 l_i(y-1, x)``, which is 0 exactly when the pixel's class indicator equals its left and upper
  neighbours'. So a pixel is an edge of class i when ``[label = i]`` differs between it and its left or upper
  neighbour: on a boundary between classes a and b the pixel on the right/lower side is an edge of both
  (cross-correlation would mark the pixel on the other side, a one-pixel shift).
* Eq. 3, 5, 6 and Sec. 4.1: each ``E_i`` is bilinearly downsampled by ``down`` ("for increasing receptive
  fields of kernels and computational efficiency"), convolved with a ``size`` x ``size`` kernel, bilinearly
  upsampled back, summed over classes, and ``beta`` is added: ``E_G = sum_i up(f * down(E_i)) + beta``.
  Kernels, with centre ``(x_c, y_c) = ((size-1)/2, (size-1)/2)``: gaussian ``exp(-((x-x_c)^2 + (y-y_c)^2) /
  (size * sigma))`` (Eq. 5: ``size * sigma`` in the denominator, as printed) or linear ``size - (|x-x_c| +
  |y-y_c|)`` (Eq. 6), each "normalized across 0 to 1": min-max, so the centre is 1 and the corners 0.
* Eq. 4: ``BAL = mean over labelled pixels of E_G * CE`` (per-pixel cross-entropy, ``ignore_index`` 255);
  the mean runs over every labelled pixel of the batch, as plain cross-entropy's does.

The defaults are the paper's best setting (Table 1): gaussian kernel, ``down`` 4, ``size`` 35, ``sigma`` 3.0,
``beta`` 0.5.

Where the paper is silent (choices made here):

* Void (``ignore_index``) pixels belong to no class (their one-hot row is all zero). Eq. 1 is applied to that
  one-hot label as written: where a class meets void, the class's edge falls on the class's own pixel when the
  void lies to its left or above, and on the void pixel when the void lies to its right or below. Edges on
  void pixels are blurred like any other edge (Eq. 3), so they weigh the labelled pixels beside them; only the
  loss is masked on void (Eq. 4 sums over labelled pixels). VOC outlines every object with a band of void: an
  object's four sides then weigh alike, up to the filter's one-pixel offset (zeroing ``E_i`` on void before the
  blur, as an earlier version did, kept only the top and left sides of such an object).
* The image border is not a boundary: the label is padded by replication before Eq. 1.
* The downsampled grid is ``ceil(H / down) x ceil(W / down)``; downsampling is bilinear with antialiasing
  (``antialias``; a triangle filter of width 2 * down), so every 1-pixel edge contributes; plain bilinear
  sampling (``antialias: false``, TF1's ``resize_bilinear``) reads only 2 of every ``down`` rows and columns
  and drops the edges in between. The blur pads with zeros (no edges outside the image); upsampling is
  bilinear, ``align_corners=False``. The kernel size is in downsampled pixels (so it covers
  ``size * down`` label pixels) and must be odd.
* ``E_G`` is computed from the labels the loss receives (the logits' size), in float32, with no gradient.
* ``E_G`` is not rescaled: with the defaults it averages about 16 over the labelled pixels of CamVid val (max
  81) and 4.4 on a 513 x 513 VOC-like label with 5-pixel void outlines, so the loss and its gradients are
  several times larger than plain cross-entropy's at the same learning rate, and the factor differs between
  Table 1's settings (0.65 to 7.8 on that label). The paper does not say whether it compensated.
* Void that pads a training crop is void like any other: the crop's labelled content meets it on all four
  sides, so the padded border is a boundary there (the image border itself is not, see above).

Fast form: downsampling, blur and upsampling are linear and act on each class map alike, so
``sum_i up(f * down(E_i)) = up(f * down(sum_i E_i))``: :func:`edge_count` computes ``sum_i E_i`` (how many
classes have an edge at each pixel) from the label and its two neighbours without a per-class loop;
:func:`reference_edge_weights` is the per-class form of the equations, kept to check it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.labels import IGNORE_INDEX

EDGE_FILTER = ((1.0, -0.5), (-0.5, 0.0))
"""f_E of Eq. 2."""

KERNELS = ("gaussian", "linear")


def blur_kernel(kind: str, size: int, sigma: float = 1.0) -> Tensor:
    """The ``size`` x ``size`` kernel of Eq. 5 (``gaussian``) or Eq. 6 (``linear``), min-max normalised to [0, 1]."""
    if kind not in KERNELS:
        raise ValueError(f"loss.kernel={kind!r}: choose 'gaussian' (Eq. 5) or 'linear' (Eq. 6)")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"loss.size={size}: the kernel size must be a positive odd integer (the paper uses 15-35)")
    if sigma <= 0:
        raise ValueError(f"loss.sigma={sigma}: must be > 0")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    dy, dx = offsets[:, None], offsets[None, :]
    gaussian = torch.exp(-(dx**2 + dy**2) / (size * sigma))  # Eq. 5
    linear = size - (dx.abs() + dy.abs())  # Eq. 6
    kernel = gaussian if kind == "gaussian" else linear
    low, high = kernel.min(), kernel.max()
    kernel = torch.ones_like(kernel) if high == low else (kernel - low) / (high - low)
    return kernel.float()


def _shifted(target: Tensor) -> tuple[Tensor, Tensor]:
    """Each pixel's left and upper neighbours' labels, replicated at the image border: (B, H, W) each."""
    left = torch.cat([target[:, :, :1], target[:, :, :-1]], dim=2)
    up = torch.cat([target[:, :1], target[:, :-1]], dim=1)
    return left, up


def class_edges(target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Eq. 1 per class: (B, num_classes, H, W) float 0/1 maps ``E_i`` of (B, H, W) labels, by the convolution with
    f_E on the one-hot label (void in no class, so a void pixel below or right of class i is an edge of i;
    replicate padding). ``ignore_index`` is the void label."""
    classes = torch.arange(num_classes, device=target.device)
    labelled = (target != ignore_index)[:, None]
    one_hot = ((target[:, None] == classes[None, :, None, None]) & labelled).float()  # void rows are all zero
    b, c, h, w = one_hot.shape
    # conv2d correlates: flip f_E to convolve. Output (y, x) sees input rows y-1..y and columns x-1..x.
    flipped = torch.tensor(EDGE_FILTER, device=target.device).flip(0, 1)
    padded = F.pad(one_hot.reshape(b * c, 1, h, w), (1, 0, 1, 0), mode="replicate")
    response = F.conv2d(padded, flipped[None, None]).reshape(b, c, h, w)
    return (response.abs() > 0).float()


def edge_count(target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``sum_i E_i``: how many classes have an edge at each pixel, (B, 1, H, W) float, without a per-class loop.

    With ``a`` the pixel's label and ``b``, ``c`` its left and upper neighbours', the classes whose indicator
    changes are ``{a, b}`` if a != b and ``{a, c}`` if a != c, less void, which is no class. A void pixel is
    an edge of its labelled neighbours' classes (Eq. 1 on the one-hot label), as :func:`class_edges`.
    """
    a = target
    b, c = _shifted(target)
    valid_a, valid_b, valid_c = a != ignore_index, b != ignore_index, c != ignore_index
    own = valid_a & ((a != b) | (a != c))  # class a itself
    left = valid_b & (a != b)  # class b
    upper = valid_c & (a != c) & (b != c)  # class c, unless it is b (counted once)
    return (own.float() + left.float() + upper.float())[:, None]


def spread_edges(edges: Tensor, kernel: Tensor, down: int = 1, antialias: bool = True) -> Tensor:
    """``up(kernel * down(edges))`` for each channel of (N, C, H, W) ``edges`` (Sec. 4.1): bilinear downsampling
    by ``down``, the blur (zero padding), bilinear upsampling back to H x W."""
    n, c, h, w = edges.shape
    x = edges.reshape(n * c, 1, h, w)
    if down > 1:
        small = (math.ceil(h / down), math.ceil(w / down))
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=antialias)
    pad = kernel.shape[-1] // 2
    x = F.conv2d(x, kernel.to(x)[None, None], padding=pad)
    if down > 1:
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.reshape(n, c, h, w)


def reference_edge_weights(
    target: Tensor, num_classes: int, kernel: Tensor, down: int = 1, beta: float = 0.0,
    ignore_index: int = IGNORE_INDEX, antialias: bool = True,
) -> Tensor:
    """Eq. 3 class by class: ``E_G = sum_i up(f * down(E_i)) + beta``, (B, H, W). The loss uses the fast form."""
    edges = class_edges(target, num_classes, ignore_index)
    return spread_edges(edges, kernel, down, antialias).sum(dim=1) + beta


class BoundaryAwareLoss(nn.Module):
    """BAL over ``(B, C, H, W)`` logits and ``(B, H, W)`` integer labels: mean of ``E_G * CE`` over labelled pixels."""

    def __init__(
        self,
        kernel: Literal["gaussian", "linear"] = "gaussian",
        down: int = 4,
        size: int = 35,
        sigma: float = 3.0,
        beta: float = 0.5,
        antialias: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if down < 1:
            raise ValueError(f"loss.down={down}: the edge map's downsampling factor must be >= 1 (the paper: 1, 2, 4)")
        if beta < 0:
            raise ValueError(f"loss.beta={beta}: must be >= 0 (the weight of pixels far from any edge)")
        self.kernel_kind, self.down, self.size, self.sigma, self.beta = kernel, down, size, sigma, beta
        self.antialias = antialias
        self.ignore_index = ignore_index
        self.register_buffer("blur", blur_kernel(kernel, size, sigma), persistent=False)

    @torch.no_grad()
    def edge_weights(self, target: Tensor) -> Tensor:
        """``E_G`` (Eq. 3) of (B, H, W) labels, float32 (B, H, W), by the fast form (one map for all classes)."""
        with torch.autocast(device_type=target.device.type, enabled=False):  # float32 under mixed precision too
            count = edge_count(target, self.ignore_index)
            return spread_edges(count, self.blur.float(), self.down, self.antialias)[:, 0] + self.beta

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"BoundaryAwareLoss: logits {tuple(logits.shape)} and labels {tuple(target.shape)} "
                             "differ in size")
        valid = target != self.ignore_index
        labelled = valid.sum()
        if labelled == 0:  # every pixel ignored: no signal (and no NaN)
            return logits.sum() * 0.0
        per_pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        weights = self.edge_weights(target)
        return (weights * per_pixel * valid).sum() / labelled
