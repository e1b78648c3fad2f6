"""The one rule for output-stride changes of a head (segexp.models.output_stride; DeepLabv3 Sec. 3.3: "the rates
are doubled when output_stride = 8"): a rate given at one output stride keeps its field of view at another, a
fraction fails loudly naming the head, and every head that follows the output stride (ASPP, ASPP-L, PAC) rescales
its rates by that rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segexp.models.heads.aspp import ASPPHead
from segexp.models.heads.aspp_v2 import ASPPv2Head
from segexp.models.heads.pac import PACHead
from segexp.models.output_stride import scaled_dilation, scaled_dilations, set_dilation


def test_a_dilation_given_at_one_output_stride_keeps_its_field_of_view() -> None:
    # FCRN Sec. 3.2: dilation 12 at 1/8 is 24 at 1/4 and 6 at 1/16; at 1/64 it would be 1.5
    assert [scaled_dilation(12, 8, stride, "x") for stride in (4, 8, 16)] == [24, 12, 6]
    with pytest.raises(ValueError, match=r"^FCNHead: the classifier's dilation 12 \(given at output stride 8\) is "
                                         r"not an integer at output stride 64 \(1\.5\)$"):
        scaled_dilation(12, 8, 64, "FCNHead: the classifier's dilation")
    assert scaled_dilations((6, 12, 18), 16, 8) == (12, 24, 36)  # "the rates are doubled when output_stride=8"
    with pytest.raises(ValueError, match=r"PAC rates \[1, 3\] .* output stride 32: rate 1 would be dilation 0\.5"):
        scaled_dilations((1, 3), 16, 32, owner="PAC")


def test_set_dilation_keeps_the_spatial_size() -> None:
    conv = nn.Conv2d(2, 2, kernel_size=5)
    set_dilation(conv, 12)  # padding dilation * (k - 1) / 2 = 24
    assert conv.dilation == (12, 12) and conv.padding == (24, 24)
    assert conv(torch.randn(1, 2, 9, 7)).shape == (1, 2, 9, 7)
    pointwise = nn.Conv2d(2, 2, kernel_size=1)
    set_dilation(pointwise, 3)
    assert pointwise.padding == (0, 0)


def test_aspp_rates_scale_with_output_stride() -> None:
    head = ASPPHead(16, 3, output_stride=16, channels=8)
    assert head.dilations == (6, 12, 18)
    head.set_output_stride(8)  # "the rates are doubled when output_stride=8"
    assert head.dilations == (12, 24, 36)
    assert [b[0].padding for b in head.atrous] == [(12, 12), (24, 24), (36, 36)]
    head.set_output_stride(32)
    assert head.dilations == (3, 6, 9)
    with pytest.raises(ValueError, match="rate 3"):
        ASPPHead(16, 3, output_stride=16, rates=[3, 6]).set_output_stride(32)
    with pytest.raises(ValueError, match="rate 6"):
        ASPPHead(16, 3, output_stride=16, rates=[6]).set_output_stride(128)
    half = ASPPHead(16, 3, output_stride=8, rates=[12, 24], rates_output_stride=8)
    assert half.dilations == (12, 24)
    half.set_output_stride(16)
    assert half.dilations == (6, 12)


def test_rates_scale_with_the_output_stride() -> None:
    head = ASPPv2Head(16, 3, output_stride=16)
    assert head.dilations == (3, 6, 9, 12)
    assert [conv.padding for conv in head.branches] == [(3, 3), (6, 6), (9, 9), (12, 12)]
    head.set_output_stride(8)
    assert head.dilations == (6, 12, 18, 24) and head.output_stride == 8
    head.set_output_stride(4)
    assert head.dilations == (12, 24, 36, 48)
    with pytest.raises(ValueError, match=r"ASPPv2Head rates .* output stride 32: rate 6 would be dilation 1\.5"):
        head.set_output_stride(32)
    with pytest.raises(ValueError, match=r"rate 6 would be dilation 1\.5"):
        ASPPv2Head(16, 3, output_stride=32)
    assert ASPPv2Head(16, 3, output_stride=16, rates=(2, 4), rates_output_stride=16).dilations == (2, 4)


def test_pac_rates_scale_with_output_stride() -> None:
    head = PACHead(16, 3, output_stride=16, channels=8)
    assert head.dilations == (1, 3, 5, 7, 9)
    head.set_output_stride(8)  # doubled at OS 8, like ASPP's rates
    assert head.dilations == (2, 6, 10, 14, 18) and head.output_stride == 8
    assert head(torch.randn(2, 16, 5, 5)).shape == (2, 3, 5, 5)
    assert PACHead(16, 3, output_stride=8, channels=8).dilations == (2, 6, 10, 14, 18)
    with pytest.raises(ValueError, match=r"PAC rates .* output stride 32: rate 1 would be dilation 0.5"):
        head.set_output_stride(32)
    assert head.dilations == (2, 6, 10, 14, 18)  # unchanged after the failed call
