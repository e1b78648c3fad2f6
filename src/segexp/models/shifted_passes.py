"""Shifted passes: a network of output stride OS/2 simulated with the weights of an OS network (FCRN Sec. 3.2).

"In the first pass, we feed the model with an image ... the predicted score maps will also be at a resolution
of 1/8. ... This time, before down-sampling, we first shift the 1/4 resolution feature maps horizontally with
a stride of one ... We only put the obtained scores in four passes into their corresponding locations on 1/4
resolution score maps." (Wu et al. 2016, Fig. 1.)

:func:`shifted_pass_outputs` runs the segmentor four times, each with the backbone's last strided layer
evaluated at one of the offsets (0, 0), (0, 1), (1, 0), (1, 1) (``backbone.dense_last_stride``), and
interleaves each named output of the four passes into one map of twice the resolution: output[..., 2i + dy,
2j + dx] = pass(dy, dx)[..., i, j]. For a single-scale model with batch statistics fixed (BN in eval mode or
frozen, as FCRN trains), this equals the dense output of the same weights at OS/2, i.e. after
``model.set_output_stride(OS/2)`` (the backbone follows the hole algorithm: the removed stride's conv keeps its
rate, every dilation after it is doubled, the classifier's too); for several input scales, each stream is
shifted alike but fusing logits resized to one grid is not exactly the dense model's fusion.

Used at test time by ``inference.shift_passes=2`` and in training by ``model.train_shift_passes=true`` (one
loss on the interleaved outputs, so the four passes' gradients add up in one optimizer step; the four graphs
are held together until that backward).
"""

from __future__ import annotations

from torch import Tensor, nn

from segexp.config import ConfigError
from segexp.models.contracts import ShiftablePasses, contract_members, missing_members

OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))


def check_shift_passes(model: nn.Module, key: str) -> None:
    """Fail before any work when the model's backbone cannot run shifted passes (the error names ``key``)."""
    backbone = model.backbone
    try:
        check_shiftable(backbone)
        backbone.last_strided_stage()
    except ValueError as err:
        raise ConfigError(f"{key}: shifted passes cannot run on this model: {err}") from err


def check_shiftable(backbone: nn.Module) -> None:
    """A ValueError naming the backbone unless it can run shifted passes
    (:class:`~segexp.models.contracts.ShiftablePasses`: ``last_strided_stage`` and ``dense_last_stride``)."""
    if not isinstance(backbone, ShiftablePasses):
        raise ValueError(f"shifted passes need a backbone with {', '.join(contract_members(ShiftablePasses))} (the "
                         f"ResNet has them); {type(backbone).__name__} lacks "
                         f"{', '.join(missing_members(backbone, ShiftablePasses))}")


def shifted_pass_outputs(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Every output of ``model.forward_raw`` at twice its resolution, from four shifted passes."""
    backbone = model.backbone
    check_shiftable(backbone)
    passes = {}
    for offset in OFFSETS:
        with backbone.dense_last_stride(offset):
            passes[offset] = model.forward_raw(images)
    return {name: interleave({offset: outputs[name] for offset, outputs in passes.items()})
            for name in passes[(0, 0)]}


def interleave(passes: dict[tuple[int, int], Tensor]) -> Tensor:
    """The map whose pixel (2i + dy, 2j + dx) is ``passes[(dy, dx)][..., i, j]``. An odd dense size gives
    the offset-1 passes one row (column) fewer; the map has the sum of both."""
    first = passes[(0, 0)]
    height = first.shape[-2] + passes[(1, 0)].shape[-2]
    width = first.shape[-1] + passes[(0, 1)].shape[-1]
    dense = first.new_empty((*first.shape[:-2], height, width))
    for (dy, dx), values in passes.items():
        dense[..., dy::2, dx::2] = values
    return dense
