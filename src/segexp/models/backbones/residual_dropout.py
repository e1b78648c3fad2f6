"""Dropout in a residual unit's branch (FCRN, Wu et al. 2016, Sec. 4.5, Table 4's "Do.").

"To deal with the problem of over-fitting observed on the PASCAL VOC dataset, we introduce the traditional
dropout into some of the top-most blocks." The paper does not say where in a block or at which rate; here
the wrapped unit computes ``relu(dropout(residual(x)) + shortcut(x))``: element-wise dropout (the
"traditional" one, rescaled by 1/(1-p) in training, the identity in eval mode) on the residual branch
only, so the identity path always carries the signal. Units are chosen by name
(``backbone.dropout_units=[res5b,res5c]``, :mod:`segexp.models.backbones.unit_names`) with
``backbone.dropout`` as the rate.
"""

from __future__ import annotations

from torch import Tensor, nn

from segexp.models.contracts import ResidualUnit


class ResidualDropout(nn.Module):
    """Wraps a residual unit exposing ``residual(x)`` and ``shortcut(x)`` (BasicBlock, Bottleneck)."""

    def __init__(self, unit: nn.Module, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {p}")
        if not isinstance(unit, ResidualUnit):
            raise ValueError(f"ResidualDropout wraps a residual unit with residual() and shortcut(), got "
                             f"{type(unit).__name__}")
        self.unit = unit
        self.dropout = nn.Dropout(p)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.dropout(self.unit.residual(x)) + self.unit.shortcut(x))
