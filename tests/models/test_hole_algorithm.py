"""Known-answer tests for the hole algorithm (DeepLabv3 Sec. 3.1, FCRN Sec. 3.1): removing a stride and dilating
only the convolutions that follow it evaluates the same network densely.

With the same weights, the features at output stride s/k, taken at every k-th row and column, equal the features
at output stride s (eval mode, BN statistics randomised so BN is not the identity). This holds for any input size
(a 'same'-padded 3x3/2 conv and a 1x1/2 conv keep exactly the even positions of their dense output), at every
stage, with extra blocks and with multi-grid (any multi-grid: its factor multiplies the rate of every conv of a
unit at every output stride alike).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segexp.models.backbones.resnet import ResNet
from segexp.models.heads.fcn import FCNHead
from segexp.models.segmentor import Segmentor


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in float64 eval mode with random BN statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator, dtype=torch.float64) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator, dtype=torch.float64) * 0.2)
    return model


def assert_dense_version(model: ResNet, coarse: int, fine: int, x: torch.Tensor) -> None:
    """features(OS fine)[::k, ::k] == features(OS coarse) for every stage, k = the ratio of that stage's strides."""
    with torch.no_grad():
        model.set_output_stride(coarse)
        strides_coarse, sparse = model.feature_strides(), model(x)
        model.set_output_stride(fine)
        strides_fine, dense = model.feature_strides(), model(x)
    for name, expected in sparse.items():
        k = strides_coarse[name] // strides_fine[name]
        scale = expected.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(dense[name][..., ::k, ::k], expected, rtol=1e-7, atol=1e-9 * scale,
                                   msg=lambda m, name=name: f"{name} at OS {fine} vs {coarse}: {m}")


@pytest.mark.parametrize("depth", [18, 50, 101])
@pytest.mark.parametrize("coarse", [32, 16])
def test_half_output_stride_is_the_dense_network(depth: int, coarse: int) -> None:
    torch.manual_seed(depth)
    model = randomised(ResNet(depth, output_stride=coarse))
    assert_dense_version(model, coarse, coarse // 2, torch.randn(1, 3, 65, 65, dtype=torch.float64))


@pytest.mark.parametrize("multi_grid", [None, [1, 2, 1], [1, 2, 4]])
@pytest.mark.parametrize("coarse", [64, 32])
def test_extra_blocks_and_multi_grid_follow_the_hole_algorithm(multi_grid: list[int] | None, coarse: int) -> None:
    torch.manual_seed(1)
    model = randomised(ResNet(50, output_stride=coarse, extra_blocks=1, multi_grid=multi_grid))
    assert_dense_version(model, coarse, coarse // 2, torch.randn(1, 3, 65, 65, dtype=torch.float64))


@pytest.mark.parametrize(("depth", "multi_grid"), [(50, [2, 2, 2]), (18, [1, 2]), (18, [2, 1])])
def test_multi_grid_with_any_first_entry_and_basic_blocks(depth: int, multi_grid: list[int]) -> None:
    torch.manual_seed(2)
    model = randomised(ResNet(depth, output_stride=16, multi_grid=multi_grid))
    assert_dense_version(model, 16, 8, torch.randn(1, 3, 49, 49, dtype=torch.float64))


def test_any_input_size_and_two_removed_strides() -> None:
    torch.manual_seed(3)
    model = randomised(ResNet(50, output_stride=32, multi_grid=[1, 2, 4]))
    x = torch.randn(1, 3, 50, 37, dtype=torch.float64)  # even and odd, not a multiple of the stride
    assert_dense_version(model, 32, 16, x)
    assert_dense_version(model, 32, 8, x)  # OS 8 at every 4th position is OS 32
    assert_dense_version(model, 16, 4, x)


def test_first_unit_of_a_destrided_stage_keeps_the_previous_rate() -> None:
    model = ResNet(50, output_stride=8, multi_grid=[1, 2, 4])
    assert model.stage_dilations("layer3") == [(1,)] + [(2,)] * 5
    assert model.stage_dilations("layer4") == [(2,), (8,), (16,)]  # (entry 2, then 4 * (2, 4))
    r18 = ResNet(18, output_stride=8, multi_grid=[2, 1])
    assert r18.stage_dilations("layer3") == [(1, 2), (2, 2)]  # BasicBlock: conv1 held the stride, conv2 follows
    assert r18.stage_dilations("layer4") == [(4, 8), (4, 4)]  # multi-grid (2, 1) on entry 2 and stage rate 4


def test_a_segmentor_at_half_output_stride_predicts_the_same_logits_on_the_coarse_grid() -> None:
    """The whole model (backbone + dilated classifier, re-scaled with the output stride): trained at OS 16,
    evaluated at OS 8, it scores the OS-16 positions exactly as at OS 16."""
    torch.manual_seed(4)
    backbone = ResNet(50, output_stride=16)
    model = randomised(Segmentor(backbone, FCNHead(backbone.out_channels, 5, output_stride=16, kernel_size=3)))
    x = torch.randn(1, 3, 65, 65, dtype=torch.float64)
    with torch.no_grad():
        os16 = model.forward_raw(x)["out"]
        model.set_output_stride(8)
        os8 = model.forward_raw(x)["out"]
    assert os16.shape[-1] == 5 and os8.shape[-1] == 9
    torch.testing.assert_close(os8[..., ::2, ::2], os16, rtol=1e-7, atol=1e-9 * os16.abs().max().item())
    assert torch.equal(os8[..., ::2, ::2].argmax(1), os16.argmax(1))
