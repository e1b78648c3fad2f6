"""Known-answer tests for the pyramid residual block (prb paper Sec. III, Fig. 2; Tables I-IV)."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from segexp.config import CONF_DIR
from segexp.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from segexp.models.blocks.pyramid_residual import (
    FullResolutionAttention,
    PyramidPooling,
    PyramidResidualBlock,
    branch_channels,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pyramid_formula(c: int, d: int, levels: int) -> int:
    return levels * (c * d + d + d * c + c)


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


def fixed_block(mode: str, bins: tuple[int, ...] = (1, 2, 4), c: int = 6, d: int = 3, size: int = 5):
    torch.manual_seed(0)
    r, s = torch.randn(2, c, size, size), torch.randn(2, c, size, size)
    return PyramidResidualBlock(FixedUnit(r, s), reduction=d, bins=bins, mode=mode), r, s


def set_constant_maps(block: PyramidResidualBlock, biases: Tensor) -> None:
    """Zero the weights of the convs in front of the sigmoids and give them ``biases`` (levels x C): each
    sigmoid map is then the constant sigmoid(bias) per channel."""
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
@pytest.mark.parametrize("mode", ["full", "pyramid_only", "attention_only"])
def test_added_parameters_follow_the_formula(c: int, d: int, bins: tuple[int, ...], mode: str) -> None:
    unit = Bottleneck(c, c // 4)
    block = PyramidResidualBlock(unit, reduction=d, bins=bins, mode=mode)
    assert block.channels == c
    assert n_params(block) - n_params(unit) == pyramid_formula(c, d, len(bins))


@pytest.mark.parametrize(("c", "d"), [(2048, 256), (512, 128), (1024, 256), (2048, 1024), (256, 128), (7, 3)])
def test_attention_only_has_the_three_bin_pyramids_parameter_count(c: int, d: int) -> None:
    """Table III: "one conv-relu and one conv-sigmoid, while with the same number of parameters"."""
    pyramid, attention = PyramidPooling(c, d, (1, 2, 4)), FullResolutionAttention(c, d, groups=3)
    assert n_params(attention) == n_params(pyramid) == pyramid_formula(c, d, 3)
    assert attention.hidden.out_channels == 3 * d and attention.gate.groups == 3


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


def test_attention_only_with_constant_maps() -> None:
    block, r, s = fixed_block("attention_only")
    biases = torch.randn(3, 6)
    set_constant_maps(block, biases)
    attention = torch.sigmoid(biases).sum(dim=0)[None, :, None, None]
    with torch.no_grad():
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


def test_attention_only_is_per_pixel_conv_relu_conv_sigmoid_summed_over_groups() -> None:
    block, r, _ = fixed_block("attention_only", c=6, d=3)
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


def test_maps_follow_the_branch_size_and_stay_in_range() -> None:
    for mode in ("full", "attention_only"):
        block, r, _ = fixed_block(mode, bins=(1, 2, 4, 6), size=7)
        with torch.no_grad():
            maps = block.context(r)
        assert maps.shape == r.shape and bool((maps > 0).all()) and bool((maps < 4).all())


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
