"""Encoder-decoder segmentor: backbone -> head (+ optional auxiliary head on layer3).

The head's logits come out at 1/output_stride of the input. Following DeepLabv3 Sec. 4.1
("Upsampling logits"), :meth:`Segmentor.forward` upsamples them bilinearly to the input size; the
training loss decides whether to upsample logits to the labels (default) or to downsample labels
to the logits (Table 8's ablation), so this module also exposes the raw low-resolution outputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def head_input(features: dict[str, Tensor], head: nn.Module) -> Tensor | list[Tensor]:
    """The backbone features a head reads, by its ``in_keys`` (default the last stage, ``"out"``): the one
    tensor for a one-key head, else the list in ``in_keys`` order."""
    keys = tuple(getattr(head, "in_keys", ("out",)))
    return features[keys[0]] if len(keys) == 1 else [features[key] for key in keys]


class Segmentor(nn.Module):
    """Composes a backbone returning a dict of named features with a head reading the ones named by its
    ``in_keys`` (default ``"out"``, the last stage) and an optional auxiliary head (layer3)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.align_corners = align_corners

    @property
    def output_stride(self) -> int:
        return int(self.backbone.output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-configure the dilations of every part for another output stride (same weights). Output stride is
        a contract: a part without ``set_output_stride`` cannot follow, and asking for another stride raises
        a ValueError naming it rather than evaluating a different model."""
        parts = {"backbone": self.backbone, "head": self.head, "aux_head": self.aux_head}
        current = self.output_stride
        for name, part in parts.items():
            if part is None:
                continue
            if not hasattr(part, "set_output_stride"):
                if output_stride != current:
                    raise ValueError(f"{name} ({type(part).__name__}) has no set_output_stride: it cannot run at "
                                     f"output stride {output_stride}")
                continue
            part.set_output_stride(output_stride)

    def forward_raw(self, images: Tensor) -> dict[str, Tensor]:
        """Low-resolution logits: ``{"out": ..., "aux": ...}`` (aux only when an aux head exists)."""
        feats = self.backbone(images)
        outputs = {"out": self.head(head_input(feats, self.head))}
        if self.aux_head is not None:
            outputs["aux"] = self.aux_head(head_input(feats, self.aux_head))
        return outputs

    def upsample(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, images: Tensor) -> Tensor:
        """Main-head logits upsampled to the input's height and width."""
        return self.upsample(self.forward_raw(images)["out"], tuple(images.shape[-2:]))
