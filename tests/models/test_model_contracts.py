"""The contracts of the segmentor's parts (segexp.models.contracts): every backbone, head and fusion config in
conf/ provides its Protocol, and a part that lacks a member is refused with an error naming the part and the
member. Also the helpers the heads share (segexp.models.heads.base, segexp.models.output_stride)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from segexp.config import CONF_DIR, ConfigError, compose_config
from segexp.models.backbones.resnet import ResNet
from segexp.models.backbones.vgg import VGG16
from segexp.models.build import build_segmentor
from segexp.models.contracts import (
    Backbone,
    ContractError,
    ExposesFeatures,
    FollowsOutputStride,
    Fusion,
    Head,
    ReadsFeatures,
    ScaleWeighting,
    ShiftablePasses,
    check_contract,
    contract_members,
    missing_members,
)
from segexp.models.fusion.attention_to_scale import AttentionToScale
from segexp.models.heads.aspp import ASPPHead
from segexp.models.heads.base import ClassifierHead, classifier_conv, dropout2d, single_feature_keys
from segexp.models.heads.fcn import FCNHead
from segexp.models.heads.pac import PACHead
from segexp.models.heads.psp import PSPHead
from segexp.models.segmentor import Segmentor
from segexp.models.shifted_passes import check_shift_passes

BASE = ["dataset=synthetic", "logger=csv"]
CLASSES = 3


def group_configs(group: str) -> list[str]:
    """The config names of ``conf/<group>/`` (every one, so that a new config is checked too)."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def small(group: str, name: str) -> list[str]:
    """Overrides selecting ``group=name`` with narrow layers where the node has ``channels``."""
    node = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    return [f"{group}={name}", *([f"{group}.channels=8"] if "channels" in node else [])]


def build(*overrides: str):
    return build_segmentor(compose_config([*BASE, *overrides]), num_classes=CLASSES).eval()


# --------------------------------------------------------------------------------------------------------
# Every part in conf/ provides its contract
# --------------------------------------------------------------------------------------------------------


def test_the_contracts_declare_their_members() -> None:
    assert contract_members(Backbone) == ("set_output_stride", "output_stride", "feature_channels", "forward")
    assert contract_members(Head) == ("forward",)
    assert contract_members(ReadsFeatures) == ("in_keys",)
    assert contract_members(FollowsOutputStride) == ("set_output_stride",)
    assert contract_members(ExposesFeatures) == ("feature_channels", "forward_features", "classify")
    assert contract_members(Fusion) == ("forward",)
    assert contract_members(ScaleWeighting) == ("scale_weights",)
    assert contract_members(ShiftablePasses) == ("last_strided_stage", "dense_last_stride")


@pytest.mark.parametrize("name", group_configs("backbone"))
def test_every_backbone_config_is_a_backbone_that_describes_its_features(name: str) -> None:
    model = build(f"backbone={name}", "head=fcn")
    backbone = model.backbone
    assert isinstance(backbone, Backbone) and missing_members(backbone, Backbone) == []
    assert backbone.feature_channels["out"] == backbone.out_channels
    size = 40
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, size, size))
    assert set(features) == set(backbone.feature_channels)
    for key, tensor in features.items():  # declared channels and strides: ceil(40 / stride) pixels
        stride = backbone.feature_strides()[key]
        assert tensor.shape == (1, backbone.feature_channels[key], math.ceil(size / stride), math.ceil(size / stride))
    assert backbone.feature_strides()["out"] == backbone.output_stride == model.output_stride


# heads whose penultimate features a fusion can read as "head" (forward_features / classify / feature_channels)
EXPOSES_FEATURES = {"aspp": True, "aspp_v2": False, "fcn": True, "largefov": True, "pac": False, "psp": True}


def test_the_exposure_table_lists_every_head_config() -> None:
    assert sorted(EXPOSES_FEATURES) == group_configs("head")


@pytest.mark.parametrize("name", group_configs("head"))
def test_every_head_config_is_a_head(name: str) -> None:
    model = build("backbone=resnet18", *small("head", name))
    head = model.head
    assert isinstance(head, Head) and isinstance(head, ReadsFeatures) and isinstance(head, FollowsOutputStride)
    assert head.in_keys == ("out",)
    assert isinstance(head, ExposesFeatures) is EXPOSES_FEATURES[name]
    x = torch.randn(2, model.backbone.out_channels, 5, 6)
    with torch.no_grad():
        logits = head(x)
        assert logits.shape == (2, CLASSES, 5, 6)
        if isinstance(head, ExposesFeatures):
            features = head.forward_features(x)
            assert features.shape == (2, head.feature_channels, 5, 6)
            assert torch.equal(head.classify(features), logits)


@pytest.mark.parametrize("name", group_configs("aux_head"))
def test_every_aux_head_config_is_a_head(name: str) -> None:
    model = build("backbone=resnet18", "head=fcn", *small("aux_head", name))
    aux = model.aux_head
    assert isinstance(aux, Head) and isinstance(aux, ReadsFeatures) and isinstance(aux, FollowsOutputStride)
    assert aux.in_keys == ("layer3",)


SCALE_WEIGHTING = {"attention_to_scale": True, "max": False, "mean": False, "msattn": True}


def test_the_scale_weighting_table_lists_every_fusion_config() -> None:
    assert sorted(SCALE_WEIGHTING) == group_configs("fusion")


@pytest.mark.parametrize("name", group_configs("fusion"))
def test_every_fusion_config_is_a_fusion(name: str) -> None:
    # the attention papers' network (VGG-16 + LargeFOV), whose feature names the msattn config reads
    model = build("backbone=vgg16", "head=largefov", "head.channels=8", *small("fusion", name),
                  "model.scales=[1.0,0.5]")
    fusion = model.fusion
    assert isinstance(fusion, Fusion) and isinstance(fusion, FollowsOutputStride)
    assert isinstance(fusion, ScaleWeighting) is SCALE_WEIGHTING[name]
    if OmegaConf.load(CONF_DIR / "fusion" / f"{name}.yaml").get("in_keys"):
        assert isinstance(fusion, ReadsFeatures)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert model(images).shape == (1, CLASSES, 32, 32)
        attention = model.scale_attention(images)
    if SCALE_WEIGHTING[name]:  # softmax weights of the two scales at every pixel
        assert attention.shape == (1, 2, 32, 32)
        assert torch.allclose(attention.sum(dim=1), torch.ones(1, 32, 32), atol=1e-5)
    else:
        assert attention is None


# --------------------------------------------------------------------------------------------------------
# A part missing a member is refused, naming the part and the member
# --------------------------------------------------------------------------------------------------------


class NoStrideBackbone(nn.Module):
    """Returns and describes its features, but cannot change its output stride."""

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.output_stride, self.feature_channels = 16, {"out": 8}
        self.conv = nn.Conv2d(3, 8, kernel_size=1, stride=16)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"out": self.conv(images)}


class BareHead(nn.Module):
    """A classifier that does not keep the in_keys its config node names."""

    def __init__(self, in_channels: int, num_classes: int, output_stride: int, **options: object) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)


class StrideBoundHead(BareHead):
    """Keeps its in_keys but cannot follow another output stride (allowed: set_output_stride is optional)."""

    def __init__(self, in_channels: int, num_classes: int, output_stride: int, in_keys: list[str],
                 **options: object) -> None:
        super().__init__(in_channels, num_classes, output_stride)
        self.in_keys = tuple(in_keys)


class ForgetfulFusion(nn.Module):
    """A fusion whose node names in_keys but which does not keep them: the segmentor could not tell what it reads."""

    def __init__(self, in_channels: list[int], num_classes: int, scales: list[float], output_stride: int,
                 **options: object) -> None:
        super().__init__()

    def forward(self, logits: list[Tensor], features: list[dict[str, Tensor]]) -> Tensor:
        return torch.stack(logits).mean(0)


@pytest.mark.usefixtures("trusted_targets")  # classes of this test module: not an allowed package
def test_a_backbone_without_its_members_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"backbone\._target_=tests\.models\.test_model_contracts\.NoStrideBackbone: "
                                          r"backbone \(NoStrideBackbone\) does not provide the Backbone contract "
                                          r"\(.*\): it lacks set_output_stride$"):
        build("backbone._target_=tests.models.test_model_contracts.NoStrideBackbone", "head=fcn")


@pytest.mark.usefixtures("trusted_targets")
@pytest.mark.parametrize("key", ["head", "aux_head"])
def test_a_head_that_does_not_keep_its_in_keys_is_refused_by_name(key: str) -> None:
    overrides = ["backbone=resnet18", "head=fcn", "aux_head=fcn",
                 f"{key}._target_=tests.models.test_model_contracts.BareHead"]
    with pytest.raises(ConfigError, match=rf"^{key}\._target_=tests\.models\.test_model_contracts\.BareHead: {key} "
                                          r"\(BareHead\) does not provide the ReadsFeatures contract \(in_keys\): "
                                          r"it lacks in_keys$"):
        build(*overrides)


@pytest.mark.usefixtures("trusted_targets")
def test_a_head_without_set_output_stride_is_built_and_named_when_another_stride_is_asked() -> None:
    target = "head._target_=tests.models.test_model_contracts.StrideBoundHead"
    model = build("backbone=resnet18", "head=fcn", target)
    assert not isinstance(model.head, FollowsOutputStride)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, CLASSES, 32, 32)
    with pytest.raises(ConfigError, match=r"model\.eval_output_stride=8: .* head \(StrideBoundHead\) has no "
                                          r"set_output_stride: it cannot run at output stride 8"):
        build("backbone=resnet18", "head=fcn", target, "model.eval_output_stride=8")
    segmentor = Segmentor(ResNet(18, output_stride=16), StrideBoundHead(512, CLASSES, 16, in_keys=["out"]),
                          aux_head=StrideBoundHead(256, CLASSES, 16, in_keys=["layer3"]))
    with pytest.raises(ValueError, match=r"^head \(StrideBoundHead\), aux_head \(StrideBoundHead\) have no "
                                         r"set_output_stride: they cannot run at output stride 8$"):
        segmentor.set_output_stride(8)
    assert segmentor.backbone.output_stride == 16  # refused before any part changed
    segmentor.set_output_stride(16)  # its own stride: nothing to change


@pytest.mark.usefixtures("trusted_targets")
def test_a_fusion_that_does_not_keep_its_in_keys_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"fusion \(ForgetfulFusion\) does not provide the ReadsFeatures contract "
                                          r"\(in_keys\): it lacks in_keys$"):
        build("backbone=resnet18", "head=fcn", "fusion=attention_to_scale", "fusion.channels=8",
              "fusion._target_=tests.models.test_model_contracts.ForgetfulFusion", "model.scales=[1.0,0.5]")


def test_the_segmentor_refuses_a_backbone_that_is_not_one() -> None:
    with pytest.raises(ContractError, match=r"^backbone \(Conv2d\) does not provide the Backbone contract .*: it "
                                            r"lacks set_output_stride, output_stride, feature_channels$"):
        Segmentor(nn.Conv2d(3, 8, 1), FCNHead(8, CLASSES))
    assert issubclass(ContractError, ValueError)  # so the builder reports it as a ConfigError


def test_the_segmentor_refuses_a_fusion_reading_features_the_head_does_not_expose() -> None:
    backbone = ResNet(18, output_stride=16)
    head = PACHead(backbone.out_channels, CLASSES, output_stride=16, channels=8)
    fusion = AttentionToScale([8], CLASSES, scales=[1.0, 0.5], channels=8, in_keys=("head",))
    with pytest.raises(ContractError, match=r"fusion \(AttentionToScale\) reads 'head', .* but head \(PACHead\) "
                                            r"does not expose them: it lacks feature_channels, forward_features, "
                                            r"classify"):
        Segmentor(backbone, head, scales=(1.0, 0.5), fusion=fusion)
    Segmentor(backbone, head, scales=(1.0,), fusion=fusion)  # one scale: the fusion is not used


def test_check_contract_lists_the_missing_members_in_declaration_order() -> None:
    part = SimpleNamespace(output_stride=16)
    assert missing_members(part, Backbone) == ["set_output_stride", "feature_channels", "forward"]
    with pytest.raises(ContractError, match=r"^backbone \(SimpleNamespace\) does not provide the Backbone contract "
                                            r"\(set_output_stride, output_stride, feature_channels, forward\): it "
                                            r"lacks set_output_stride, feature_channels, forward$"):
        check_contract(part, Backbone, "backbone")
    check_contract(ResNet(18), Backbone, "backbone")  # provides it: no error


def test_shifted_passes_name_what_a_backbone_without_them_lacks() -> None:
    assert isinstance(ResNet(18, output_stride=8), ShiftablePasses)
    vgg = VGG16()
    assert not isinstance(vgg, ShiftablePasses)
    model = Segmentor(vgg, FCNHead(vgg.out_channels, CLASSES, output_stride=8))
    with pytest.raises(ConfigError, match=r"inference\.shift_passes=2: shifted passes cannot run on this model: .*"
                                          r"VGG16 lacks last_strided_stage, dense_last_stride$"):
        check_shift_passes(model, "inference.shift_passes=2")


# --------------------------------------------------------------------------------------------------------
# What the heads share
# --------------------------------------------------------------------------------------------------------






def test_the_shared_classifier_pieces() -> None:
    conv = classifier_conv(8, CLASSES, kernel_size=5, dilation=12)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.dilation, conv.padding) == (
        8, CLASSES, (5, 5), (12, 12), (24, 24)
    )
    assert conv.bias is not None
    assert isinstance(dropout2d(0.0), nn.Identity)
    assert isinstance(dropout2d(0.1), nn.Dropout2d) and dropout2d(0.1).p == 0.1
    assert single_feature_keys(["layer3"], "FCNHead") == ("layer3",)
    with pytest.raises(ValueError, match=r"PSPHead reads one feature map, got in_keys=\[\]"):
        single_feature_keys([], "PSPHead")


@pytest.mark.parametrize("make", [
    lambda: FCNHead(16, CLASSES, output_stride=16, channels=8, dropout=0.5),
    lambda: ASPPHead(16, CLASSES, output_stride=16, channels=8, dropout=0.5),
    lambda: PSPHead(16, CLASSES, output_stride=16, channels=8, dropout=0.5),
], ids=["fcn", "aspp", "psp"])
def test_classifier_heads_classify_their_features_after_dropout(make) -> None:
    torch.manual_seed(0)
    head = make().eval()
    assert isinstance(head, ClassifierHead) and isinstance(head, ExposesFeatures)
    assert head.feature_channels == head.classifier.in_channels == 8
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        features = head.forward_features(x)
        assert torch.equal(head(x), head.classifier(features))  # eval: dropout is the identity
        head.train()
        torch.manual_seed(1)
        dropped = head.classify(features)
        torch.manual_seed(1)
        by_hand = head.classifier(nn.functional.dropout2d(features, 0.5, training=True))
    assert torch.allclose(dropped, by_hand)
