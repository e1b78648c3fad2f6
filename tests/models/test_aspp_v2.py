"""Known-answer tests for DeepLab-V2's ASPP-L head (Chen et al., TPAMI 2017, Sec. 3.1, Fig. 4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segexp.config import compose_config
from segexp.models.build import build_segmentor
from segexp.models.heads.aspp_v2 import ASPPv2Head
from segexp.training.build import validate


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summed_convs(head: ASPPv2Head, x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    return sum(F.conv2d(x, conv.weight, conv.bias, padding=d, dilation=d) for conv, d in zip(head.branches, dilations))


@pytest.mark.parametrize(("cin", "classes"), [(2048, 21), (32, 5)])
def test_parameter_count(cin: int, classes: int) -> None:
    head = ASPPv2Head(cin, classes, output_stride=8)
    assert n_params(head) == 4 * (9 * cin * classes + classes)


def test_output_is_the_sum_of_four_atrous_classifiers() -> None:
    torch.manual_seed(0)
    head = ASPPv2Head(8, 3, output_stride=8)
    assert head.dilations == (6, 12, 18, 24)
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        y = head(x)
        assert y.shape == (2, 3, 13, 11)
        torch.testing.assert_close(y, summed_convs(head, x, (6, 12, 18, 24)))
        head.set_output_stride(16)  # the same weights at half the rates
        torch.testing.assert_close(head(x), summed_convs(head, x, (3, 6, 9, 12)))


def test_released_model_init() -> None:
    torch.manual_seed(0)
    head = ASPPv2Head(512, 21, output_stride=8)
    for conv in head.branches:
        assert conv.bias.abs().sum() == 0
        assert 0.009 < conv.weight.std().item() < 0.011




def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"non-empty list of positive integers, got \[\]"):
        ASPPv2Head(16, 3, output_stride=8, rates=())
    with pytest.raises(ValueError, match=r"got \[6, 0\]"):
        ASPPv2Head(16, 3, output_stride=8, rates=(6, 0))
    with pytest.raises(ValueError, match=r"ASPPv2Head reads one feature map"):
        ASPPv2Head(16, 3, output_stride=8, in_keys=("layer3", "out"))


def test_composes_and_builds_from_the_config() -> None:
    cfg = compose_config(["backbone=resnet18", "head=aspp_v2", "dataset=synthetic", "logger=csv"])
    validate(cfg)
    model = build_segmentor(cfg, num_classes=5)
    head = model.head
    assert isinstance(head, ASPPv2Head)
    assert head.in_channels == 512 and head.num_classes == 5
    assert head.dilations == (3, 6, 9, 12)  # resnet18 at output stride 16
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    model.set_output_stride(8)
    assert head.dilations == (6, 12, 18, 24)
