"""Known-answer tests for the PSPNet pyramid pooling head (Zhao et al. 2017, Sec. 3.2; CSAIL ADE20K baselines)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.config import compose_config
from segexp.models.backbones.resnet import ResNet
from segexp.models.build import build_segmentor
from segexp.models.heads.pooling import PoolingBranch
from segexp.models.heads.psp import PSPHead
from segexp.training.build import validate


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that eval-mode BN is not the identity."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)


def conv_bn_relu_by_hand(x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, padding: int = 0) -> Tensor:
    """Eval-mode conv (no bias) -> BN -> ReLU with the running statistics, written out."""
    y = F.conv2d(x, conv.weight, padding=padding)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return F.relu((y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None])


@pytest.fixture
def head() -> PSPHead:
    torch.manual_seed(0)
    head = PSPHead(6, 4, bins=(1, 2, 3, 6), channels=5)
    randomise_bn(head)
    return head.eval()


def test_parameter_count_ade20k_configuration() -> None:
    c = 150
    formula = 4 * (512 * 512 + 2 * 512) + 9 * (512 + 4 * 512) * 512 + 2 * 512 + 512 * c + c
    assert formula == 12_927_126
    assert n_params(PSPHead(512, c)) == formula
    # the paper's 1/N reduction on ResNet's 2048 channels: 4 x 512-channel branches, 512 after the 3x3 conv
    assert n_params(PSPHead(2048, c)) == 4 * (2048 * 512 + 2 * 512) + 9 * (2048 + 4 * 512) * 512 + 2 * 512 + 512 * c + c


@pytest.mark.parametrize("size", [(13, 9), (4, 5), (1, 1)])
def test_output_keeps_the_input_grid(head: PSPHead, size: tuple[int, int]) -> None:
    x = torch.randn(2, 6, *size)  # grids smaller than the 6-bin pool too
    with torch.no_grad():
        assert head(x).shape == (2, 4, *size)
        assert head.forward_features(x).shape == (2, head.feature_channels, *size)
    assert head.feature_channels == 5
    assert head.bottleneck[0].in_channels == 6 + 4 * 5


def test_constant_input_gives_identical_branches(head: PSPHead) -> None:
    # pooling a constant map gives the constant at every bin size: with branch 1's weights in every branch,
    # every branch output is the same constant map, equal to conv-BN-ReLU of the constant
    for branch in head.branches[1:]:
        branch.load_state_dict(head.branches[0].state_dict())
    values = torch.randn(2, 6, 1, 1)
    x = values.expand(2, 6, 7, 11).contiguous()
    with torch.no_grad():
        outputs = [branch(x) for branch in head.branches]
        expected = conv_bn_relu_by_hand(values, head.branches[0].conv, head.branches[0].bn).expand(2, 5, 7, 11)
    assert expected.abs().sum() > 0
    for output in outputs:
        torch.testing.assert_close(output, expected)


def test_one_bin_branch_is_the_global_mean_everywhere(head: PSPHead) -> None:
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        expected = conv_bn_relu_by_hand(x.mean(dim=(2, 3), keepdim=True), head.branches[0].conv, head.branches[0].bn)
        torch.testing.assert_close(head.branches[0](x), expected.expand(2, 5, 5, 7))


def test_branch_with_one_cell_per_pixel_is_pointwise(head: PSPHead) -> None:
    # a 6x6 map and the 6-bin pool: pooling and upsampling are identities
    x = torch.randn(2, 6, 6, 6)
    six = head.branches[3]
    assert six.bins == 6
    with torch.no_grad():
        torch.testing.assert_close(six(x), conv_bn_relu_by_hand(x, six.conv, six.bn))


def test_two_bin_branch_upsamples_bilinearly_without_aligned_corners() -> None:
    # one channel, identity conv and BN: the 2x2 cell means of a 4x4 map, upsampled back to 4x4. With
    # align_corners=False output row i samples source row (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
    # (clamped to the border): the rows of cell means 0 and 4 become 0, 1, 3, 4.
    branch = PoolingBranch(1, 1, bins=2).eval()
    nn.init.ones_(branch.conv.weight)
    branch.bn = nn.Identity()  # torch < 2.13 refuses BN eps = 0, so no exact-identity BN
    x = torch.zeros(1, 1, 4, 4)
    x[..., 2:, :] = 4.0
    with torch.no_grad():
        out = branch(x)
    expected = torch.tensor([0.0, 1.0, 3.0, 4.0])[:, None].expand(4, 4)
    torch.testing.assert_close(out[0, 0], expected)


def test_input_comes_first_in_the_concatenation(head: PSPHead) -> None:
    # only the weights that read the input channels (the first 6 of the concat) left: the fused features are
    # conv3x3-BN-ReLU of the input alone
    conv, bn = head.bottleneck[0], head.bottleneck[1]
    x = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        conv.weight[:, 6:] = 0
        input_only = nn.Conv2d(6, 5, kernel_size=3, bias=False)
        input_only.weight.copy_(conv.weight[:, :6])
        torch.testing.assert_close(head.forward_features(x), conv_bn_relu_by_hand(x, input_only, bn, padding=1))


def test_forward_is_classify_of_forward_features(head: PSPHead) -> None:
    x = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        features = head.forward_features(x)
        assert (features >= 0).all()  # after the ReLU
        torch.testing.assert_close(head(x), head.classify(features))
        torch.testing.assert_close(head.classify(features), F.conv2d(features, head.classifier.weight,
                                                                     head.classifier.bias))
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert isinstance(PSPHead(6, 4, dropout=0.0).dropout, nn.Identity)
    # training: channel dropout (p = 0.1) between the fused features and the classifier
    head.train()
    features = torch.rand(2, 5, 3, 3)
    with torch.no_grad():
        torch.manual_seed(2)
        dropped = F.dropout2d(features, 0.1, training=True)
        torch.manual_seed(2)
        torch.testing.assert_close(head.classify(features), head.classifier(dropped))


def test_output_stride_is_a_no_op(head: PSPHead) -> None:
    x = torch.randn(2, 6, 5, 4)
    with torch.no_grad():
        before = head(x)
        head.set_output_stride(16)
        after = head(x)
    assert head.output_stride == 16
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    ("bins", "message"),
    [((), "at least one"), ((1, 0, 3), "positive integers"), ((1, 2.5), "positive integers"),
     ((1, True), "positive integers"), ((1, 2, 2), "distinct")],
)
def test_bins_validation(bins: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PSPHead(8, 2, bins=bins)


def test_batch_of_one_in_training_names_the_problem() -> None:
    head = PSPHead(4, 3, channels=2).train()
    with pytest.raises(ValueError, match=r"1x1 branch.*batch size"):
        head(torch.randn(1, 4, 6, 6))
    assert head(torch.randn(2, 4, 6, 6)).shape == (2, 3, 6, 6)
    assert head.eval()(torch.randn(1, 4, 6, 6)).shape == (1, 3, 6, 6)
    assert PSPHead(4, 3, bins=(2, 3), channels=2).train()(torch.randn(1, 4, 6, 6)).shape == (1, 3, 6, 6)


def test_psp_composes_with_resnet18_from_the_config(tmp_path: Path) -> None:
    cfg = compose_config(["backbone=resnet18", "head=psp", "dataset=synthetic", "logger=csv",
                          f"output_dir={tmp_path}"])
    validate(cfg)
    model = build_segmentor(cfg, num_classes=6).eval()
    assert isinstance(model.backbone, ResNet) and isinstance(model.head, PSPHead)
    assert model.head.in_channels == 512 and model.head.bins == (1, 2, 3, 6)
    assert n_params(model.head) == 4 * (512 * 512 + 2 * 512) + 9 * (512 + 4 * 512) * 512 + 2 * 512 + 512 * 6 + 6
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert model.forward_raw(x)["out"].shape == (2, 6, 4, 5)  # output stride 16
        assert model(x).shape == (2, 6, 64, 80)
        model.set_output_stride(8)
        assert model.forward_raw(x)["out"].shape == (2, 6, 8, 10)
