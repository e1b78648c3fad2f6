"""Geometry that follows the output stride: dilations given at one output stride, rescaled to another.

A dilated conv after the backbone sees features at 1/output_stride of the input. To keep its field of view in
image pixels when the output stride changes (same weights, DeepLabv3 Table 10 / Sec. 4.1 "evaluate at output
stride 8"), its dilation is given at a reference stride ``given_at`` and becomes ``dilation * given_at /
output_stride``: "the rates are doubled when output_stride=8" (DeepLabv3 Sec. 3.3), FCRN's dilated classifier
(Sec. 3.2: 12 at 1/8 is 24 at 1/4). A stride at which that is not a whole dilation >= 1 is refused with a
ValueError naming the part and the stride: the geometry cannot follow, and running a different model silently
would be worse.

* :func:`scaled_dilations` -- ASPP-style rates (ASPP, ASPP-L, PAC), with a remedy in the message;
* :func:`scaled_dilation` -- one dilation (FCN's dilated classifier, LargeFOV's fc6, msattn's stream convs);
* :func:`set_dilation` -- set an existing conv's dilation with 'same' padding, weights untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def scaled_dilations(
    rates: Sequence[int], rates_output_stride: int, output_stride: int, owner: str = "ASPP"
) -> tuple[int, ...]:
    """Each rate's dilation at ``output_stride``: rate * rates_output_stride / output_stride (DeepLabv3 Sec. 3.3,
    "the rates are doubled when output_stride=8"). A rate that does not give a whole dilation >= 1 raises a
    ValueError naming ``owner``, the rate and the output stride."""
    dilations = []
    for rate in rates:
        scaled = rate * rates_output_stride
        if scaled % output_stride or scaled < output_stride:
            raise ValueError(
                f"{owner} rates {list(rates)} (given for output stride {rates_output_stride}) do not "
                f"scale to output stride {output_stride}: rate {rate} would be dilation "
                f"{scaled / output_stride:g}; choose rates that are multiples of {output_stride} / "
                f"gcd(rates_output_stride, {output_stride}) or another output stride"
            )
        dilations.append(scaled // output_stride)
    return tuple(dilations)


def scaled_dilation(dilation: int, given_at: int, output_stride: int, what: str) -> int:
    """``dilation`` (given at output stride ``given_at``) at ``output_stride``: dilation * given_at / output_stride.
    A ValueError starting with ``what`` (e.g. "FCNHead: the classifier's dilation") when that is not an integer
    (or ``output_stride`` < 1)."""
    scaled = dilation * given_at
    if output_stride < 1 or scaled % output_stride:
        raise ValueError(
            f"{what} {dilation} (given at output stride {given_at}) is not an integer at output "
            f"stride {output_stride} ({scaled / max(output_stride, 1):g})"
        )
    return scaled // output_stride


def set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Set ``conv``'s dilation, and its padding to keep the spatial size (odd kernel: dilation * (k - 1) / 2)."""
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (conv.kernel_size[0] - 1) // 2,) * 2
