"""Known-answer tests for the pyramid residual block (prb paper Sec. III, Fig. 2; Tables I-IV)."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from segexp.config import CONF_DIR
from segexp.models.backbones.frozen_bn import FrozenBatchNorm2d
from segexp.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from segexp.models.blocks.pyramid_residual import (
    FullResolutionAttention,
    PyramidBranch,
    PyramidPooling,
    PyramidResidualBlock,
    branch_channels,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pyramid_formula(c: int, d: int, levels: int) -> int:
    return levels * (c * d + d + d * c + c)


def one_map_attention_formula(c: int, d: int, levels: int) -> int:
    """conv C -> nD with bias, conv nD -> C with bias."""
    return c * levels * d + levels * d + levels * d * c + c


class FixedUnit(nn.Module):
    """A residual unit whose branch and shortcut are given tensors; its bn2 only tells the block C."""

    def __init__(self, residual: Tensor, shortcut: Tensor) -> None:
        super().__init__()
        self.bn2 = nn.BatchNorm2d(residual.shape[1])
        self.r, self.s = residual, shortcut

    def residual(self, x: Tensor) -> Tensor:
        return self.r

    def shortcut(self, x: Tensor) -> Tensor:
        return self.s


def fixed_block(mode: str, bins: tuple[int, ...] = (1, 2, 4), c: int = 6, d: int = 3, size: int = 5, **kwargs):
    torch.manual_seed(0)
    r, s = torch.randn(2, c, size, size), torch.randn(2, c, size, size)
    return PyramidResidualBlock(FixedUnit(r, s), reduction=d, bins=bins, mode=mode, **kwargs), r, s


def set_constant_maps(block: PyramidResidualBlock, biases: Tensor) -> None:
    """Zero the weights of the convs in front of the sigmoids and give them ``biases`` (levels x C; one row for
    attention_only's single map): each sigmoid map is then the constant sigmoid(bias) per channel."""
    with torch.no_grad():
        if isinstance(block.context, PyramidPooling):
            for branch, bias in zip(block.context.branches, biases):
                branch.expand.weight.zero_()
                branch.expand.bias.copy_(bias)
        else:
            block.context.gate.weight.zero_()
            block.context.gate.bias.copy_(biases.flatten())


# --------------------------------------------------------------------------------------------------------
# Parameters (Tables I-III)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("c", "d", "bins"), [(64, 16, (1, 2, 4)), (64, 128, (1,)), (32, 8, (1, 2, 4, 6))])
@pytest.mark.parametrize(
    "options",
    [{"mode": "full"}, {"mode": "full", "relu": "between_convs"}, {"mode": "pyramid_only"},
     {"mode": "attention_only", "attention_maps": "per_level"}],
)
def test_added_parameters_follow_the_formula(c: int, d: int, bins: tuple[int, ...], options: dict) -> None:
    unit = Bottleneck(c, c // 4)
    block = PyramidResidualBlock(unit, reduction=d, bins=bins, **options)
    assert block.channels == c
    assert n_params(block) - n_params(unit) == pyramid_formula(c, d, len(bins))


@pytest.mark.parametrize(("c", "d", "bins"), [(64, 16, (1, 2, 4)), (64, 128, (1,)), (32, 8, (1, 2, 4, 6))])
def test_one_map_attention_parameters_follow_the_formula(c: int, d: int, bins: tuple[int, ...]) -> None:
    unit = Bottleneck(c, c // 4)
    block = PyramidResidualBlock(unit, reduction=d, bins=bins, mode="attention_only")  # attention_maps=one
    assert n_params(block) - n_params(unit) == one_map_attention_formula(c, d, len(bins))
    assert one_map_attention_formula(c, d, len(bins)) == pyramid_formula(c, d, len(bins)) - (len(bins) - 1) * c


@pytest.mark.parametrize(("c", "d"), [(2048, 256), (512, 128), (1024, 256), (2048, 1024), (256, 128), (7, 3)])
def test_attention_only_parameter_counts_against_the_three_bin_pyramid(c: int, d: int) -> None:
    """Table III: "one conv-relu and one conv-sigmoid, while with the same number of parameters": per-level maps
    match exactly; one map is 2C short (4,096 of 3,152,640 at C = 2048, D = 256)."""
    pyramid = PyramidPooling(c, d, (1, 2, 4))
    per_level = FullResolutionAttention(c, d, groups=3, maps="per_level")
    one = FullResolutionAttention(c, d, groups=3)
    assert n_params(per_level) == n_params(pyramid) == pyramid_formula(c, d, 3)
    assert per_level.hidden.out_channels == 3 * d and per_level.gate.groups == 3
    assert n_params(one) == n_params(pyramid) - 2 * c
    assert one.hidden.out_channels == 3 * d and one.gate.groups == 1 and one.gate.out_channels == c
    if (c, d) == (2048, 256):
        assert (n_params(pyramid), n_params(one)) == (3_152_640, 3_148_544)


def test_branch_channels_come_from_the_last_bn_of_the_branch() -> None:
    assert branch_channels(Bottleneck(256, 64)) == 256  # bn3, not bn2 (64)
    assert branch_channels(BasicBlock(32, 32)) == 32
    frozen = ResNet(18, output_stride=16, frozen_bn=True, unit_wrappers={"res5b": partial(PyramidResidualBlock,
                                                                                          reduction=8)})
    assert frozen.layer4[1].channels == 512  # FrozenBatchNorm2d has num_features too


# --------------------------------------------------------------------------------------------------------
# Hand computations (Sec. III, Table III)
# --------------------------------------------------------------------------------------------------------


def test_full_mode_with_constant_attention_maps() -> None:
    block, r, s = fixed_block("full")
    biases = torch.randn(3, 6)
    set_constant_maps(block, biases)
    attention = torch.sigmoid(biases).sum(dim=0)[None, :, None, None]  # A = sum over bins of sigmoid(b)
    with torch.no_grad():
        torch.testing.assert_close(block.context(r), attention.expand_as(r))
        torch.testing.assert_close(block(torch.empty(0)), torch.relu(r * attention + s))


def test_pyramid_only_adds_the_pyramid_output_next_to_the_branch() -> None:
    block, r, s = fixed_block("pyramid_only")
    biases = torch.randn(3, 6)
    set_constant_maps(block, biases)
    pyramid = torch.sigmoid(biases).sum(dim=0)[None, :, None, None]  # sigmoid kept: P in (0, 3)
    with torch.no_grad():
        torch.testing.assert_close(block(torch.empty(0)), torch.relu(r + pyramid + s))


def test_attention_only_per_level_with_constant_maps() -> None:
    block, r, s = fixed_block("attention_only", attention_maps="per_level")
    biases = torch.randn(3, 6)
    set_constant_maps(block, biases)
    attention = torch.sigmoid(biases).sum(dim=0)[None, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(block(torch.empty(0)), torch.relu(r * attention + s))


def test_attention_only_is_one_sigmoid_map_by_default() -> None:
    """Table III's "one conv-sigmoid": with the gate's weights zeroed and biases (0, ln 3, -ln 3, ...) the map
    is sigmoid(bias) = 1/2, 3/4, 1/4 per channel, one map (not a sum of three)."""
    block, r, s = fixed_block("attention_only", c=3)
    assert block.attention_maps == "one"
    set_constant_maps(block, torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]]))
    attention = torch.tensor([0.5, 0.75, 0.25])[None, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(block.context(r), attention.expand_as(r))
        torch.testing.assert_close(block(torch.empty(0)), torch.relu(r * attention + s))


def test_pyramid_branch_on_a_constant_map_is_the_two_convs_on_relu_of_the_value() -> None:
    """Constant r = v per channel: every pooled cell is v, every upsampled map constant, so each branch is
    sigmoid(W2 (W1 relu(v) + b1) + b2), computed with matrices."""
    torch.manual_seed(1)
    value = torch.randn(6)
    r = value[None, :, None, None].expand(1, 6, 8, 8).contiguous()
    block = PyramidResidualBlock(FixedUnit(r, torch.zeros_like(r)), reduction=4, bins=(1, 2, 4))
    expected = torch.zeros(6)
    for branch in block.context.branches:
        w1, b1 = branch.reduce.weight[:, :, 0, 0], branch.reduce.bias
        w2, b2 = branch.expand.weight[:, :, 0, 0], branch.expand.bias
        expected = expected + torch.sigmoid(w2 @ (w1 @ torch.relu(value) + b1) + b2)
    with torch.no_grad():
        torch.testing.assert_close(block.context(r), expected[None, :, None, None].expand_as(r))
        torch.testing.assert_close(block(torch.empty(0)), torch.relu(r * expected[None, :, None, None]))


def test_finest_level_at_its_own_size_is_pointwise() -> None:
    """On a 4 x 4 map the 4 x 4 level pools and upsamples by the identity: per pixel sigmoid(W2 W1 relu(r))."""
    torch.manual_seed(2)
    r = torch.randn(2, 6, 4, 4)
    branch = PyramidPooling(6, 3, (4,)).branches[0]
    w1, w2 = branch.reduce.weight[:, :, 0, 0], branch.expand.weight[:, :, 0, 0]
    hidden = torch.einsum("dc,bchw->bdhw", w1, torch.relu(r)) + branch.reduce.bias[None, :, None, None]
    expected = torch.sigmoid(torch.einsum("cd,bdhw->bchw", w2, hidden) + branch.expand.bias[None, :, None, None])
    with torch.no_grad():
        torch.testing.assert_close(branch(r), expected)


def test_attention_only_per_level_is_per_pixel_conv_relu_conv_sigmoid_summed_over_groups() -> None:
    block, r, _ = fixed_block("attention_only", c=6, d=3, attention_maps="per_level")
    attention: FullResolutionAttention = block.context
    w1, b1 = attention.hidden.weight[:, :, 0, 0], attention.hidden.bias
    hidden = torch.relu(torch.einsum("kc,bchw->bkhw", w1, r) + b1[None, :, None, None])  # (2, 9, 5, 5)
    expected = torch.zeros_like(r)
    for g in range(3):  # group g: hidden channels 3g..3g+2 -> attention channels 6g..6g+5
        w2 = attention.gate.weight[6 * g:6 * (g + 1), :, 0, 0]
        b2 = attention.gate.bias[6 * g:6 * (g + 1)]
        logits = torch.einsum("cd,bdhw->bchw", w2, hidden[:, 3 * g:3 * (g + 1)]) + b2[None, :, None, None]
        expected = expected + torch.sigmoid(logits)
    with torch.no_grad():
        torch.testing.assert_close(attention(r), expected)


def test_one_map_attention_is_per_pixel_conv_relu_conv_sigmoid() -> None:
    block, r, _ = fixed_block("attention_only", c=6, d=3)
    attention: FullResolutionAttention = block.context
    w1, b1 = attention.hidden.weight[:, :, 0, 0], attention.hidden.bias
    w2, b2 = attention.gate.weight[:, :, 0, 0], attention.gate.bias
    hidden = torch.relu(torch.einsum("kc,bchw->bkhw", w1, r) + b1[None, :, None, None])  # (2, 9, 5, 5)
    expected = torch.sigmoid(torch.einsum("ck,bkhw->bchw", w2, hidden) + b2[None, :, None, None])
    with torch.no_grad():
        torch.testing.assert_close(attention(r), expected)


@pytest.mark.parametrize(("options", "top"), [({"mode": "full"}, 4), ({"mode": "full", "relu": "between_convs"}, 4),
                                              ({"mode": "attention_only", "attention_maps": "per_level"}, 4),
                                              ({"mode": "attention_only"}, 1)])
def test_maps_follow_the_branch_size_and_stay_in_range(options: dict, top: int) -> None:
    block, r, _ = fixed_block(bins=(1, 2, 4, 6), size=7, **options)
    with torch.no_grad():
        maps = block.context(r)
    assert maps.shape == r.shape and bool((maps > 0).all()) and bool((maps < top).all())
    if top == 1:  # one sigmoid map: saturates at 1, where a sum of four would reach 4
        with torch.no_grad():
            block.context.gate.bias.fill_(30.0)
            block.context.gate.weight.zero_()
            torch.testing.assert_close(block.context(r), torch.ones_like(r))


# --------------------------------------------------------------------------------------------------------
# Where a branch's ReLU sits (Sec. III-A's listing, or SE-style between the convs)
# --------------------------------------------------------------------------------------------------------


def hand_set_branch(block: PyramidResidualBlock) -> None:
    """C = 2, D = 1: W1 = [1, 1], b1 = 0.5; W2 = [2, -1]^T, b2 = (0, 1)."""
    branch = block.context.branches[0]
    with torch.no_grad():
        branch.reduce.weight.copy_(torch.tensor([[1.0, 1.0]])[:, :, None, None])
        branch.reduce.bias.copy_(torch.tensor([0.5]))
        branch.expand.weight.copy_(torch.tensor([[2.0], [-1.0]])[:, :, None, None])
        branch.expand.bias.copy_(torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(
    ("relu", "attention", "output"),
    [
        # pool -> ReLU: relu(-2, 1) = (0, 1); h = 0 + 1 + 0.5 = 1.5; logits (3, -0.5)
        ("after_pool", (0.9525741268, 0.3775406688), (3 - 2 * 0.9525741268, 0.3775406688)),
        # conv -> ReLU: h = relu(-2 + 1 + 0.5) = 0; logits (0, 1)
        ("between_convs", (0.5, 0.7310585786), (2.0, 0.7310585786)),
    ],
)
def test_each_relu_placement_against_a_hand_computation(relu: str, attention: tuple, output: tuple) -> None:
    """A 3 x 3 branch r constant per channel, (-2, 1), and a shortcut (3, 0): the 1x1 bin pools r's values and
    upsampling spreads the map back unchanged, so A = sigmoid(logits) and the block gives relu(r * A + s)."""
    r = torch.tensor([-2.0, 1.0])[None, :, None, None].expand(1, 2, 3, 3).contiguous()
    s = torch.tensor([3.0, 0.0])[None, :, None, None].expand(1, 2, 3, 3).contiguous()
    block = PyramidResidualBlock(FixedUnit(r, s), reduction=1, bins=(1,), relu=relu)
    hand_set_branch(block)
    with torch.no_grad():
        torch.testing.assert_close(block.context(r), torch.tensor(attention)[None, :, None, None].expand_as(r))
        torch.testing.assert_close(block(torch.empty(0)), torch.tensor(output)[None, :, None, None].expand_as(r))


def test_the_papers_listing_is_the_default_placement() -> None:
    block = PyramidResidualBlock(Bottleneck(32, 8), reduction=4)
    assert [branch.relu for branch in block.context.branches] == ["after_pool"] * 3
    assert OmegaConf.load(CONF_DIR / "block" / "prb.yaml").relu == "after_pool"


@pytest.mark.parametrize("relu", ["after_pool", "between_convs"])
def test_after_pool_the_two_convs_are_one_rank_d_linear_map(relu: str) -> None:
    """With the ReLU after the pooling, conv D->C after conv C->D is one 1x1 conv of weight W2 W1 (rank D < C)
    and bias W2 b1 + b2; with the ReLU between them it is not."""
    torch.manual_seed(3)
    c, d = 8, 3
    branch = PyramidBranch(c, d, bin_size=2, relu=relu)
    r = torch.randn(2, c, 6, 6)
    w1, b1 = branch.reduce.weight[:, :, 0, 0], branch.reduce.bias
    w2, b2 = branch.expand.weight[:, :, 0, 0], branch.expand.bias
    merged = nn.Conv2d(c, c, kernel_size=1)
    with torch.no_grad():
        merged.weight.copy_((w2 @ w1)[:, :, None, None])
        merged.bias.copy_(w2 @ b1 + b2)
        pooled = branch.pool(r)
        assert bool((branch.reduce(pooled) < 0).any())  # the ReLU between the convs has something to cut
        one_map = F.interpolate(torch.sigmoid(merged(torch.relu(pooled))), size=(6, 6), mode="bilinear",
                                align_corners=False)
        assert int(torch.linalg.matrix_rank(w2 @ w1)) == d
        if relu == "after_pool":
            torch.testing.assert_close(branch(r), one_map)
        else:
            assert (branch(r) - one_map).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------
# On a ResNet (Table IV placement), output stride, gradients
# --------------------------------------------------------------------------------------------------------


def test_wrapping_resnet50_res5c_keeps_shape_and_unit_and_follows_the_output_stride() -> None:
    torch.manual_seed(0)
    plain = ResNet(50, output_stride=16).eval()
    model = copy.deepcopy(plain)
    unit = model.layer4[2]
    block = model.wrap_unit("res5c", partial(PyramidResidualBlock, reduction=64))
    assert model.layer4[2] is block and model.unit("res5c") is block and block.unit is unit
    assert block.channels == 2048
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = plain(x)["out"]
        assert model(x)["out"].shape == expected.shape == (1, 2048, 2, 2)
        # attention maps that are exactly 1 everywhere (3 * sigmoid(-log 2) = 1) turn the block into the unit
        set_constant_maps(block, torch.full((3, 2048), -math.log(2.0)))
        torch.testing.assert_close(model(x)["out"], expected)
    assert unit.conv2.dilation == (2, 2)
    model.set_output_stride(8)
    assert unit.conv2.dilation == (4, 4) and unit.conv2.padding == (4, 4)
    with torch.no_grad():
        assert model(x)["out"].shape == (1, 2048, 4, 4)


def test_the_constructor_wraps_by_name() -> None:
    model = ResNet(50, output_stride=16, unit_wrappers={"res5c": partial(PyramidResidualBlock, reduction=32,
                                                                         bins=(1, 2))})
    block = model.layer4[2]
    assert isinstance(block, PyramidResidualBlock) and block.bins == (1, 2) and block.reduction == 32
    assert not isinstance(model.layer4[1], PyramidResidualBlock)


@pytest.mark.parametrize(
    ("depth", "names", "indices"),
    [(50, ("res5c", "res4f", "res4c"), (5, 2)), (101, ("res5c", "res4b22", "res4b19"), (22, 19))],
)
def test_table_iv_placements(depth: int, names: tuple[str, ...], indices: tuple[int, ...]) -> None:
    """res5c, then the layer3 units at ``indices``: res4f = layer3.5, res4c = layer3.2 (ResNet-50); res4b22 =
    layer3.22 (the last), res4b19 = layer3.19 (ResNet-101)."""
    model = ResNet(depth, output_stride=16)
    originals = [model.unit(name) for name in names]
    assert originals[1:] == [model.layer3[i] for i in indices]
    assert originals[0] is model.layer4[2]
    for name in names:
        model.wrap_unit(name, partial(PyramidResidualBlock, reduction=8))
    wrapped = [i for i, unit in enumerate(model.layer3) if isinstance(unit, PyramidResidualBlock)]
    assert wrapped == sorted(indices)
    for name, original in zip(names, originals):
        assert isinstance(model.unit(name), PyramidResidualBlock) and model.unit(name).unit is original
    assert model.layer3[indices[0]].channels == 1024 and model.layer4[2].channels == 2048
    assert [isinstance(u, PyramidResidualBlock) for u in model.layer4] == [False, False, True]


@pytest.mark.parametrize("mode", ["full", "pyramid_only", "attention_only"])
def test_gradients_reach_the_new_convs(mode: str) -> None:
    torch.manual_seed(0)
    block = PyramidResidualBlock(Bottleneck(32, 8), reduction=4, mode=mode).train()
    out = block(torch.randn(2, 32, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    convs = [m for m in block.context.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == (2 if mode == "attention_only" else 6)
    for conv in convs:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert block.unit.conv1.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# Arguments and config
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": 0}, r"reduction .* >= 1, got 0"),
        ({"reduction": 2.5}, r"reduction .* got 2\.5"),
        ({"bins": []}, r"bins must be a non-empty .* got \[\]"),
        ({"bins": [1, 0]}, r"bins .* positive integers .* got \[1, 0\]"),
        ({"bins": [1, 2, 2]}, r"bins must be distinct, got \[1, 2, 2\]"),
        ({"mode": "both"}, r"mode must be one of full, pyramid_only, attention_only \(Table III\), got 'both'"),
        ({"relu": "before_pool"}, r"relu must be one of after_pool, between_convs .* got 'before_pool'"),
        ({"attention_maps": 2}, r"attention_maps must be one of one, per_level .* got 2"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PyramidResidualBlock(BasicBlock(8, 8), **kwargs)


def test_the_wrapped_module_must_be_a_residual_unit() -> None:
    with pytest.raises(ValueError, match=r"residual\(\) and shortcut\(\), got Conv2d"):
        PyramidResidualBlock(nn.Conv2d(8, 8, 1))

    class NoNorm(nn.Module):
        def residual(self, x: Tensor) -> Tensor:
            return x

        def shortcut(self, x: Tensor) -> Tensor:
            return x

    with pytest.raises(ValueError, match=r"branch channels of NoNorm: .* bn3 or bn2"):
        PyramidResidualBlock(NoNorm())


def test_block_config_makes_the_papers_block() -> None:
    node = OmegaConf.load(CONF_DIR / "block" / "prb.yaml")
    assert list(node.units) == ["res5c"]
    make = instantiate({k: v for k, v in node.items() if k != "units"})
    block = make(unit=Bottleneck(64, 16))
    assert isinstance(block, PyramidResidualBlock)
    assert (block.reduction, block.bins, block.mode) == (256, (1, 2, 4), "full")
    assert (block.relu_place, block.attention_maps) == ("after_pool", "one")


def test_block_group_places_the_block_on_named_units_from_the_config(make_cfg) -> None:
    from segexp.config import ConfigError
    from segexp.models.build import build_segmentor
    from segexp.training.build import validate

    base = ["backbone=resnet50", "head=fcn", "dataset=synthetic", "logger=csv", "block=prb"]
    cfg = make_cfg("block.units=[res5c,res4f]", "block.reduction=64", "block.mode=pyramid_only", base=base)
    validate(cfg)  # block.units is read by the builder, not a constructor argument
    backbone = build_segmentor(cfg, num_classes=3).backbone
    wrapped = {f"{stage}.{i}" for stage in ("layer3", "layer4") for i, unit in enumerate(getattr(backbone, stage))
               if isinstance(unit, PyramidResidualBlock)}
    assert wrapped == {"layer4.2", "layer3.5"}
    assert backbone.layer4[2].reduction == 64 and backbone.layer4[2].mode == "pyramid_only"
    se_style = build_segmentor(make_cfg("block.relu=between_convs", base=base), num_classes=3).backbone.layer4[2]
    assert [branch.relu for branch in se_style.context.branches] == ["between_convs"] * 3
    with pytest.raises(Exception, match=r"relu must be one of after_pool, between_convs .* got 'after_conv'"):
        build_segmentor(make_cfg("block.relu=after_conv", base=base), num_classes=3)
    with pytest.raises(ConfigError, match=r"block\.units=\[\]: name the residual units"):
        build_segmentor(make_cfg("block.units=[]", base=base), num_classes=3)
    with pytest.raises(ConfigError, match=r"VGG16 has no residual units"):
        build_segmentor(make_cfg("backbone=vgg16", "head=largefov", base=base), num_classes=3)
    with pytest.raises(ConfigError, match=r"res9z"):
        build_segmentor(make_cfg("block.units=[res9z]", base=base), num_classes=3)


def test_prb_t5_row_models_have_the_sizes_of_the_layer_formulas(tmp_path) -> None:
    """prb.t5 under smoke: each row's model is the baseline ResNet-101 + 1x1 classifier plus, per PRB,
    len(bins) * (2 C D + D + C) parameters (D = 256; C = 2048 at res5c, 1024 at res4b22 / res4b19); DeepLab-V2
    replaces the classifier by four 3x3 ones (4 * (9 * 2048 * 21 + 21))."""
    from segexp.models.build import build_segmentor
    from segexp.tables.plan import compose, plan_train_job
    from segexp.tables.spec import load_profile, load_table

    spec, smoke = load_table("prb.t5"), load_profile("smoke")

    def params(row: str) -> int:
        job = plan_train_job(spec, spec.row(row), smoke, 0, tmp_path)
        model = build_segmentor(compose(job.overrides, 0), num_classes=21)
        return sum(p.numel() for p in model.parameters())

    def prb(channels: int, reduction: int = 256, bins: int = 3) -> int:
        return bins * (2 * channels * reduction + reduction + channels)

    trunk = params("baseline") - (2048 * 21 + 21)
    assert params("one") - params("baseline") == prb(2048)
    assert params("three") - params("baseline") == prb(2048) + 2 * prb(1024)
    assert params("deeplab_v2") == trunk + 4 * (9 * 2048 * 21 + 21)


# --------------------------------------------------------------------------------------------------------
# The prb protocol as composed (card: DeepLab-V2's Caffe recipe)
# --------------------------------------------------------------------------------------------------------


PRB_TABLES = [f"prb.t{n}" for n in range(1, 7)]


@pytest.mark.parametrize("table", PRB_TABLES)
def test_every_prb_row_freezes_bn_samples_labels_on_the_score_grid_and_gives_the_classifier_10x(table: str) -> None:
    """Every `full` row of Tables I-VI (Table V's DeepLab-V2 row included) composes frozen BN, labels on the
    score grid and a 10x classifier rate, and no BN momentum or late freezing (nothing left to update)."""
    from segexp.tables.plan import plan_train_job
    from segexp.tables.spec import load_profile, load_table

    spec, full = load_table(table), load_profile("full")
    trained = {}
    for row in spec.rows:
        if not row.runnable or row.is_eval:
            continue
        source = trained.get(row.init_from) if row.init_from else None
        job = trained[row.name] = plan_train_job(spec, row, full, 0, Path("/x"), source=source)
        cfg = job.cfg
        assert cfg.backbone.frozen_bn is True, row.name
        assert cfg.model.downsample_labels is True, row.name
        assert cfg.schedule.head_lr_mult == 10, row.name
        assert cfg.model.bn_momentum is None and cfg.model.freeze_bn is False, row.name
    assert trained


def test_the_composed_prb_model_keeps_bn_fixed_and_trains_the_classifier_at_10x(make_cfg) -> None:
    """prb.t1's d256 row as `full` composes it (ImageNet weights left out): every BN of the ResNet is a
    FrozenBatchNorm2d whose statistics and scale/shift survive an SGD step unchanged, while the PRB convs (base
    rate) and the 1x1 classifier (10x the base rate) move."""
    from segexp.models.build import build_segmentor
    from segexp.tables.plan import compose, plan_train_job
    from segexp.tables.spec import load_profile, load_table

    spec = load_table("prb.t1")
    job = plan_train_job(spec, spec.row("d256"), load_profile("full"), 0, Path("/x"))
    cfg = compose([*job.overrides, "backbone.pretrained=null"], 0)
    model = build_segmentor(cfg, num_classes=21).train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    frozen = {name: m for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert len(frozen) == 53  # ResNet-50: stem + 16 units x 3 + 4 projection shortcuts
    with torch.no_grad():  # ImageNet-like statistics, not the identity init
        for m in frozen.values():
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    block = model.backbone.layer4[2]
    assert isinstance(block, PyramidResidualBlock) and block.reduction == 256

    schedule = instantiate(cfg.schedule)
    groups = {g["name"]: g for g in schedule.param_groups(model.backbone, [model.head])}
    assert set(groups) == {"backbone", "head"}
    assert groups["head"]["lr"] == pytest.approx(10 * cfg.schedule.lr) and cfg.schedule.lr == pytest.approx(2.5e-4)
    assert groups["backbone"]["lr"] == pytest.approx(cfg.schedule.lr)
    head_ids = {id(p) for p in groups["head"]["params"]}
    assert head_ids == {id(p) for p in model.head.parameters()}
    assert all(id(p) in {id(q) for q in groups["backbone"]["params"]} for p in block.context.parameters())

    optimizer = torch.optim.SGD(list(groups.values()), lr=cfg.schedule.lr, momentum=0.9)
    logits = model(torch.randn(2, 3, 65, 65))
    F.cross_entropy(logits, torch.randint(0, 21, (2, 65, 65))).backward()
    optimizer.step()
    after = model.state_dict()
    for name in frozen:
        for buffer in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(after[f"{name}.{buffer}"], before[f"{name}.{buffer}"]), f"{name}.{buffer}"
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("backbone.layer4.2.context.") for k in moved)
    assert any(k.startswith("head.") for k in moved)
