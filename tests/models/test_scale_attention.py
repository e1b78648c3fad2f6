"""Learned fusions of scale streams (msattn issue): attention to scale (Chen et al. 2016) and the multi-scale
attention with a recalibrating branch (Yang & Peng, Sec. 2).

Known answers: softmax weights summing to 1; a location attention forced to (1, 0) giving stream 1; the
msattn formula with wr = 1 equal to attention to scale's; attention to scale against the same computation
written with functional ops; parameter counts against the layer formulas; the decoder learning rate
(head + fusion at head_lr_mult) listed by parameter group; the attention maps logged for the dashboards.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor, nn

from segexp.config import ConfigError
from segexp.models.build import build_segmentor
from segexp.models.fusion.attention_to_scale import AttentionToScale, weighted_sum
from segexp.models.fusion.msattn import MultiScaleAttention
from segexp.models.segmentor import HEAD_FEATURES
from segexp.training.build import build_datamodule, build_module
from segexp.training.validation_examples import ValidationExamples

SMALL = ["backbone=resnet18", "backbone.output_stride=8", "head=fcn", "dataset=synthetic", "logger=csv",
         "model.scales=[1.0,0.5]"]
RESNET_KEYS = "fusion.in_keys=[layer1,layer2,layer3,head]"


def streams(channels: int = 6, classes: int = 3, grid: tuple[int, int] = (5, 7)) -> tuple[list, list]:
    """Two scale streams on one logit grid: logits P_s and features (the head's on the logit grid, a
    stride-4 stage at twice its size)."""
    torch.manual_seed(0)
    logits = [torch.randn(2, classes, *grid) for _ in range(2)]
    big = (grid[0] * 2, grid[1] * 2)
    features = [{"early": torch.randn(2, 4, *big), HEAD_FEATURES: torch.randn(2, channels, *grid)} for _ in range(2)]
    return logits, features


def force_location(last_conv: nn.Conv2d, first: bool = True) -> None:
    """Scores (1e4, -1e4) everywhere: softmax gives exactly (1, 0) (or (0, 1))."""
    with torch.no_grad():
        last_conv.weight.zero_()
        last_conv.bias.copy_(torch.tensor([1e4, -1e4] if first else [-1e4, 1e4]))


def test_weighted_sum_on_hand_values() -> None:
    p1, p2 = torch.full((1, 2, 1, 1), 2.0), torch.full((1, 2, 1, 1), -4.0)
    weights = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    assert torch.allclose(weighted_sum(weights, [p1, p2]), torch.full((1, 2, 1, 1), 0.25 * 2 - 0.75 * 4))


def test_attention_to_scale_matches_its_equations_written_out() -> None:
    logits, features = streams()
    fusion = AttentionToScale([6], num_classes=3, scales=[1.0, 0.5], channels=8).eval()
    conv1, conv2 = fusion.attention[0], fusion.attention[3]
    stacked = torch.cat([features[0]["head"], features[1]["head"]], dim=1)
    scores = F.conv2d(F.relu(F.conv2d(stacked, conv1.weight, conv1.bias, padding=1)), conv2.weight, conv2.bias)
    weights = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
    expected = weights[:, :1] * logits[0] + weights[:, 1:] * logits[1]
    with torch.no_grad():
        assert torch.allclose(fusion(logits, features), expected, atol=1e-6)
        assert torch.allclose(fusion.scale_weights(logits, features).sum(dim=1), torch.ones(2, 5, 7))


@pytest.mark.parametrize("recalibrate", [False, True])
def test_location_attention_forced_to_one_zero_gives_stream_one(recalibrate: bool) -> None:
    logits, features = streams()
    fusion = MultiScaleAttention([4, 6], 3, [1.0, 0.5], channels=8, in_keys=["early", "head"],
                                 recalibrate=recalibrate).eval()
    force_location(fusion.location[-1])
    with torch.no_grad():
        fused = fusion(logits, features)
        expected = logits[0]
        if recalibrate:
            expected = expected * torch.sigmoid(fusion.recalibration(fusion.shared_features(features, (5, 7))))
        assert torch.allclose(fused, expected, atol=1e-6)
        force_location(fusion.location[-1], first=False)
        assert torch.allclose(fusion(logits, features), logits[1] if not recalibrate else fused / logits[0] * logits[1],
                              atol=1e-5)
    a2s = AttentionToScale([6], 3, [1.0, 0.5], channels=8).eval()
    force_location(a2s.attention[-1])
    with torch.no_grad():
        assert torch.equal(a2s(logits, features), logits[0])


def test_msattn_with_wr_one_reduces_to_attention_to_scale_formula() -> None:
    logits, features = streams()
    fusion = MultiScaleAttention([4, 6], 3, [1.0, 0.5], channels=8, in_keys=["early", "head"]).eval()
    with torch.no_grad():
        fusion.recalibration[-1].weight.zero_()
        fusion.recalibration[-1].bias.fill_(100.0)  # sigmoid(100) == 1 in float32
        weights = fusion.scale_weights(logits, features)
        assert torch.allclose(weights.sum(dim=1), torch.ones(2, 5, 7), atol=1e-6)
        assert weights.min() > 0  # a real softmax, not a forced one
        assert torch.allclose(fusion(logits, features), weights[:, :1] * logits[0] + weights[:, 1:] * logits[1],
                              atol=1e-6)


def conv_params(cin: int, cout: int, k: int) -> int:
    return k * k * cin * cout + cout


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_follow_the_layer_formulas() -> None:
    # attention to scale on LargeFOV's fc7 (1024) for two scales: 3x3 to 512, 1x1 to S
    assert count(AttentionToScale([1024], 21, [1.0, 0.5])) == conv_params(2 * 1024, 512, 3) + conv_params(512, 2, 1)
    vgg = [128, 256, 512, 1024]  # pool2, conv3_3, conv4_3, fc7
    streams_ = 2 * conv_params(sum(vgg), 512, 3)
    location = conv_params(2 * 512, 512, 3) + conv_params(512, 2, 1)
    recal = conv_params(2 * 512, 512, 3) + conv_params(512, 21, 1)
    assert count(MultiScaleAttention(vgg, 21, [1.0, 0.5])) == streams_ + location + recal
    assert count(MultiScaleAttention(vgg, 21, [1.0, 0.5], recalibrate=False)) == streams_ + location
    one_stage = MultiScaleAttention(vgg, 21, [1.0, 0.5], multi_stage=False)
    assert count(one_stage) == 2 * conv_params(1024, 512, 3) + location + recal
    assert one_stage.stream_keys == ("head",)


def test_dilations_per_stream_and_their_switch() -> None:
    fusion = MultiScaleAttention([8], 3, [1.0, 0.5], channels=4, in_keys=["head"])
    assert [s[0].dilation for s in fusion.streams] == [(12, 12), (2, 2)]  # Sec. 3: 12 for 1x, 2 for 0.5x
    assert [s[0].padding for s in fusion.streams] == [(12, 12), (2, 2)]
    plain = MultiScaleAttention([8], 3, [1.0, 0.5], channels=4, in_keys=["head"], diverse_dilations=False)
    assert [s[0].dilation for s in plain.streams] == [(1, 1), (1, 1)]
    with pytest.raises(ValueError, match=r"dilations=\[2, 12\] needs one positive integer per scale"):
        MultiScaleAttention([8], 3, [1.0, 0.75, 0.5], in_keys=["head"])


def stream_dilation(fusion: MultiScaleAttention) -> list[int]:
    """Each stream conv's dilation (== its padding: the conv keeps its grid), in the fusion's scales order."""
    convs = [stream[0] for stream in fusion.streams]
    assert all(conv.padding == conv.dilation for conv in convs)
    return [conv.dilation[0] for conv in convs]


@pytest.mark.parametrize(("scales", "large_dilation_on", "expected"), [
    ([1.0, 0.5], "large_scale", [12, 2]),  # Sec. 3: "2 for small scale and 12 for large scale"
    ([1.0, 0.5], "small_scale", [2, 12]),  # Sec. 2.1: large dilation "in small scale stream"
    ([0.5, 1.0], "large_scale", [2, 12]),  # placed by scale, not by position in model.scales
    ([0.5, 1.0], "small_scale", [12, 2]),
    ([0.5, 1.0, 0.75], "large_scale", [1, 12, 2]),
    ([0.5, 1.0, 0.75], "small_scale", [12, 1, 2]),
])
def test_large_dilation_on_swaps_which_stream_gets_which_dilation(scales, large_dilation_on, expected) -> None:
    dilations = [2, 12] if len(scales) == 2 else [1, 2, 12]
    fusion = MultiScaleAttention([8], 3, scales, channels=4, in_keys=["head"], dilations=dilations,
                                 large_dilation_on=large_dilation_on)
    assert stream_dilation(fusion) == expected


def test_each_streams_response_to_a_point_sits_its_dilation_away() -> None:
    """Known answer: a stream conv with all-ones 3x3 taps on one channel, fed a single 1 at the centre of a
    31x31 map, answers 1 at the centre and at the 8 points its dilation away along rows, columns and
    diagonals, 0 elsewhere (ReLU keeps them). Sec. 3's reading puts 12 on the 1x stream, Sec. 2.1's 2."""
    point = torch.zeros(1, 1, 31, 31)
    point[0, 0, 15, 15] = 1.0
    for large_dilation_on, expected in (("large_scale", (12, 2)), ("small_scale", (2, 12))):
        fusion = MultiScaleAttention([1], 3, [1.0, 0.5], channels=1, in_keys=["head"],
                                     large_dilation_on=large_dilation_on, multi_stage=False).eval()
        for stream, dilation in zip(fusion.streams, expected):
            with torch.no_grad():
                stream[0].weight.fill_(1.0)
                stream[0].bias.zero_()
                response = stream(point)[0, 0]
            hits = {(int(i) - 15, int(j) - 15) for i, j in response.nonzero()}
            assert hits == {(a * dilation, b * dilation) for a in (-1, 0, 1) for b in (-1, 0, 1)}
            assert torch.equal(response[response != 0], torch.ones(9))


def test_bad_dilation_options_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"large_dilation_on='medium' must be one of \['large_scale', 'small_scale'\]"):
        MultiScaleAttention([8], 3, [1.0, 0.5], in_keys=["head"], large_dilation_on="medium")
    with pytest.raises(ValueError, match=r"dilations=\[12, 2\] lists the dilation values from small to large "
                                         r"\(e.g. \[2, 12\]\); which stream gets which is large_dilation_on"):
        MultiScaleAttention([8], 3, [1.0, 0.5], in_keys=["head"], dilations=[12, 2])


def test_the_other_reading_of_the_dilations_is_one_config_override_away(make_cfg) -> None:
    base = [*SMALL, "fusion=msattn", RESNET_KEYS]
    as_run = build_segmentor(make_cfg(base=base), num_classes=5).fusion
    other = build_segmentor(make_cfg("fusion.large_dilation_on=small_scale", base=base), num_classes=5).fusion
    assert stream_dilation(as_run) == [12, 2] and stream_dilation(other) == [2, 12]  # model.scales=[1.0,0.5]


def test_hypercolumn_is_on_the_largest_grid_of_its_stages() -> None:
    _, features = streams()
    fusion = MultiScaleAttention([4, 6], 3, [1.0, 0.5], channels=8, in_keys=["early", "head"])
    column = fusion.hypercolumn(features[0])
    assert column.shape == (2, 10, 10, 14)
    assert torch.equal(column[:, :4], features[0]["early"])  # already on that grid: untouched
    assert torch.allclose(column[:, 4:], F.interpolate(features[0]["head"], size=(10, 14), mode="bilinear"))


@pytest.mark.parametrize(("choice", "extra", "channels"), [
    ("attention_to_scale", [], [512]),
    ("msattn", [RESNET_KEYS], [64, 128, 256, 512]),
])
def test_fusions_compose_from_the_config_with_channels_from_the_model(make_cfg, choice, extra, channels) -> None:
    model = build_segmentor(make_cfg(f"fusion={choice}", *extra, base=SMALL), num_classes=5).eval()
    fusion = model.fusion
    first = fusion.attention[0] if choice == "attention_to_scale" else fusion.streams[0][0]
    assert first.in_channels == (2 * 512 if choice == "attention_to_scale" else sum(channels))
    images = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        outputs = model.forward_raw(images)
        attention = model.scale_attention(images)
    assert set(outputs) == {"out", "out_scale1", "out_scale0.5"}
    assert outputs["out"].shape == (2, 5, 6, 5) and outputs["out_scale0.5"].shape == (2, 5, 3, 3)
    assert attention.shape == (2, 2, 48, 40)
    assert torch.allclose(attention.sum(dim=1), torch.ones(2, 48, 40), atol=1e-5)
    assert model.loss_weights == {"out": 1.0, "out_scale1": 1.0, "out_scale0.5": 1.0}  # 1 + S losses


class RecordingFusion(nn.Module):
    """Mean fusion that keeps the features it was given (to check what the segmentor passes)."""

    def __init__(self, in_channels: list[int], num_classes: int, scales: list[float], in_keys: list[str],
                 output_stride: int) -> None:
        super().__init__()
        self.in_keys, self.in_channels, self.scales = tuple(in_keys), in_channels, scales
        self.seen: list[dict[str, Tensor]] = []

    def forward(self, logits: list[Tensor], features: list[dict[str, Tensor]]) -> Tensor:
        self.seen = features
        return torch.stack(logits).mean(0)


@pytest.mark.usefixtures("trusted_targets")  # a class of this test module: not an allowed package
def test_the_fusion_reads_the_heads_penultimate_features_per_scale(make_cfg) -> None:
    cfg = make_cfg("fusion=mean", "fusion._target_=tests.models.test_scale_attention.RecordingFusion",
                   "+fusion.in_keys=[layer3,head]", "head.channels=16", base=SMALL)
    model = build_segmentor(cfg, num_classes=5).eval()
    assert model.fusion.in_channels == [256, 16] and model.fusion.scales == [1.0, 0.5]
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.forward_raw(images)
        half = F.interpolate(images, size=(16, 16), mode="bilinear")
        expected = model.head.forward_features(model.backbone(half)["out"])
    assert [tuple(f["head"].shape) for f in model.fusion.seen] == [(1, 16, 4, 4), (1, 16, 2, 2)]
    assert torch.allclose(model.fusion.seen[1]["head"], expected, atol=1e-5)


def test_a_fusion_reading_head_features_of_a_head_without_them_is_named(make_cfg) -> None:
    cfg = make_cfg("head=pac", "fusion=attention_to_scale", base=SMALL)
    with pytest.raises(ConfigError, match=r"fusion\.in_keys=\['head'\]: 'head' .* PACHead does not expose them"):
        build_segmentor(cfg, num_classes=5)
    with pytest.raises(ConfigError, match=r"fusion\.in_keys=.*no feature 'pool2'"):
        build_segmentor(make_cfg("fusion=msattn", base=SMALL), num_classes=5)  # VGG names on a ResNet


def test_decoder_learning_rate_covers_head_and_fusion(make_cfg) -> None:
    cfg = make_cfg("fusion=msattn", RESNET_KEYS, "schedule.head_lr_mult=10", "schedule.lr=0.01", base=SMALL)
    module = build_module(cfg, build_datamodule(cfg))
    optimizer, _ = module.schedule.build(module.model.backbone, module.head_parts(), max_steps=10)
    ids = {name: {id(p) for p in part.parameters()} for name, part in
           (("backbone", module.model.backbone), ("head", module.model.head), ("fusion", module.model.fusion))}
    groups = [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
    backbone_lrs = {lr for lr, params in groups if params & ids["backbone"]}
    decoder_lrs = {lr for lr, params in groups if params & (ids["head"] | ids["fusion"])}
    assert sorted(backbone_lrs) == pytest.approx([0.01]) and sorted(decoder_lrs) == pytest.approx([0.1])
    listed = {g["name"]: (g["lr"], len(g["params"])) for g in optimizer.param_groups}
    decoder = list(module.model.head.parameters()) + list(module.model.fusion.parameters())
    assert listed == {"backbone": (0.01, len(list(module.model.backbone.parameters()))),
                      "head": (pytest.approx(0.1), len(decoder))}
    grouped = set().union(*(params for _, params in groups))
    assert ids["fusion"] <= grouped and ids["head"] <= grouped and ids["backbone"] <= grouped


def test_validation_examples_log_the_attention_of_each_scale(make_cfg, tmp_path) -> None:
    cfg = make_cfg("fusion=attention_to_scale", base=SMALL)
    module = build_module(cfg, build_datamodule(cfg)).eval()
    logger = TensorBoardLogger(str(tmp_path))
    logged: dict[str, np.ndarray] = {}
    logger.experiment.add_images = lambda tag, images, step, dataformats: logged.__setitem__(tag, images)
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True)  # no run starts: log_image is replaced
    to_wandb: dict[str, dict] = {}
    wandb_logger.log_image = lambda key, images, step, **kwargs: to_wandb.__setitem__(key, {"images": images, **kwargs})
    datamodule = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), palette=((0, 0, 0),) * 5,
                                 class_names=tuple("abcde"))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, datamodule=datamodule,
                              loggers=[logger, wandb_logger], global_step=3)
    batch = {"image": torch.randn(3, 3, 32, 40), "label": torch.zeros(3, 32, 40, dtype=torch.long)}
    with torch.no_grad():
        scores = module(batch["image"])
        ValidationExamples(num_images=2).on_validation_batch_end(trainer, module, scores, batch, 0)
        weights = module.model.scale_attention(batch["image"][:2])
    assert set(logged) == {"val/examples", "val/scale_attention"}
    strips = logged["val/scale_attention"]
    assert strips.shape == (2, 32, 3 * 40, 3)  # image | scale 1 | scale 0.5
    expected = (weights[1, 1] * 255).round().byte().numpy()
    assert np.array_equal(strips[1, :, 80:, 0], expected)
    assert set(to_wandb) == {"val/examples", "val/scale_attention"}
    assert np.array_equal(to_wandb["val/scale_attention"]["images"][1], strips[1])
    assert to_wandb["val/scale_attention"]["caption"] == ["image | scale 1 | scale 0.5"] * 2


@pytest.mark.parametrize(("head", "overrides"), [("fcn", []), ("fcn", ["head.channels=16"]), ("aspp", [])])
def test_heads_split_into_features_and_classifier(make_cfg, head, overrides) -> None:
    model = build_segmentor(make_cfg(f"head={head}", *overrides, base=SMALL[:-1]), num_classes=5).eval()
    x = torch.randn(2, 512, 6, 5)
    with torch.no_grad():
        features = model.head.forward_features(x)
        assert features.shape[1] == model.head.feature_channels
        assert torch.equal(model.head.classify(features), model.head(x))


def test_msattn_dilations_follow_the_output_stride_only_on_the_heads_grid(make_cfg) -> None:
    base = [*SMALL, "backbone.output_stride=16", "fusion=msattn"]
    on_head = build_segmentor(make_cfg("fusion.in_keys=[head]", "fusion.multi_stage=false", base=base), 5)
    assert on_head.fusion.output_stride == 16
    on_head.set_output_stride(8)
    assert [s[0].dilation for s in on_head.fusion.streams] == [(24, 24), (4, 4)]
    assert [s[0].padding for s in on_head.fusion.streams] == [(24, 24), (4, 4)]
    on_head.set_output_stride(16)
    assert [s[0].dilation for s in on_head.fusion.streams] == [(12, 12), (2, 2)]
    with pytest.raises(ValueError, match=r"dilation 2 \(given at output stride 16\) is not an integer at .* 64"):
        on_head.fusion.set_output_stride(64)
    hypercolumn = build_segmentor(make_cfg(RESNET_KEYS, base=base), 5)  # layer1's stride-4 grid: unchanged
    hypercolumn.set_output_stride(8)
    assert [s[0].dilation for s in hypercolumn.fusion.streams] == [(12, 12), (2, 2)]
