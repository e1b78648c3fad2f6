"""Encoder-decoder segmentor: backbone -> head (+ optional auxiliary head), at one or several input scales.

The head's logits come out at 1/output_stride of the input. Following DeepLabv3 Sec. 4.1
("Upsampling logits"), :meth:`Segmentor.forward` upsamples them bilinearly to the input size; the
training loss decides whether to upsample logits to the labels (default) or to downsample labels
to the logits (Table 8's ablation), so this module also exposes the raw low-resolution outputs.

Outputs are named (:meth:`Segmentor.forward_raw`) and each carries a loss weight
(:attr:`Segmentor.loss_weights`): ``out`` is the main output (the one inference uses), ``aux`` the
auxiliary head's (e.g. FCN on ``layer3``), and with several input scales ``out_scale<s>`` is the output
of the network run on the image resized by ``s``.

Multi-scale inputs (DeepLab-V2's MSC, Chen et al. 2016 Sec. 3.3; attention to scale, Chen et al. 2016):
the same network (shared weights) runs on the image resized by each of ``scales``; every scale's logits
are resized bilinearly to the grid of the largest scale's logits and fused by ``fusion`` (max or mean
over scales, or a learned attention) into ``out``. Each scale's own output is supervised too, with
``scale_loss_weights``. The auxiliary head reads the features of the scale-1 stream (the first scale
when 1.0 is not among them).

A fusion reads the per-scale features named by its ``in_keys`` (none for max / mean): backbone features
by name, and ``"head"`` (:data:`HEAD_FEATURES`) for the head's penultimate features (fc7 of
DeepLab-LargeFOV, the input of attention to scale).

What the segmentor asks of each part is declared in :mod:`segexp.models.contracts` and asked by ``isinstance``
on those Protocols: the backbone must be a :class:`~segexp.models.contracts.Backbone`; a head reads its
``in_keys`` (:class:`~segexp.models.contracts.ReadsFeatures`, else ``"out"``); a part follows another output
stride only with ``set_output_stride`` (:class:`~segexp.models.contracts.FollowsOutputStride`, else asking for
another stride raises); a fusion reading ``"head"`` needs a head that
:class:`~segexp.models.contracts.ExposesFeatures`; a fusion that weighs the scales per pixel
(:class:`~segexp.models.contracts.ScaleWeighting`) gives the weights :meth:`Segmentor.scale_attention` returns
for the dashboards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segexp.geometry import scaled_size
from segexp.models.contracts import (
    Backbone,
    ContractError,
    ExposesFeatures,
    FollowsOutputStride,
    ScaleWeighting,
    check_contract,
    contract_members,
    feature_keys,
    missing_members,
)

MAIN_OUTPUT = "out"
AUX_OUTPUT = "aux"
HEAD_FEATURES = "head"
"""The name under which a fusion reads the head's penultimate features (beside the backbone's)."""


def scale_output_name(scale: float) -> str:
    """The name of the output of the stream at ``scale`` (``out_scale0.75``; ``out_scale1`` for 1.0)."""
    return f"{MAIN_OUTPUT}_scale{scale:g}"


def head_input(features: dict[str, Tensor], head: nn.Module) -> Tensor | list[Tensor]:
    """The backbone features a head reads, by its ``in_keys`` (default the last stage, ``"out"``): the one
    tensor for a one-key head, else the list in ``in_keys`` order."""
    keys = feature_keys(head, default=(MAIN_OUTPUT,))
    return features[keys[0]] if len(keys) == 1 else [features[key] for key in keys]


def exposes_features(head: nn.Module) -> bool:
    """Whether ``head`` provides its penultimate features (:class:`~segexp.models.contracts.ExposesFeatures`:
    ``forward_features`` / ``classify`` / ``feature_channels``), which a fusion can read as ``"head"``."""
    return isinstance(head, ExposesFeatures)


def reads_head_features(fusion: nn.Module | None) -> bool:
    """Whether ``fusion`` reads the head's penultimate features (``"head"`` among its ``in_keys``)."""
    return fusion is not None and HEAD_FEATURES in feature_keys(fusion, default=())


def check_head_features(head: nn.Module, fusion: nn.Module | None) -> None:
    """A :class:`~segexp.models.contracts.ContractError` naming the head and what it lacks when ``fusion`` reads
    the head's penultimate features and ``head`` does not expose them."""
    if reads_head_features(fusion) and not exposes_features(head):
        raise ContractError(f"fusion ({type(fusion).__name__}) reads '{HEAD_FEATURES}', the head's penultimate "
                            f"features, but head ({type(head).__name__}) does not expose them: it lacks "
                            f"{', '.join(missing_members(head, ExposesFeatures))} "
                            f"({', '.join(contract_members(ExposesFeatures))})")


class Segmentor(nn.Module):
    """Composes a backbone returning a dict of named features with a head reading the ones named by its
    ``in_keys`` (default ``"out"``, the last stage), an optional auxiliary head and, for several input
    ``scales``, a ``fusion`` module mapping the per-scale logits (resized to one grid) and the per-scale
    backbone features to one tensor: ``fusion(logits: list[Tensor], features: list[dict[str, Tensor]])``."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        align_corners: bool = False,
        scales: Sequence[float] = (1.0,),
        fusion: nn.Module | None = None,
        head_loss_weight: float = 1.0,
        aux_loss_weight: float = 0.0,
        scale_loss_weights: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(s <= 0 for s in self.scales) or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"model.scales must be distinct positive numbers, got {list(scales)}")
        if len(self.scales) > 1 and fusion is None:
            raise ValueError(f"model.scales={list(self.scales)} runs several scales: choose how their logits are "
                             "fused, e.g. fusion=max or fusion=mean")
        check_contract(backbone, Backbone, "backbone")
        check_head_features(head, fusion if len(self.scales) > 1 else None)
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.fusion = fusion if len(self.scales) > 1 else None
        self.align_corners = align_corners
        self.loss_weights = self._output_weights(head_loss_weight, aux_loss_weight, scale_loss_weights)

    def _output_weights(self, head: float, aux: float, per_scale: float | Sequence[float]) -> dict[str, float]:
        """The loss weight of every output :meth:`forward_raw` produces, by name."""
        weights = {MAIN_OUTPUT: float(head)}
        if self.aux_head is not None:
            weights[AUX_OUTPUT] = float(aux)
        if len(self.scales) > 1:
            per = [float(per_scale)] * len(self.scales) if isinstance(per_scale, (int, float)) else list(per_scale)
            if len(per) != len(self.scales):
                raise ValueError(f"model.scale_loss_weights={per} needs one weight per scale of "
                                 f"model.scales={list(self.scales)}")
            weights.update({scale_output_name(s): float(w) for s, w in zip(self.scales, per)})
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"loss weights must be >= 0 and not all 0, got {weights} (model.head_loss_weight, "
                             "aux_head.loss_weight, model.scale_loss_weights)")
        return weights

    @property
    def output_stride(self) -> int:
        return int(self.backbone.output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-configure the dilations of every part for another output stride (same weights). Output stride is
        a contract: a part without ``set_output_stride`` (:class:`~segexp.models.contracts.FollowsOutputStride`)
        cannot follow, and asking for another stride raises a ValueError naming it, before any part is changed,
        rather than evaluating a different model."""
        parts = {"backbone": self.backbone, "head": self.head, "aux_head": self.aux_head, "fusion": self.fusion}
        parts = {name: part for name, part in parts.items() if part is not None}
        fixed = [f"{name} ({type(part).__name__})" for name, part in parts.items()
                 if not isinstance(part, FollowsOutputStride)]
        if fixed and output_stride != self.output_stride:
            has, it = ("has", "it") if len(fixed) == 1 else ("have", "they")
            raise ValueError(f"{', '.join(fixed)} {has} no set_output_stride: {it} cannot run at output stride "
                             f"{output_stride}")
        for part in parts.values():
            if isinstance(part, FollowsOutputStride):
                part.set_output_stride(output_stride)

    def forward_raw(self, images: Tensor) -> dict[str, Tensor]:
        """Low-resolution logits by output name: ``out`` (+ ``aux`` with an auxiliary head, + ``out_scale<s>``
        per scale with several scales)."""
        if len(self.scales) == 1:
            feats = self.backbone(self._resize(images, self.scales[0]))
            return {MAIN_OUTPUT: self.head(head_input(feats, self.head)), **self._aux(feats)}
        per_scale, features, outputs = self._streams(images)
        outputs[MAIN_OUTPUT] = self.fusion(self._on_one_grid(per_scale), features)
        outputs.update({scale_output_name(s): logits for s, logits in zip(self.scales, per_scale)})
        return outputs

    def _streams(self, images: Tensor) -> tuple[list[Tensor], list[dict[str, Tensor]], dict[str, Tensor]]:
        """Each scale's logits and features (the backbone's, plus the head's when the fusion reads them), and
        the auxiliary output of the scale-1 stream."""
        reads_head = reads_head_features(self.fusion)
        per_scale, features, aux = [], [], {}
        for scale in self.scales:
            feats = self.backbone(self._resize(images, scale))
            if reads_head:
                penultimate = self.head.forward_features(head_input(feats, self.head))
                per_scale.append(self.head.classify(penultimate))
                feats = {**feats, HEAD_FEATURES: penultimate}
            else:
                per_scale.append(self.head(head_input(feats, self.head)))
            features.append(feats)
            if scale == self.aux_scale:
                aux = self._aux(feats)
        return per_scale, features, aux

    def _on_one_grid(self, per_scale: list[Tensor]) -> list[Tensor]:
        """The per-scale logits resized to the largest of their grids."""
        grid = max((tuple(logits.shape[-2:]) for logits in per_scale), key=lambda hw: hw[0] * hw[1])
        return [self.upsample(logits, grid) for logits in per_scale]

    def scale_attention(self, images: Tensor) -> Tensor | None:
        """The fusion's per-pixel weight of each scale, ``(B, S, H, W)`` at the input's size (scales in
        ``self.scales`` order), or None when the fusion does not weigh scales (max, mean, one scale)."""
        if not isinstance(self.fusion, ScaleWeighting):
            return None
        per_scale, features, _ = self._streams(images)
        weights = self.fusion.scale_weights(self._on_one_grid(per_scale), features)
        return self.upsample(weights, tuple(images.shape[-2:]))

    @property
    def aux_scale(self) -> float:
        """The stream the auxiliary head reads: scale 1 (the first scale when 1.0 is not among them)."""
        return 1.0 if 1.0 in self.scales else self.scales[0]

    def _aux(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        return {} if self.aux_head is None else {AUX_OUTPUT: self.aux_head(head_input(feats, self.aux_head))}

    def _resize(self, images: Tensor, scale: float) -> Tensor:
        if scale == 1.0:
            return images
        size = scaled_size(tuple(images.shape[-2:]), scale)
        return F.interpolate(images, size=size, mode="bilinear", align_corners=self.align_corners)

    def upsample(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, images: Tensor) -> Tensor:
        """Main-output logits upsampled to the input's height and width."""
        return self.upsample(self.forward_raw(images)[MAIN_OUTPUT], tuple(images.shape[-2:]))
