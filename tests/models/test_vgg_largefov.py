"""Known-answer tests for DeepLab-LargeFOV (Chen et al. 2015, Sec. 3.1/4.1): the VGG-16 trunk at output stride 8
and the fc6-fc7-fc8 head, including loading torchvision-format VGG-16 weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.config import compose_config
from segexp.models.backbones.vgg import TORCHVISION_URL, VGG16
from segexp.models.build import build_segmentor
from segexp.models.heads.largefov import LargeFOVHead
from segexp.training.build import validate


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# VGG-16 "D": conv widths per block; the indices of the convs in torchvision's `features`
VGG16_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
FEATURE_STRIDES = {"conv1_2": 1, "pool1": 2, "conv2_2": 2, "pool2": 4, "conv3_3": 4, "pool3": 8, "conv4_3": 8,
                   "pool4": 8, "conv5_3": 8, "pool5": 8, "out": 8}
FEATURE_CHANNELS = {"conv1_2": 64, "pool1": 64, "conv2_2": 128, "pool2": 128, "conv3_3": 256, "pool3": 256,
                    "conv4_3": 512, "pool4": 512, "conv5_3": 512, "pool5": 512, "out": 512}


def conv_shapes(in_channels: int = 3) -> list[tuple[int, int]]:
    """(cin, cout) of the 13 convs."""
    shapes = []
    for widths in VGG16_WIDTHS:
        for width in widths:
            shapes.append((in_channels, width))
            in_channels = width
    return shapes


# --------------------------------------------------------------------------------------------------------
# A torchvision-format VGG-16 file (plain torchvision layout: 2x2 pools, classifier with fc6..fc8)
# --------------------------------------------------------------------------------------------------------


class TorchvisionVGG16(nn.Module):
    """torchvision's vgg16 layout (features / avgpool / classifier), random weights."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for block, widths in enumerate(VGG16_WIDTHS):
            cin = 3 if block == 0 else VGG16_WIDTHS[block - 1][-1]
            for width in widths:
                layers += [nn.Conv2d(cin, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        # skip_init: the default init of a 25088x4096 Linear is slow; filled with N(0, 1) below
        sizes = ((25088, 4096), (4096, 4096), (4096, 1000))
        linear = [nn.utils.skip_init(nn.Linear, n_in, n_out) for n_in, n_out in sizes]
        self.classifier = nn.Sequential(linear[0], nn.ReLU(True), nn.Dropout(), linear[1], nn.ReLU(True), nn.Dropout(),
                                        linear[2])
        for module in linear:
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor], nn.Module]:
    torch.manual_seed(0)
    reference = TorchvisionVGG16()
    for index in CONV_INDICES:  # non-zero biases, so that a dropped bias would show
        nn.init.normal_(reference.features[index].bias, std=0.1)
    state = reference.state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16-torchvision.pth"
    torch.save(state, path)
    return path, state, reference


def deeplab_trunk(x: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """DeepLab-LargeFOV's trunk by hand: 3x3/2 pad-1 pools 1-3, 3x3/1 pad-1 pools 4-5, conv5 dilation 2."""

    def conv(x: Tensor, index: int, dilation: int = 1) -> Tensor:
        weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
        return F.relu(F.conv2d(x, weight, bias, padding=dilation, dilation=dilation))

    out = {}
    for block, (indices, dilation, pool_stride) in enumerate(
        [((0, 2), 1, 2), ((5, 7), 1, 2), ((10, 12, 14), 1, 2), ((17, 19, 21), 1, 1), ((24, 26, 28), 2, 1)], start=1
    ):
        for index in indices:
            x = conv(x, index, dilation)
        out[f"conv{block}_{len(indices)}"] = x
        x = F.max_pool2d(x, kernel_size=3, stride=pool_stride, padding=1)
        out[f"pool{block}"] = x
    return out


# --------------------------------------------------------------------------------------------------------
# VGG16 trunk: names, geometry, parameters
# --------------------------------------------------------------------------------------------------------


def test_torchvision_indices_and_layer_geometry() -> None:
    model = VGG16()
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)] == list(CONV_INDICES)
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23, 30]
    assert len(model.features) == 31
    for index in CONV_INDICES:
        conv = model.features[index]
        dilation = 2 if index >= 24 else 1
        assert (conv.kernel_size, conv.dilation, conv.padding) == ((3, 3), (dilation,) * 2, (dilation,) * 2)
        assert conv.bias is not None
    strides = [model.features[i].stride for i in (4, 9, 16, 23, 30)]
    assert strides == [2, 2, 2, 1, 1]
    assert all(model.features[i].kernel_size == 3 and model.features[i].padding == 1 for i in (4, 9, 16, 23, 30))
    assert TORCHVISION_URL == "https://download.pytorch.org/models/vgg16-397923af.pth"


def test_trunk_parameter_count() -> None:
    formula = sum(3 * 3 * cin * cout + cout for cin, cout in conv_shapes())
    assert formula == 14_714_688  # = torchvision's 138,357,544 minus its classifier (123,642,856)
    assert n_params(VGG16()) == formula
    assert n_params(VGG16(in_channels=4)) == formula + 3 * 3 * 64


@pytest.mark.parametrize("size", [(65, 97), (64, 64)])
def test_feature_sizes_channels_and_strides(size: tuple[int, int]) -> None:
    model = VGG16().eval()
    assert model.output_stride == 8
    assert model.out_channels == 512
    assert model.feature_strides() == FEATURE_STRIDES
    assert model.feature_channels == FEATURE_CHANNELS
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    assert list(features) == list(FEATURE_STRIDES)
    for name, tensor in features.items():
        stride = FEATURE_STRIDES[name]
        assert tensor.shape == (1, FEATURE_CHANNELS[name], math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert features["out"] is features["pool5"]
    assert all((features[f"conv{b}_{len(w)}"] >= 0).all() for b, w in enumerate(VGG16_WIDTHS, 1))  # after ReLU
    # ceil(65 / 8) = 9 and ceil(97 / 8) = 13: not floor (8 x 12) as 2x2 pools would give
    if size == (65, 97):
        assert features["out"].shape[-2:] == (9, 13)


def test_output_stride_is_fixed_at_8() -> None:
    model = VGG16()
    model.set_output_stride(8)
    with pytest.raises(ValueError, match="DeepLab-LargeFOV.*fixed at.*8.*16"):
        model.set_output_stride(16)
    with pytest.raises(ValueError, match="fixed at"):
        VGG16(output_stride=16)


# --------------------------------------------------------------------------------------------------------
# Pretrained weights (torchvision format)
# --------------------------------------------------------------------------------------------------------


def test_torchvision_weights_load_and_reproduce_the_trunk(torchvision_file) -> None:
    path, state, reference = torchvision_file
    model = VGG16(pretrained=str(path)).eval()
    loaded = model.state_dict()
    assert loaded.keys() == {k for k in state if k.startswith("features.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)

    torch.manual_seed(1)
    x = torch.randn(2, 3, 29, 37)
    with torch.no_grad():
        features = model(x)
        # conv1_1, relu, conv1_2, relu: the same layers as torchvision's first four
        assert torch.equal(features["conv1_2"], reference.features[:4](x))
        expected = deeplab_trunk(x, state)
    assert features["out"].shape == (2, 512, 4, 5)
    for name, value in expected.items():
        torch.testing.assert_close(features[name], value, msg=name)
    torch.testing.assert_close(features["out"], expected["pool5"])


def test_pretrained_errors_name_key_and_file(tmp_path: Path) -> None:
    state = VGG16().state_dict()

    extra = tmp_path / "extra.pth"
    torch.save({**state, "features.31.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"unexpected keys.*extra\.pth.*features\.31\.weight"):
        VGG16(pretrained=str(extra))

    bad_shape = tmp_path / "shape.pth"
    torch.save({**state, "features.2.weight": torch.zeros(64, 32, 3, 3)}, bad_shape)
    with pytest.raises(ValueError, match=r"features\.2\.weight.*shape\.pth.*\(64, 32, 3, 3\).*\(64, 64, 3, 3\)"):
        VGG16(pretrained=str(bad_shape))

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "features.28.bias"}, missing)
    with pytest.raises(ValueError, match=r"missing\.pth lack keys: features\.28\.bias$"):
        VGG16(pretrained=str(missing))

    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        VGG16(pretrained=str(tmp_path / "nowhere.pth"))


# --------------------------------------------------------------------------------------------------------
# LargeFOVHead
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [21, 59])
def test_head_parameter_count(num_classes: int) -> None:
    c = num_classes
    formula = 3 * 3 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * c + c
    assert n_params(LargeFOVHead(512, c)) == formula
    if c == 21:  # Sec. 4.1: DeepLab-LargeFOV has 20.5M parameters (VGG-16 trunk + head, 21 PASCAL classes)
        assert 14_714_688 + formula == 20_505_429


def test_head_layers_init_and_dropout() -> None:
    torch.manual_seed(0)
    head = LargeFOVHead(512, 21, output_stride=8)
    assert (head.fc6.kernel_size, head.fc6.dilation, head.fc6.padding) == ((3, 3), (12, 12), (12, 12))
    assert head.fc7.kernel_size == head.fc8.kernel_size == (1, 1)
    assert head.feature_channels == 1024
    assert head.in_keys == ("out",)
    assert isinstance(head.drop6, nn.Dropout2d) and head.drop6.p == 0.5
    assert isinstance(head.drop7, nn.Dropout2d) and head.drop7.p == 0.5
    assert all(torch.count_nonzero(conv.bias) == 0 for conv in (head.fc6, head.fc7, head.fc8))
    assert abs(head.fc8.weight.std().item() - 0.01) < 0.001  # N(0, 0.01), 21,504 samples
    # kaiming fan-out: std sqrt(2 / (1024 * 9)) = 0.0147 for fc6, sqrt(2 / 1024) = 0.0442 for fc7
    assert abs(head.fc6.weight.std().item() - math.sqrt(2 / (1024 * 9))) < 0.001
    assert abs(head.fc7.weight.std().item() - math.sqrt(2 / 1024)) < 0.002
    assert isinstance(LargeFOVHead(512, 21, dropout=0.0).drop6, nn.Identity)


def test_head_forward_is_classify_of_forward_features() -> None:
    torch.manual_seed(0)
    head = LargeFOVHead(16, 5, channels=8, dilation=2).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        features = head.forward_features(x)
        # fc6 (dilation 2, padding 2) -> ReLU -> fc7 -> ReLU by hand, eval mode (no dropout)
        fc6 = F.relu(F.conv2d(x, head.fc6.weight, head.fc6.bias, padding=2, dilation=2))
        expected = F.relu(F.conv2d(fc6, head.fc7.weight, head.fc7.bias))
        torch.testing.assert_close(features, expected)
        torch.testing.assert_close(head(x), head.classify(features))
        torch.testing.assert_close(head.classify(features), F.conv2d(features, head.fc8.weight, head.fc8.bias))
    assert head(x).shape == (2, 5, 7, 9)

    head.train()
    torch.manual_seed(3)
    train_out = head(x)
    torch.manual_seed(3)
    assert torch.equal(train_out, head.classify(head.forward_features(x)))  # same dropout draws, same order
    # training: channel dropout (p = 0.5) after fc6's ReLU and before fc8, drawn in that order
    torch.manual_seed(4)
    with torch.no_grad():
        fc6 = F.dropout2d(F.relu(head.fc6(x)), 0.5, training=True)
        fc7 = F.dropout2d(F.relu(head.fc7(fc6)), 0.5, training=True)
        expected = head.fc8(fc7)
        torch.manual_seed(4)
        torch.testing.assert_close(head(x), expected)


def test_head_dilation_scales_with_output_stride() -> None:
    head = LargeFOVHead(8, 3, output_stride=8)
    for output_stride, dilation in [(4, 24), (16, 6), (32, 3), (8, 12)]:
        head.set_output_stride(output_stride)
        assert head.fc6.dilation == head.fc6.padding == (dilation, dilation)
        assert head.output_stride == output_stride
    with pytest.raises(ValueError, match=r"dilation 12.*output stride 8.*output stride 64 \(1\.5\)"):
        head.set_output_stride(64)
    # the dilation is given at output stride 8: a head built at 16 has the same field of view in image pixels
    assert LargeFOVHead(8, 3, output_stride=16).fc6.dilation == (6, 6)
    assert LargeFOVHead(8, 3).fc6.dilation == (12, 12)  # no output stride given: 8
    with pytest.raises(ValueError, match="in_keys"):
        LargeFOVHead(8, 3, in_keys=("out", "pool4"))


def test_init_from_subsamples_vgg_fc6_fc7(torchvision_file) -> None:
    path, state, _ = torchvision_file
    head = LargeFOVHead(512, 21, init_from=str(path))
    w0, w3 = state["classifier.0.weight"], state["classifier.3.weight"]
    assert torch.equal(head.fc6.weight, w0.view(4096, 512, 7, 7)[::4, :, ::3, ::3])
    assert torch.equal(head.fc6.bias, state["classifier.0.bias"][::4])
    assert torch.equal(head.fc7.weight, w3[::4, ::4].view(1024, 1024, 1, 1))
    assert torch.equal(head.fc7.bias, state["classifier.3.bias"][::4])
    # one tap by hand: fc6 filter 5, channel 7, tap (2, 1) is fc6 row 20, column 7 * 49 + 6 * 7 + 3
    assert head.fc6.weight[5, 7, 2, 1] == w0[20, 7 * 49 + 6 * 7 + 3]
    assert head.fc7.weight[3, 10, 0, 0] == w3[12, 40]
    assert torch.count_nonzero(head.fc8.bias) == 0  # fc8 stays DeepLab's N(0, 0.01) init


def test_init_from_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fc.pth"
    torch.save({"features.0.bias": torch.zeros(64)}, path)  # a trunk-only file
    with pytest.raises(ValueError, match=r"fc\.pth.*lack classifier\.0\.weight"):
        LargeFOVHead(512, 21, init_from=str(path))
    with pytest.raises(ValueError, match=r"init_from=.*fc\.pth.*channels=1024.*channels=512"):
        LargeFOVHead(512, 21, channels=512, init_from=str(path))
    with pytest.raises(ValueError, match=r"init_from=.*fc\.pth.*in_channels=256"):
        LargeFOVHead(256, 21, init_from=str(path))
    shape = tmp_path / "shape.pth"
    torch.save({"classifier.0.weight": torch.zeros(4096, 4096)}, shape)
    with pytest.raises(ValueError, match=r"shape\.pth.*classifier\.0\.weight.*\(4096, 4096\).*\(4096, 25088\)"):
        LargeFOVHead(512, 21, init_from=str(shape))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        LargeFOVHead(512, 21, init_from=str(tmp_path / "nowhere.pth"))


# --------------------------------------------------------------------------------------------------------
# Composition from the config
# --------------------------------------------------------------------------------------------------------


def test_vgg16_largefov_composes_from_the_config(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=vgg16", "head=largefov", "dataset=synthetic", "logger=csv",
                          f"output_dir={tmp_path}"])
    validate(cfg)
    model = build_segmentor(cfg, num_classes=5).eval()
    assert isinstance(model.backbone, VGG16) and isinstance(model.head, LargeFOVHead)
    assert model.head.in_channels == 512 and model.head.fc6.dilation == (12, 12)
    assert n_params(model) == 14_714_688 + 3 * 3 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 5 + 5
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert model.forward_raw(x)["out"].shape == (1, 5, 5, 6)  # ceil(33 / 8), ceil(47 / 8)
        assert model(x).shape == (1, 5, 33, 47)
    with pytest.raises(ValueError, match="fixed at"):
        model.set_output_stride(16)
