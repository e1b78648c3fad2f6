"""Known-answer tests for the FCN classifier head and the DeepLabv3 ASPP head (Sec. 3.3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segexp.models.backbones.frozen_bn import freeze_batchnorm
from segexp.models.backbones.resnet import ResNet
from segexp.models.heads.aspp import ASPPHead
from segexp.models.heads.fcn import FCNHead


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------------
# FCNHead
# --------------------------------------------------------------------------------------------------------


def test_fcn_single_conv_classifier() -> None:
    head = FCNHead(64, 21, kernel_size=5, dilation=12, dropout=0.1)  # FCRN's 5x5, dilation 12 classifier
    assert n_params(head) == 5 * 5 * 64 * 21 + 21
    assert head.classifier.padding == (24, 24)
    assert isinstance(head.dropout, nn.Dropout2d)
    x = torch.randn(2, 64, 33, 31)
    assert head(x).shape == (2, 21, 33, 31)
    # eval mode: dropout off, the head is exactly the dilated conv
    head.eval()
    expected = F.conv2d(x, head.classifier.weight, head.classifier.bias, padding=24, dilation=12)
    torch.testing.assert_close(head(x), expected)


def test_fcn_auxiliary_form() -> None:
    head = FCNHead(256, 19, channels=64)
    assert n_params(head) == 9 * 256 * 64 + 2 * 64 + 64 * 19 + 19
    assert head.classifier.kernel_size == (1, 1)
    assert head(torch.randn(2, 256, 9, 9)).shape == (2, 19, 9, 9)
    assert isinstance(FCNHead(8, 2).dropout, nn.Identity)


def test_fcn_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="odd"):
        FCNHead(8, 2, kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        FCNHead(8, 2, channels=16, kernel_size=3)


# --------------------------------------------------------------------------------------------------------
# ASPPHead: structure, rates and output stride
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rates", "image_pooling", "branches"),
    [((6, 12, 18), True, 5), ((6, 12, 18), False, 4), ((6, 12, 18, 24), True, 6), ((6, 12, 18, 24), False, 5)],
)
def test_aspp_branches_and_output_shape(rates: tuple[int, ...], image_pooling: bool, branches: int) -> None:
    head = ASPPHead(32, 5, output_stride=16, channels=16, rates=rates, image_pooling=image_pooling)
    assert head.num_branches == branches
    assert head.project[0].in_channels == branches * 16
    assert head(torch.randn(2, 32, 9, 11)).shape == (2, 5, 9, 11)




def test_large_rate_branch_degenerates_to_1x1() -> None:
    """Sec. 3.3 / Fig. 4: with a rate >= the feature size, only the centre tap of the 3x3 filter sees data."""
    head = ASPPHead(16, 3, output_stride=16, channels=8, rates=(18,)).eval()
    conv = head.atrous[0][0]
    x = torch.randn(2, 16, 9, 9)
    centre_only = F.conv2d(x, conv.weight[:, :, 1:2, 1:2])
    torch.testing.assert_close(conv(x), centre_only)


def test_image_pooling_branch_is_spatially_constant() -> None:
    head = ASPPHead(16, 3, output_stride=16, channels=8).eval()
    pool = head.image_pool
    nn.init.uniform_(pool.bn.running_mean, -0.1, 0.1)
    x = torch.randn(2, 16, 7, 5)
    with torch.no_grad():
        y = pool(x)
        expected = pool.relu(pool.bn(pool.conv(x.mean(dim=(2, 3), keepdim=True))))
    assert y.shape == (2, 8, 7, 5)
    torch.testing.assert_close(y, expected.expand_as(y))


# --------------------------------------------------------------------------------------------------------
# ASPPHead: batch size 1 (image-level BN) and training
# --------------------------------------------------------------------------------------------------------


def _train_step(head: nn.Module, batch: int) -> float:
    optimiser = torch.optim.SGD(head.parameters(), lr=0.1)
    x = torch.randn(batch, 16, 9, 9)
    target = torch.randint(0, 3, (batch, 9, 9))
    loss = F.cross_entropy(head(x), target)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss.item()


def test_aspp_trains_at_batch_2_and_explains_batch_1() -> None:
    torch.manual_seed(0)
    head = ASPPHead(16, 3, output_stride=16, channels=8).train()
    before = head.classifier.weight.detach().clone()
    assert torch.isfinite(torch.tensor(_train_step(head, batch=2)))
    assert not torch.equal(before, head.classifier.weight)
    assert head.image_pool.conv.weight.grad.abs().sum() > 0

    with pytest.raises(ValueError, match=r"batch size >= 2"):
        _train_step(head, batch=1)
    with torch.no_grad():
        assert head.eval()(torch.randn(1, 16, 9, 9)).shape == (1, 3, 9, 9)

    _train_step(ASPPHead(16, 3, output_stride=16, channels=8, image_pooling=False).train(), batch=1)
    _train_step(freeze_batchnorm(ASPPHead(16, 3, output_stride=16, channels=8)).train(), batch=1)  # stage 2: BN frozen


# --------------------------------------------------------------------------------------------------------
# DeepLabv3-ResNet101 parameter count from the architecture formula
# --------------------------------------------------------------------------------------------------------


def conv_params(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout


def bn_params(c: int) -> int:
    return 2 * c


def resnet101_formula() -> int:
    total = conv_params(7, 3, 64) + bn_params(64)  # stem
    cin = 64
    for index, (width, units) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3))):
        cout = 4 * width
        for unit in range(units):
            total += conv_params(1, cin, width) + bn_params(width)
            total += conv_params(3, width, width) + bn_params(width)
            total += conv_params(1, width, cout) + bn_params(cout)
            if unit == 0:  # projection shortcut (channel change, plus stride for index > 0)
                total += conv_params(1, cin, cout) + bn_params(cout)
            cin = cout
        del index
    return total


def aspp_formula(cin: int = 2048, c: int = 256, rates: int = 3, classes: int = 21) -> int:
    branch_1x1 = conv_params(1, cin, c) + bn_params(c)
    branch_3x3 = rates * (conv_params(3, cin, c) + bn_params(c))
    image_pool = conv_params(1, cin, c) + bn_params(c)
    project = conv_params(1, (2 + rates) * c, c) + bn_params(c)
    classifier = conv_params(1, c, classes) + classes  # with bias
    return branch_1x1 + branch_3x3 + image_pool + project + classifier


def test_deeplabv3_resnet101_parameter_count() -> None:
    backbone, head = ResNet(101, output_stride=16), ASPPHead(2048, 21, output_stride=16)
    assert n_params(backbone) == resnet101_formula() == 42_500_160  # torchvision resnet101 minus its fc
    assert n_params(head) == aspp_formula() == 15_540_501
    assert n_params(backbone) + n_params(head) == 58_040_661


def test_fcn_classifier_dilation_scales_with_the_output_stride() -> None:
    """FCRN's 5x5 classifier with dilation 12 built at 1/8: dilation 24 at 1/4 and 6 at 1/16 (same field of
    view in image pixels); a dilation that is not an integer at the asked stride fails naming the head."""
    head = FCNHead(64, 21, output_stride=8, kernel_size=5, dilation=12)
    assert head.classifier.dilation == (12, 12) and head.classifier.padding == (24, 24)
    head.set_output_stride(4)
    assert head.classifier.dilation == (24, 24) and head.classifier.padding == (48, 48)
    head.set_output_stride(16)
    assert head.classifier.dilation == (6, 6) and head.classifier.padding == (12, 12)
    head.set_output_stride(8)
    assert head.classifier.dilation == (12, 12) and head.classifier.padding == (24, 24)
    with pytest.raises(ValueError, match=r"FCNHead: .*dilation 12 .* output stride 8.* output stride 64 \(1.5\)"):
        head.set_output_stride(64)
    pointwise = FCNHead(64, 21, output_stride=16)  # 1x1: no spatial extent, any stride
    pointwise.set_output_stride(4)
    assert pointwise.classifier.dilation == (1, 1) and pointwise.classifier.padding == (0, 0)


def test_a_part_without_set_output_stride_cannot_follow_another_stride() -> None:
    from segexp.models.backbones.resnet import ResNet
    from segexp.models.segmentor import Segmentor

    class Plain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = Segmentor(ResNet(18, output_stride=16), Plain())
    model.set_output_stride(16)  # its own stride: nothing to change
    with pytest.raises(ValueError, match=r"head \(Plain\) has no set_output_stride"):
        model.set_output_stride(8)


class TwoStageHead(nn.Module):
    """A head reading two stages: both resized to the first one's grid, concatenated, 1x1 classifier."""

    def __init__(self, in_channels: list[int], num_classes: int, output_stride: int,
                 in_keys: tuple[str, ...] = ("layer3", "out")) -> None:
        super().__init__()
        self.in_keys = in_keys
        self.classifier = nn.Conv2d(sum(in_channels), num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        return self.classifier(torch.cat([F.interpolate(f, size=size) for f in features], dim=1))


def test_backbone_describes_its_features() -> None:
    from segexp.models.backbones.resnet import ResNet

    model = ResNet(50, output_stride=16)
    assert model.feature_channels == {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048, "out": 2048}
    assert model.feature_strides() == {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16, "out": 16}
    model.set_output_stride(8)
    assert model.feature_strides() == {"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8, "out": 8}
    features = model(torch.randn(1, 3, 64, 64))
    for name, channels in model.feature_channels.items():
        assert features[name].shape[1] == channels and features[name].shape[-1] == 64 // model.feature_strides()[name]


def test_heads_read_the_features_named_by_in_keys(make_cfg) -> None:
    from segexp.config import ConfigError
    from segexp.models.backbones.resnet import ResNet
    from segexp.models.build import build_segmentor, input_channels
    from segexp.models.segmentor import Segmentor

    base = ["backbone=resnet18", "backbone.output_stride=8", "head=fcn", "dataset=synthetic", "logger=csv"]
    model = build_segmentor(make_cfg("head.in_keys=[layer2]", base=base), num_classes=6)
    assert model.head.classifier.in_channels == 128  # layer2's channels, from the backbone's description
    assert model.forward_raw(torch.randn(2, 3, 64, 64))["out"].shape == (2, 6, 8, 8)  # layer2: stride 8
    with pytest.raises(ConfigError, match=r"no feature 'layer9'; its features are layer1, layer2, layer3, layer4, out"):
        build_segmentor(make_cfg("head.in_keys=[layer9]", base=base), num_classes=6)
    backbone = ResNet(18, output_stride=16)
    channels = input_channels(backbone, ["layer3", "out"])
    assert channels == [256, 512]
    two = Segmentor(backbone, TwoStageHead(channels, 3, output_stride=16)).eval()
    assert two.forward_raw(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 4, 4)


@pytest.mark.parametrize("head", ["ASPPHead", "FCNHead", "PACHead"])
def test_one_feature_heads_refuse_several_in_keys(head: str) -> None:
    from segexp.models.heads.aspp import ASPPHead
    from segexp.models.heads.fcn import FCNHead
    from segexp.models.heads.pac import PACHead

    cls = {"ASPPHead": ASPPHead, "FCNHead": FCNHead, "PACHead": PACHead}[head]
    with pytest.raises(ValueError, match=rf"{head} reads one feature map, got in_keys=\['layer3', 'out'\]"):
        cls(64, 3, output_stride=16, in_keys=["layer3", "out"])
