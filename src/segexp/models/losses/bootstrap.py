"""Online bootstrapping of hard training pixels (FCRN, Wu et al. 2016, Sec. 3.3, Eq. 1).

Per image crop (the paper's setting; ``per_image=False`` pools the whole batch, as the authors' later
MXNet code and mmsegmentation's OHEM sampler do), only the hard labelled pixels contribute:

* ``threshold=None`` (the paper's Table 4: "keep the 512 top hardest pixels"): the ``top_k`` labelled
  pixels with the largest cross-entropy; a crop with fewer labelled pixels keeps them all;
* ``threshold=t``: the pixels whose ground-truth probability is below ``t`` (Eq. 1), with ``t`` raised
  so that at least ``top_k`` are kept ("we will increase the threshold t accordingly if the current
  model performs pretty well"); raising t until ``top_k`` pixels pass is keeping the ``top_k`` hardest.

The loss is the mean cross-entropy over the kept pixels of the whole batch (Eq. 1's normaliser, summed
over crops); ignored pixels are never kept; pixels not kept get no gradient. Where several pixels tie
at the ``top_k``-th loss, which of them are kept is arbitrary.

``top_k`` counts pixels of whatever grid the loss is given, and a crop keeps ``min(top_k, its labelled
pixels)`` of them ("valid labels per image crop may be less than 512", Sec. 4.5). With
``model.downsample_labels=true`` that grid is the score grid (labels sampled there, void kept:
:func:`segexp.models.losses.label_grid.labels_on_score_grid`): K=512 of the ~4k labels of a 500x500 crop at
1/8 (63x63), the paper's setting as its text implies (Sec. 4.4 trains against labels at the score map's
resolution, "finer labels" at 1/8 than at 1/16; a crop with fewer than 512 valid labels is common at 1/8 and
rare at full resolution). Without it the logits are upsampled to the labels and K=512 is 512 of ~250k
full-resolution pixels, a far more selective loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.labels import IGNORE_INDEX


class BootstrappedCrossEntropy(nn.Module):
    """Cross-entropy over the hardest labelled pixels of ``(B, C, H, W)`` logits and ``(B, H, W)`` labels."""

    def __init__(
        self,
        top_k: int = 512,
        threshold: float | None = None,
        per_image: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"loss.top_k must be >= 1 (pixels kept per crop), got {top_k}")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"loss.threshold must be in (0, 1] (a probability) or null, got {threshold}")
        self.top_k = top_k
        self.threshold = threshold
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        per_pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        keep = self.kept_pixels(per_pixel.detach(), target != self.ignore_index)
        kept = keep.sum()
        if kept == 0:  # every pixel ignored: no signal (and no NaN)
            return logits.sum() * 0.0
        return (per_pixel * keep).sum() / kept

    def kept_pixels(self, per_pixel: Tensor, valid: Tensor) -> Tensor:
        """The bool mask (``per_pixel``'s shape) of the pixels the loss keeps, chosen per image or per batch."""
        groups = per_pixel.flatten(1) if self.per_image else per_pixel.reshape(1, -1)
        valid_groups = valid.flatten(1) if self.per_image else valid.reshape(1, -1)
        keep = torch.zeros_like(valid_groups)
        for g, (losses, labelled) in enumerate(zip(groups, valid_groups)):
            keep[g] = self._kept_in_group(losses, labelled)
        return keep.reshape(per_pixel.shape)

    def _kept_in_group(self, losses: Tensor, labelled: Tensor) -> Tensor:
        if self.threshold is not None:
            # p_y < t  <=>  -log p_y > -log t
            below = labelled & (losses > -math.log(self.threshold))
            if int(below.sum()) >= self.top_k:
                return below
        k = min(self.top_k, int(labelled.sum()))
        keep = torch.zeros_like(labelled)
        if k > 0:
            hardest = torch.where(labelled, losses, torch.full_like(losses, -math.inf)).topk(k).indices
            keep[hardest] = True
        return keep
