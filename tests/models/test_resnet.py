"""Known-answer tests for the dilated ResNet (DeepLabv3 Sec. 3.1-3.2.1, 4.1) and FrozenBatchNorm2d."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from segexp.models.backbones.frozen_bn import FrozenBatchNorm2d, freeze_batchnorm
from segexp.models.backbones.resnet import TORCHVISION_URLS, ResNet, load_pretrained


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_geometry(model: nn.Module) -> dict[str, tuple]:
    return {name: (m.stride, m.dilation, m.padding) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# --------------------------------------------------------------------------------------------------------
# Architecture: torchvision names and parameter counts
# --------------------------------------------------------------------------------------------------------

# torchvision's published parameter counts minus the fc layer (512*1000+1000 or 2048*1000+1000).
TORCHVISION_TRUNK_PARAMS = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
}


@pytest.mark.parametrize("depth", sorted(TORCHVISION_TRUNK_PARAMS))
def test_parameter_count_matches_torchvision_trunk(depth: int) -> None:
    assert n_params(ResNet(depth, output_stride=32)) == TORCHVISION_TRUNK_PARAMS[depth]


def test_state_dict_names_follow_torchvision() -> None:
    keys = ResNet(50).state_dict().keys()
    for key in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer2.0.conv2.weight",
        "layer3.5.bn3.bias",
        "layer4.2.conv3.weight",
    ]:
        assert key in keys
    assert not any(k.startswith(("fc.", "avgpool")) for k in keys)
    # 53 convs + 53 BNs (weight, bias, running_mean, running_var, num_batches_tracked) = 318 keys.
    assert len(keys) == 53 + 53 * 5
    keys18 = ResNet(18).state_dict().keys()
    assert "layer1.0.downsample.0.weight" not in keys18  # identity shortcut, as in torchvision
    assert "layer2.0.downsample.0.weight" in keys18
    assert set(TORCHVISION_URLS) == {18, 34, 50, 101, 152}


def test_channels_and_forward_keys() -> None:
    r18, r50 = ResNet(18), ResNet(50)
    assert (r18.out_channels, r18.aux_channels) == (512, 256)
    assert (r50.out_channels, r50.aux_channels) == (2048, 1024)
    model = ResNet(18, output_stride=16, extra_blocks=2).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["layer1", "layer2", "layer3", "layer4", "layer5", "layer6", "out"]
    assert feats["out"] is feats["layer6"]
    assert feats["layer3"].shape[1] == model.aux_channels
    assert feats["out"].shape[1] == model.out_channels


# --------------------------------------------------------------------------------------------------------
# Output stride (Sec. 3.1) and cascaded blocks (Sec. 3.2)
# --------------------------------------------------------------------------------------------------------


def expected_stage_strides(output_stride: int, num_stages: int) -> list[int]:
    return [min(4 * 2**i, output_stride) for i in range(num_stages)]


@pytest.mark.parametrize("depth", [18, 50])
def test_feature_size_is_ceil_input_over_output_stride(depth: int) -> None:
    model = ResNet(depth, output_stride=32).eval()
    params = n_params(model)
    size = 65
    x = torch.randn(1, 3, size, size)
    for os_ in (32, 16, 8):
        model.set_output_stride(os_)
        with torch.no_grad():
            feats = model(x)
        strides = expected_stage_strides(os_, 4)
        for name, stride in zip(["layer1", "layer2", "layer3", "layer4"], strides):
            assert feats[name].shape[-2:] == (math.ceil(size / stride),) * 2, (os_, name)
        assert feats["out"].shape[-2:] == (math.ceil(size / os_),) * 2  # 3, 5, 9
        assert n_params(model) == params
    assert n_params(ResNet(depth, output_stride=8)) == params


@pytest.mark.parametrize("depth", [18, 50])
def test_feature_size_with_block7(depth: int) -> None:
    model = ResNet(depth, output_stride=256, extra_blocks=3).eval()
    assert model.nominal_output_stride == 256
    size = 129 + 64 * (depth == 18)
    x = torch.randn(1, 3, size, size)
    for os_ in (256, 128, 64):
        model.set_output_stride(os_)
        with torch.no_grad():
            feats = model(x)
        assert feats["out"].shape[-2:] == (math.ceil(size / os_),) * 2  # 1, 2, 3; R-18: 1, 2, 4
        for i, stride in enumerate(expected_stage_strides(os_, 7)):
            assert feats[f"layer{i + 1}"].shape[-1] == math.ceil(size / stride)
    small = ResNet(18, output_stride=8, extra_blocks=3).eval()
    with torch.no_grad():
        assert small(torch.randn(1, 3, 64, 64))["out"].shape[-2:] == (8, 8)


def test_extra_blocks_replicate_layer4() -> None:
    model = ResNet(50, extra_blocks=3)
    for name in ("layer5", "layer6", "layer7"):
        stage = getattr(model, name)
        assert len(stage) == 3
        assert [n_params(u) for u in stage[1:]] == [n_params(u) for u in model.layer4[1:]]
        # first unit: its input is layer4's 2048 channels, so it is one more 2048->512->2048 unit with the
        # (subsampled) identity shortcut, like layer4's later units: no projection
        assert n_params(stage[0]) == n_params(model.layer4[1])
        assert stage[0].conv1.in_channels == 2048
    # random init: BN affine = (1, 0), convs He-initialised (std = sqrt(2 / fan_out))
    assert torch.all(model.layer7[2].bn3.weight == 1) and torch.all(model.layer7[2].bn3.bias == 0)
    w = model.layer6[1].conv2.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.05)


@pytest.mark.parametrize(
    ("output_stride", "extra_blocks"), [(2, 0), (3, 0), (12, 0), (64, 0), (24, 1), (512, 3), (0, 0)]
)
def test_invalid_output_stride(output_stride: int, extra_blocks: int) -> None:
    with pytest.raises(ValueError, match=rf"output_stride.*got {output_stride}"):
        ResNet(18, output_stride=output_stride, extra_blocks=extra_blocks)


def test_valid_range_grows_with_extra_blocks() -> None:
    assert ResNet(18, output_stride=64, extra_blocks=1).output_stride == 64
    assert ResNet(18, output_stride=4).output_stride == 4
    with pytest.raises(ValueError, match="between 4 and 64"):
        ResNet(18, output_stride=128, extra_blocks=1)


def test_invalid_multi_grid_and_depth() -> None:
    with pytest.raises(ValueError, match=r"multi_grid=\[1, 2\].*expected 3"):
        ResNet(50, multi_grid=[1, 2])
    with pytest.raises(ValueError, match=r"multi_grid=\[1, 2, 4\].*expected 2"):
        ResNet(18, multi_grid=[1, 2, 4])
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="extra_blocks"):
        ResNet(18, extra_blocks=4)


# --------------------------------------------------------------------------------------------------------
# Dilations, multi-grid (Sec. 3.2.1) and in-place re-configuration (Sec. 4.1, Table 10)
# --------------------------------------------------------------------------------------------------------


def test_dilations_os16_multi_grid() -> None:
    model = ResNet(50, output_stride=16, multi_grid=[1, 2, 4])
    # hole algorithm: the formerly strided conv of res5a keeps the entry rate 1 * MG[0]; the units after the
    # removed stride get 2 * (2, 4)
    assert model.stage_dilations("layer4") == [(1,), (4,), (8,)]
    assert model.stage_dilations("layer3") == [(1,)] * 6
    assert model.layer3[0].conv2.stride == (2, 2) and model.layer3[0].downsample[0].stride == (2, 2)
    assert model.layer4[0].conv2.stride == (1, 1) and model.layer4[0].downsample[0].stride == (1, 1)
    for conv in (model.layer4[i].conv2 for i in range(3)):
        assert conv.padding == conv.dilation


def test_dilations_os8() -> None:
    model = ResNet(50, output_stride=8, multi_grid=[1, 2, 4])
    assert model.stage_dilations("layer3") == [(1,)] + [(2,)] * 5  # entry rate 1, then the stage rate 2
    assert model.stage_dilations("layer4") == [(2,), (8,), (16,)]  # entry 2 * 1, then 4 * (2, 4)
    assert model.stage_dilations("layer2") == [(1,)] * 4
    assert model.layer2[0].conv2.stride == (2, 2)
    assert model.layer3[0].conv2.stride == (1, 1) and model.layer3[0].downsample[0].stride == (1, 1)


def test_dilations_block7_and_basic_block() -> None:
    # Tables 3/4 "block7 + MG (1, 2, 1)" at OS 16: block4..7 rates 2, 4, 8, 16 times the unit rates, except
    # each first unit's formerly strided conv, at the previous block's rate 1, 2, 4, 8 times MG[0] = 1.
    model = ResNet(50, output_stride=16, multi_grid=[1, 2, 1], extra_blocks=3)
    assert model.stage_dilations("layer4") == [(1,), (4,), (2,)]
    assert model.stage_dilations("layer5") == [(2,), (8,), (4,)]
    assert model.stage_dilations("layer7") == [(8,), (32,), (16,)]
    assert model.layer5[0].conv2.stride == (1, 1)
    # without atrous (OS 256) every extra block strides in its first unit; MG still applies
    model.set_output_stride(256)
    assert model.layer7[0].conv2.stride == (2, 2)
    assert model.stage_dilations("layer7") == [(1,), (2,), (1,)]
    r18 = ResNet(18, output_stride=8, multi_grid=[1, 2])
    # BasicBlock: conv1 held the stride (entry rate 2), conv2 follows it (stage rate 4); unit 2 at 4 * 2
    assert r18.stage_dilations("layer4") == [(2, 4), (8, 8)]
    assert r18.layer4[0].conv1.stride == (1, 1) and r18.layer4[0].downsample[0].stride == (1, 1)


def test_set_output_stride_matches_construction_and_keeps_weights() -> None:
    model = ResNet(18, output_stride=16, multi_grid=[1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_output_stride(8)
    assert model.output_stride == 8
    assert conv_geometry(model) == conv_geometry(ResNet(18, output_stride=8, multi_grid=[1, 2]))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.set_output_stride(16)
    assert conv_geometry(model) == conv_geometry(ResNet(18, output_stride=16, multi_grid=[1, 2]))


def _randomise_bn_stats(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def test_atrous_stages_equal_interleaved_lower_rate_outputs() -> None:
    """Sec. 3.1 / Eq. (1): a stage at rate 2r on a dense map = the stage at rate r on each 2x2 polyphase grid.

    layer3 + layer4 at OS 4 (rates 2 then 4, 4*MG[0] then 8*MG) evaluated on a map f equal, on the sub-grid
    f[a::2, b::2], the same weights at OS 8 (rates 1 then 2, 2*MG[0] then 4*MG); the dense OS-4 output is the
    interleaving of the four OS-8 outputs.
    """
    torch.manual_seed(0)
    model = ResNet(18, output_stride=4, multi_grid=[1, 2]).double().eval()
    _randomise_bn_stats(model)
    f = torch.randn(1, 128, 18, 17, dtype=torch.float64)  # layer2 output (odd width on purpose)
    with torch.no_grad():
        dense = model.layer4(model.layer3(f))
        model.set_output_stride(8)
        for a in (0, 1):
            for b in (0, 1):
                sparse = model.layer4(model.layer3(f[..., a::2, b::2]))
                torch.testing.assert_close(dense[..., a::2, b::2], sparse, rtol=1e-10, atol=1e-10)


def test_reconfiguring_round_trip_reproduces_output() -> None:
    model = ResNet(18, output_stride=16).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        y16 = model(x)["out"]
        model.set_output_stride(8)
        y8 = model(x)["out"]
        model.set_output_stride(16)
        assert torch.equal(model(x)["out"], y16)
    assert y8.shape[-2:] == (9, 9) and y16.shape[-2:] == (5, 5)


# --------------------------------------------------------------------------------------------------------
# Receptive field: measured input-gradient support vs. the analytic field of view
# --------------------------------------------------------------------------------------------------------


def analytic_receptive_field(model: ResNet) -> int:
    """Field of view of the longest (3x3-conv) path: rf += (k - 1) * dilation * jump, jump *= stride."""
    layers = [(7, 2, 1), (3, 2, 1)]  # stem conv, max pool
    for name in model.stage_names:
        for unit in getattr(model, name):
            for conv in (unit.conv1, unit.conv2):  # BasicBlock: both 3x3
                layers.append((conv.kernel_size[0], conv.stride[0], conv.dilation[0]))
    rf, jump = 1, 1
    for kernel, stride, dilation in layers:
        rf += (kernel - 1) * dilation * jump
        jump *= stride
    return rf


def measured_support(model: ResNet, height: int = 640, width: int = 16) -> tuple[int, int]:
    """(extent, centre) in rows of the input-gradient support of the output unit centred on row height/2.

    All convs get a positive constant weight 1/fan_in, BN is the identity (eval, mean 0, var 1), the input is
    positive, so no activation is clipped by ReLU and no contributions cancel: the support is exactly the
    geometric field of view. The max pool (whose gradient only reaches the arg-max) is swapped for an
    average pool of the same geometry.
    """
    model = model.double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    model.maxpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
    x = torch.ones(1, 3, height, width, dtype=torch.float64, requires_grad=True)
    out = model(x)["out"]
    row = (height // 2) // model.output_stride  # centred on input row height/2
    out[0, :, row, 0].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum(dim=(0, 2)) > 0).flatten()
    first, last = rows.min().item(), rows.max().item()
    assert first > 0 and last < height - 1, "support clipped by the image border"
    return last - first + 1, (first + last) // 2


def test_receptive_field_of_dilated_resnet18() -> None:
    os32 = ResNet(18, output_stride=32)
    os8 = ResNet(18, output_stride=8)
    os8_mg = ResNet(18, output_stride=8, multi_grid=[1, 2])
    rf32, rf8, rf8_mg = (analytic_receptive_field(m) for m in (os32, os8, os8_mg))
    assert rf32 == 435  # the well-known field of view of ResNet-18

    # Hole algorithm: each removed stride's own conv keeps its rate (1 for layer3's, 2 for layer4's, reading a
    # grid of jump 8: (k-1) * 1 * 8 = 16 and (k-1) * 2 * 8 = 32 px, as the strided convs at jumps 8 and 16);
    # every later conv has rate x jump = its strided jump (2 * 8 = 16, 4 * 8 = 32): the field of view is kept.
    assert rf8 == rf32 == 435
    assert analytic_receptive_field(ResNet(18, output_stride=16)) == 435
    # MG (1, 2): unit 2 of layer4 at rate 8 instead of 4 -> its two 3x3 convs each add (k-1) * 4 * 8 ...
    assert rf8_mg == rf8 + 2 * 2 * 4 * 8 == 563
    # ... and, in jump x rate, so do they at OS 32 (rate 2 instead of 1 at jump 32): the same field
    assert analytic_receptive_field(ResNet(18, output_stride=32, multi_grid=[1, 2])) == 563

    for model, rf in ((os32, rf32), (os8, rf8), (os8_mg, rf8_mg)):
        extent, centre = measured_support(model)
        assert extent == rf
        assert centre == 320


# --------------------------------------------------------------------------------------------------------
# Pretrained loading
# --------------------------------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, torch.Tensor], path: Path, with_fc: bool = True) -> str:
    state = dict(state)
    if with_fc:
        state["fc.weight"] = torch.randn(1000, 2048 if "layer4.0.conv3.weight" in state else 512)
        state["fc.bias"] = torch.randn(1000)
    torch.save(state, path)
    return str(path)


def test_pretrained_resnet50_loads_into_os16_model(tmp_path: Path) -> None:
    source = ResNet(50, output_stride=32)
    _randomise_bn_stats(source)
    path = save_checkpoint(source.state_dict(), tmp_path / "r50.pth")
    model = ResNet(50, output_stride=16, pretrained=path)
    assert model.output_stride == 16
    loaded, expected = model.state_dict(), source.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_pretrained_wrapped_and_into_extra_blocks_and_frozen(tmp_path: Path) -> None:
    source = ResNet(18, output_stride=32)
    _randomise_bn_stats(source)
    state = source.state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {**state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}}, path)

    deeper = ResNet(18, output_stride=16, extra_blocks=1, pretrained=str(path))  # layer5 missing: allowed
    loaded = deeper.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert any(k.startswith("layer5.") for k in loaded)

    frozen = ResNet(18, output_stride=16, pretrained=str(path), frozen_bn=True)
    assert isinstance(frozen.layer2[0].bn1, FrozenBatchNorm2d)
    assert torch.equal(frozen.layer2[0].bn1.running_var, state["layer2.0.bn1.running_var"])
    load_pretrained(frozen, str(path))  # also works after freezing (num_batches_tracked dropped)
    torch.save({"model": state}, tmp_path / "model.pth")
    load_pretrained(ResNet(18), tmp_path / "model.pth")


def test_pretrained_errors(tmp_path: Path) -> None:
    state = ResNet(18, output_stride=32).state_dict()

    extra = save_checkpoint({**state, "layer9.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys.*extra\.pth.*layer9\.0\.conv1\.weight"):
        ResNet(18, pretrained=extra)

    bad_shape = save_checkpoint({**state, "conv1.weight": torch.zeros(64, 4, 7, 7)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"conv1\.weight.*shape\.pth.*\(64, 4, 7, 7\).*\(64, 3, 7, 7\)"):
        ResNet(18, pretrained=bad_shape)

    partial = {k: v for k, v in state.items() if not k.startswith("layer1.0.conv1")}
    missing = save_checkpoint(partial, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth lack keys: layer1\.0\.conv1\.weight"):
        ResNet(18, pretrained=missing)

    nowhere = str(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ResNet(18, pretrained=nowhere)


# --------------------------------------------------------------------------------------------------------
# FrozenBatchNorm2d
# --------------------------------------------------------------------------------------------------------


def test_frozen_bn_is_a_fixed_affine_map() -> None:
    bn = nn.BatchNorm2d(8)
    _randomise_bn_stats(bn)
    frozen = freeze_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert not isinstance(frozen, nn.modules.batchnorm._BatchNorm)
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    x = torch.randn(4, 8, 5, 5)
    expected = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(frozen(x), expected.detach())
    torch.testing.assert_close(frozen(x), bn.eval()(x).detach())


def test_frozen_resnet_train_equals_eval_and_has_no_bn_parameters() -> None:
    model = ResNet(18, output_stride=16, frozen_bn=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 20
    conv_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert n_params(model) == conv_params
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 48, 48)
    y_train = model.train()(x)["out"]
    y_eval = model.eval()(x)["out"]
    assert torch.equal(y_train, y_eval)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # Lightning's sync_batchnorm=True
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())


def test_frozen_bn_state_dict_round_trip_with_bn_checkpoint() -> None:
    reference = ResNet(18, output_stride=16)
    _randomise_bn_stats(reference)
    checkpoint = reference.state_dict()  # has num_batches_tracked
    frozen = freeze_batchnorm(ResNet(18, output_stride=16))
    frozen.load_state_dict(checkpoint, strict=True)  # num_batches_tracked silently dropped
    # float64: in float32 the two formulas' rounding differs by ~1e-5 on outputs of ~1e1 (flaky at default tol)
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(frozen.double()(x)["out"], reference.double().eval()(x)["out"])
    back = ResNet(18, output_stride=16)
    result = back.load_state_dict(frozen.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in frozen.state_dict().items())


# --------------------------------------------------------------------------------------------------------
# Residual units by name, wrapped from config
# --------------------------------------------------------------------------------------------------------


class Marker(nn.Module):
    """Wraps a unit and counts the forward passes that go through it (output unchanged)."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.unit(x)


@pytest.mark.parametrize(
    ("depth", "name", "torchvision"),
    [(101, "res4b22", "layer3.22"), (101, "res4b19", "layer3.19"), (101, "res3b3", "layer2.3"),
     (101, "res5c", "layer4.2"), (50, "res4f", "layer3.5"), (50, "res4c", "layer3.2"), (50, "res5c", "layer4.2"),
     (152, "res4b35", "layer3.35"), (18, "res3b", "layer2.1"), (101, "res2c", "layer1.2")],
)
def test_caffe_unit_names_map_to_torchvision_units(depth: int, name: str, torchvision: str) -> None:
    model = ResNet(depth, output_stride=16)
    stage, index = torchvision.removeprefix("layer").split(".")
    assert model.unit(name) is getattr(model, f"layer{stage}")[int(index)] is model.unit(torchvision)


def test_res4b22_is_the_last_unit_of_resnet101_layer3_and_unknown_names_list_the_valid_ones() -> None:
    model = ResNet(101, output_stride=16)
    assert model.unit("res4b22") is model.layer3[-1] and len(model.layer3) == 23
    with pytest.raises(ValueError, match=r"unknown residual unit 'res4f' for ResNet-101: .*res4b22"):
        model.unit("res4f")  # ResNet-50's name: ResNet-101 numbers layer3's units b1..b22


def test_a_wrapped_unit_is_on_the_forward_path_and_follows_the_output_stride() -> None:
    from functools import partial

    torch.manual_seed(0)
    plain = ResNet(18, output_stride=16).eval()
    wrapped = copy.deepcopy(plain)
    marker = wrapped.wrap_unit("res5b", Marker)
    assert isinstance(wrapped.layer4[1], Marker) and marker.calls == 0
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(wrapped(x)["out"], plain(x)["out"])  # the marker is the identity
    assert marker.calls == 1
    wrapped.set_output_stride(8)
    assert wrapped.stage_dilations("layer4")[1] == (4, 4)  # the unit inside the wrapper got layer4's rate
    with pytest.raises(ValueError, match="must keep the wrapped unit"):
        wrapped.wrap_unit("layer4.0", partial(lambda unit: nn.Identity()))


@pytest.mark.usefixtures("trusted_targets")  # a class of this test module: not an allowed package
def test_unit_wrappers_come_from_the_config(make_cfg) -> None:
    from segexp.models.build import build_segmentor

    cfg = make_cfg("+backbone.unit_wrappers.res5b._target_=tests.models.test_resnet.Marker",
                   "+backbone.unit_wrappers.res5b._partial_=true")
    model = build_segmentor(cfg, num_classes=6)
    assert isinstance(model.backbone.layer4[1], Marker)
    model.eval()(torch.randn(1, 3, 64, 64))
    assert model.backbone.layer4[1].calls == 1


# FCRN dropout in the residual branch of named units
# --------------------------------------------------------------------------------------------------------


def test_residual_dropout_drops_only_the_branch_and_is_the_unit_in_eval_mode() -> None:
    from segexp.models.backbones.residual_dropout import ResidualDropout

    torch.manual_seed(0)
    plain = ResNet(18, output_stride=16).eval()
    torch.manual_seed(0)  # the same initial weights: wrapping draws no random numbers
    dropped = ResNet(18, output_stride=16, dropout_units=["res5b", "layer4.0"], dropout=0.5)
    assert isinstance(dropped.layer4[1], ResidualDropout) and isinstance(dropped.unit("res5a"), ResidualDropout)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dropped.eval()(x)["out"], plain(x)["out"])  # eval: dropout is the identity
    unit = dropped.layer4[1].train()
    features = torch.relu(torch.randn(2, 512, 4, 4))
    with torch.no_grad():
        out = unit(features)
        branch, shortcut = unit.unit.residual(features), unit.unit.shortcut(features)
    # every element is relu(m * branch + shortcut) with m = 0 (dropped) or 1 / (1 - p) = 2 (kept)
    dropped_el = torch.isclose(out, torch.relu(shortcut), atol=1e-6)
    kept_el = torch.isclose(out, torch.relu(2 * branch + shortcut), atol=1e-5)
    assert (dropped_el | kept_el).all()
    differs = ~torch.isclose(torch.relu(shortcut), torch.relu(2 * branch + shortcut), atol=1e-5)
    assert 0.4 < (dropped_el & differs).sum() / differs.sum() < 0.6  # about half the branch is dropped


def test_dropout_units_come_from_the_config_and_bad_names_name_the_key(make_cfg) -> None:
    from segexp.config import ConfigError
    from segexp.models.backbones.residual_dropout import ResidualDropout
    from segexp.models.build import build_segmentor

    base = ["backbone=resnet50", "head=fcn", "dataset=synthetic", "logger=csv"]
    model = build_segmentor(make_cfg("backbone.dropout_units=[res5b,res5c]", "backbone.dropout=0.3", base=base), 6)
    wrapped = [model.backbone.unit(name) for name in ("res5b", "res5c")]
    assert all(isinstance(w, ResidualDropout) and w.dropout.p == 0.3 for w in wrapped)
    assert not isinstance(model.backbone.unit("res5a"), ResidualDropout)
    with pytest.raises(ConfigError, match=r"backbone\.dropout_units: unknown residual unit 'res5z'"):
        build_segmentor(make_cfg("backbone.dropout_units=[res5z]", base=base), 6)


def _bottleneck_params(inplanes: int, planes: int) -> int:
    """Layer formula of a bottleneck unit with an identity shortcut: 1x1 in->p, 3x3 p->p, 1x1 p->4p (no bias),
    each followed by a BN with a scale and a shift per channel."""
    convs = inplanes * planes + 9 * planes * planes + planes * 4 * planes
    norms = 2 * (planes + planes + 4 * planes)
    return convs + norms


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("extra_blocks", [1, 2, 3])
def test_extra_blocks_add_three_identity_shortcut_units_each(depth: int, extra_blocks: int) -> None:
    """DeepLabv3 Sec. 3.2: block5-7 are copies of block4 (3 units of 2048->512->2048); a TF-slim unit projects
    its shortcut only when the depth changes, so each extra block adds exactly 3 identity-shortcut units."""
    base = n_params(ResNet(depth, output_stride=16))
    deeper = n_params(ResNet(depth, output_stride=16, extra_blocks=extra_blocks))
    assert deeper - base == extra_blocks * 3 * _bottleneck_params(2048, 512)


def test_extra_block_identity_shortcut_is_subsampled_where_the_block_strides() -> None:
    from segexp.models.backbones.resnet import Subsample

    model = ResNet(18, output_stride=64, extra_blocks=1).eval()
    shortcut = model.layer5[0].downsample
    assert isinstance(shortcut, Subsample) and shortcut.stride == (2, 2)
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(1, 2, 5, 5)
    assert torch.equal(model.layer5[0].shortcut(x), x[..., ::2, ::2])  # rows/cols 0, 2, 4: ceil(5 / 2)
    model.set_output_stride(32)
    assert shortcut.stride == (1, 1) and torch.equal(model.layer5[0].shortcut(x), x)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 70))["out"].shape[-2:] == (3, 3)
