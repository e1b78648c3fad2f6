"""Named, weighted outputs (main, auxiliary, one per input scale) and multi-scale fusion (issue 9, items 3-4).

Known answers: max / mean fusion on hand-made logits; the training loss of a two-scale model with an
auxiliary head against the weighted sum of per-output cross-entropies computed by hand; a shared-weights
multi-scale forward against single-scale runs of the same network on resized images.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexp.config import ConfigError
from segexp.geometry import scaled_size
from segexp.models.backbones.resnet import ResNet
from segexp.models.build import build_segmentor
from segexp.models.fusion.max import MaxFusion
from segexp.models.fusion.mean import MeanFusion
from segexp.models.heads.fcn import FCNHead
from segexp.models.losses.cross_entropy import CrossEntropy
from segexp.models.segmentor import Segmentor, scale_output_name
from segexp.training.build import build_module, validate
from segexp.training.module import SegmentationModule
from segexp.training.schedules.poly import PolySchedule

# training_step is called here without a Trainer: its self.log calls are expected no-ops
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

SMALL = ["backbone=resnet18", "backbone.output_stride=8", "head=fcn", "dataset=synthetic", "logger=csv"]


def hand_logits() -> list[Tensor]:
    a = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    b = torch.tensor([[[[0.0, 4.0], [-1.0, 3.0]]]])
    return [a, b]


def test_max_fusion_takes_the_elementwise_maximum() -> None:
    fused = MaxFusion()(hand_logits(), features=[])
    assert torch.equal(fused, torch.tensor([[[[1.0, 4.0], [0.5, 3.0]]]]))


def test_mean_fusion_takes_the_elementwise_mean() -> None:
    fused = MeanFusion()(hand_logits(), features=[])
    assert torch.equal(fused, torch.tensor([[[[0.5, 1.0], [-0.25, 3.0]]]]))


def small_segmentor(**kwargs) -> Segmentor:
    torch.manual_seed(0)
    backbone = ResNet(18, output_stride=8)
    head = FCNHead(backbone.out_channels, 4, output_stride=8)
    return Segmentor(backbone, head, **kwargs).eval()


def test_multi_scale_streams_share_weights_and_are_fused_on_the_largest_grid() -> None:
    model = small_segmentor(scales=(1.0, 0.5), fusion=MaxFusion())
    single = Segmentor(model.backbone, model.head).eval()  # the same modules, one scale
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outputs = model.forward_raw(images)
        full = single.forward_raw(images)["out"]
        half = single.forward_raw(F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False))["out"]
    assert set(outputs) == {"out", "out_scale1", "out_scale0.5"}
    assert torch.allclose(outputs["out_scale1"], full) and torch.allclose(outputs["out_scale0.5"], half)
    assert outputs["out"].shape == full.shape == (2, 4, 8, 8)  # the largest scale's grid
    upsampled = F.interpolate(half, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(outputs["out"], torch.maximum(full, upsampled))
    assert model(images).shape == (2, 4, 64, 64)  # inference reads the fused output


def test_scaled_sizes_round_half_up() -> None:
    assert scaled_size((513, 513), 0.75) == (385, 385)
    assert scaled_size((513, 100), 0.5) == (257, 50)
    assert scaled_size((373, 375), 0.5) == (187, 188)  # half up, not Python's half to even (186)
    assert scale_output_name(1.0) == "out_scale1" and scale_output_name(0.75) == "out_scale0.75"


def test_loss_of_a_two_scale_model_is_the_weighted_sum_of_per_output_cross_entropies() -> None:
    torch.manual_seed(0)
    backbone = ResNet(18, output_stride=8)
    head = FCNHead(backbone.out_channels, 4, output_stride=8)
    aux = FCNHead(backbone.feature_channels["layer3"], 4, output_stride=8, channels=8, in_keys=("layer3",))
    model = Segmentor(backbone, head, aux, scales=(1.0, 0.5), fusion=MeanFusion(), head_loss_weight=1.0,
                      aux_loss_weight=0.4, scale_loss_weights=(0.5, 0.25)).eval()
    module = SegmentationModule(model, CrossEntropy(), PolySchedule(), class_names=("a", "b", "c", "d"))
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 4, (2, 64, 64))
    labels[:, :5] = 255  # ignored pixels
    with torch.no_grad():
        loss = module.training_step({"image": images, "label": labels}, 0)
        outputs = model.forward_raw(images)

    def ce(name: str) -> Tensor:
        up = F.interpolate(outputs[name], size=(64, 64), mode="bilinear", align_corners=False)
        return F.cross_entropy(up, labels, ignore_index=255)

    expected = 1.0 * ce("out") + 0.4 * ce("aux") + 0.5 * ce("out_scale1") + 0.25 * ce("out_scale0.5")
    assert model.loss_weights == {"out": 1.0, "aux": 0.4, "out_scale1": 0.5, "out_scale0.5": 0.25}
    assert torch.allclose(loss, expected, atol=1e-6)


def test_downsampled_labels_are_used_for_every_output() -> None:
    model = small_segmentor(scales=(1.0, 0.5), fusion=MaxFusion(), scale_loss_weights=1.0)
    module = SegmentationModule(model, CrossEntropy(), PolySchedule(), class_names=tuple("abcd"),
                                downsample_labels=True)
    images, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 4, (1, 64, 64))
    with torch.no_grad():
        loss = module.training_step({"image": images, "label": labels}, 0)
        outputs = model.forward_raw(images)

    def ce(name: str) -> Tensor:
        small = F.interpolate(labels[:, None].float(), size=outputs[name].shape[-2:], mode="nearest")[:, 0].long()
        return F.cross_entropy(outputs[name], small)

    assert torch.allclose(loss, ce("out") + ce("out_scale1") + ce("out_scale0.5"), atol=1e-6)


class BatchWeightedLoss(nn.Module):
    """A loss whose pixel weights come from the batch (as a boundary-aware loss's would)."""

    def forward(self, logits: Tensor, target: Tensor, batch: dict[str, Tensor]) -> Tensor:
        per_pixel = F.cross_entropy(logits, target, reduction="none")
        return (per_pixel * batch["pixel_weight"]).sum() / batch["pixel_weight"].sum()


def test_a_loss_with_a_batch_parameter_receives_the_batch() -> None:
    model = small_segmentor()
    module = SegmentationModule(model, BatchWeightedLoss(), PolySchedule(), class_names=tuple("abcd"))
    images, labels = torch.randn(1, 3, 32, 32), torch.randint(0, 4, (1, 32, 32))
    weight = torch.zeros(1, 32, 32)
    weight[:, :4, :4] = 1.0  # only the top-left corner counts
    with torch.no_grad():
        loss = module.training_step({"image": images, "label": labels, "pixel_weight": weight}, 0)
        logits = model(images)
    expected = F.cross_entropy(logits[..., :4, :4], labels[:, :4, :4])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_aux_head_group_builds_an_fcn_head_on_layer3(make_cfg) -> None:
    cfg = make_cfg("aux_head=fcn", base=SMALL)
    validate(cfg)  # loss_weight is the builder's key, not a constructor parameter
    model = build_segmentor(cfg, num_classes=6)
    aux = model.aux_head
    assert isinstance(aux, FCNHead) and aux.in_keys == ("layer3",)
    # conv3x3 256->256 (no bias) + BN(256) + 1x1 classifier 256->6 with bias: ResNet-18's layer3 has 256 channels
    assert sum(p.numel() for p in aux.parameters()) == 256 * 256 * 9 + 2 * 256 + 256 * 6 + 6
    assert model.loss_weights == {"out": 1.0, "aux": 0.4}
    assert make_cfg(base=SMALL).get("aux_head") is None  # default: no auxiliary head


def test_multi_scale_config_builds_fusion_and_weights(make_cfg) -> None:
    cfg = make_cfg("fusion=max", "model.scales=[1.0,0.75,0.5]", "model.scale_loss_weights=[1.0,0.5,0.5]",
                   base=SMALL)
    validate(cfg)
    model = build_segmentor(cfg, num_classes=6)
    assert isinstance(model.fusion, MaxFusion) and model.scales == (1.0, 0.75, 0.5)
    assert model.loss_weights == {"out": 1.0, "out_scale1": 1.0, "out_scale0.75": 0.5, "out_scale0.5": 0.5}
    single = build_segmentor(make_cfg("fusion=max", base=SMALL), num_classes=6)
    assert single.fusion is None and single.loss_weights == {"out": 1.0}  # nothing to fuse with one scale


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.scales=[1.0,0.5]"], r"model\.scales=\[1\.0, 0\.5\] runs several scales: .*fusion=max"),
        (["fusion=mean", "model.scales=[1.0,0.5]", "model.scale_loss_weights=[1.0]"],
         r"model\.scale_loss_weights=\[1\.0\] needs one weight per scale"),
        (["model.scales=[1.0,1.0]", "fusion=max"], r"model\.scales must be distinct positive numbers"),
        (["aux_head=fcn", "aux_head.loss_weight=null"], r"aux_head\.loss_weight=None"),
        (["aux_head=fcn", "aux_head.in_keys=[layer7]"], r"aux_head\.in_keys=\['layer7'\]: the backbone has no"),
        (["model.head_loss_weight=0"], r"not all 0"),
    ],
)
def test_output_config_errors_name_the_key(make_cfg, overrides: list[str], message: str) -> None:
    cfg = make_cfg(*overrides, base=SMALL)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
        build_segmentor(cfg, num_classes=6)


def test_aux_head_rejects_unknown_keys(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"aux_head\.chanels.*Did you mean 'channels'"):
        validate(make_cfg("aux_head=fcn", "+aux_head.chanels=8", base=SMALL))


def test_training_logs_each_weighted_term(make_cfg) -> None:
    import csv
    from pathlib import Path

    from segexp.cli.train import run_training

    cfg = make_cfg("aux_head=fcn", "aux_head.channels=8", "fusion=max", "model.scales=[1.0,0.5]",
                   "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1")
    metrics = run_training(cfg)
    assert metrics["steps"] == 2
    [metrics_csv] = Path(cfg.output_dir).glob("csv/*/metrics.csv")
    columns = next(csv.reader(metrics_csv.open()))
    for name in ("out", "aux", "out_scale1", "out_scale0.5"):
        assert f"train/loss/{name}" in columns
    assert "train/loss" in columns


def test_module_is_built_with_the_outputs_weights(make_cfg) -> None:
    from segexp.training.build import build_datamodule

    cfg = make_cfg("aux_head=fcn", "aux_head.loss_weight=0.25", base=SMALL)
    module = build_module(cfg, build_datamodule(cfg))
    assert module.model.loss_weights["aux"] == 0.25 and not module.loss_takes_batch


def test_checkpoints_written_before_the_aux_head_group_and_package_layout_still_evaluate(make_cfg) -> None:
    from omegaconf import OmegaConf

    from segexp.training.build import plain_config
    from segexp.training.checkpoints import upgrade_stored_config

    stored = plain_config(make_cfg(base=SMALL))
    stored["model"].update({"aux_weight": 0.4, "aux_channels": 64, "aux_dropout": 0.1})
    stored["backbone"]["_target_"] = "segexp.backbones.resnet.ResNet"  # before the models/ package
    stored["head"]["_target_"] = "segexp.heads.fcn.FCNHead"
    upgraded = OmegaConf.create(upgrade_stored_config(stored))
    validate(upgraded)
    model = build_segmentor(upgraded, num_classes=6)
    assert model.aux_head.in_keys == ("layer3",) and model.aux_head.classifier.in_channels == 64
    assert model.loss_weights == {"out": 1.0, "aux": 0.4}
    stored["model"]["aux_weight"] = 0.0
    assert build_segmentor(OmegaConf.create(upgrade_stored_config(stored)), num_classes=6).aux_head is None


class ScaleWeights(nn.Module):
    """A learned fusion (one softmax weight per scale), standing in for attention to scale: a new fusion is one
    module selected from the config, with no core edit."""

    def __init__(self, num_scales: int = 2) -> None:
        super().__init__()
        self.logit_weights = nn.Parameter(torch.zeros(num_scales))

    def forward(self, logits, features) -> Tensor:
        assert len(features) == len(logits) and "out" in features[0]  # each scale's backbone features
        weights = self.logit_weights.softmax(0)
        return sum(w * x for w, x in zip(weights, logits))


@pytest.mark.usefixtures("trusted_targets")  # a class of this test module: not an allowed package
def test_a_new_fusion_plugs_in_from_the_config_and_is_trained(make_cfg) -> None:
    from segexp.training.build import build_datamodule

    cfg = make_cfg("fusion=mean", "fusion._target_=tests.models.test_outputs.ScaleWeights", "model.scales=[1.0,0.5]",
                   base=SMALL)
    validate(cfg)
    module = build_module(cfg, build_datamodule(cfg))
    assert isinstance(module.model.fusion, ScaleWeights)
    groups = module.schedule.param_groups(module.model.backbone, module.head_parts())
    head_params = [p for g in groups if g["name"].startswith("head") for p in g["params"]]
    assert any(p is module.model.fusion.logit_weights for p in head_params)
    with torch.no_grad():  # equal initial weights: the mean of the two scales
        outputs = module.model.eval().forward_raw(torch.randn(1, 3, 64, 64))
    half = F.interpolate(outputs["out_scale0.5"], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(outputs["out"], (outputs["out_scale1"] + half) / 2, atol=1e-6)
