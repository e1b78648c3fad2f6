"""``inference.pad_to``: the papers' test geometry (DeepLabv3 Sec. 4.1, crop 513 at test time).

Known answers: a model reading the global average gives, padded, exactly the hand computation (pad with 0 at
the bottom/right, run, crop) and differs from the unpadded run; a 1x1-conv model is unchanged by padding; with
scales and flip the order is TF DeepLab's (pad, then resize / flip the padded image, average at the padded
size, crop), checked by hand against the other orders; bad values and too-large images are refused by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from segexp.models.backbones.resnet import ResNet
from segexp.models.heads.fcn import FCNHead
from segexp.models.losses.cross_entropy import CrossEntropy
from segexp.models.segmentor import Segmentor
from segexp.training.build import validate
from segexp.training.inference import Inference
from segexp.training.module import SegmentationModule
from segexp.training.schedules.poly import PolySchedule

CONF = Path(__file__).resolve().parents[2] / "conf"
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def global_model(x: Tensor) -> Tensor:
    """Per-pixel logits plus the image's global average (as DeepLabv3's image pooling adds)."""
    return x[:, :2] * 2 + x.mean(dim=(-2, -1), keepdim=True)[:, 1:3] * 5


def asymmetric_global_model(x: Tensor) -> Tensor:
    """``global_model`` plus a ramp along the width on class 0: neither flip- nor translation-equivariant."""
    ramp = torch.zeros(1, 2, 1, x.shape[-1])
    ramp[:, 0] = torch.linspace(0, 3, x.shape[-1])
    return global_model(x) + ramp


def pad_by_hand(x: Tensor, height: int, width: int) -> Tensor:
    return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=0.0)


def test_padded_scores_are_the_model_on_the_zero_padded_image_cropped_back() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 13)
    out = Inference(pad_to=[16, 16])(global_model, x)
    expected = global_model(pad_by_hand(x, 16, 16))[..., :10, :13]
    assert out.shape == (2, 2, 10, 13)  # the image's size, not the padded one
    assert torch.equal(out, expected)
    assert not torch.allclose(out, global_model(x), atol=1e-3)  # the global average saw the padding


def test_output_has_the_input_size_under_every_mode() -> None:
    x = torch.randn(1, 3, 10, 13)
    for inference in (Inference(pad_to=(16, 20)), Inference(pad_to=(16, 20), scales=[0.5, 1.0], flip=True),
                      Inference(pad_to=(16, 20), mode="slide", crop_size=(8, 8), stride=(6, 6))):
        assert inference(global_model, x).shape == (1, 2, 10, 13)


def test_a_purely_local_model_is_unchanged_by_padding() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=1)
    x = torch.randn(2, 3, 10, 13)
    with torch.no_grad():
        plain, padded = Inference()(conv, x), Inference(pad_to=[16, 16])(conv, x)
        slid = Inference(pad_to=[16, 16], mode="slide", crop_size=(8, 8), stride=(5, 5))(conv, x)
    assert torch.allclose(padded, plain, atol=1e-6)
    assert torch.allclose(slid, plain.softmax(1), atol=1e-6)  # slide averages probabilities


def test_a_pad_to_equal_to_the_image_size_changes_nothing() -> None:
    x = torch.randn(1, 3, 10, 13)
    assert torch.equal(Inference(pad_to=[10, 13])(global_model, x), global_model(x))


@pytest.mark.parametrize("bad", [[0, 513], [513], [513, 513, 3], [-1, 5], [1.5, 2], [True, 2], 513, "513"])
def test_bad_pad_to_values_are_refused_by_name(bad) -> None:
    with pytest.raises(ValueError, match=r"inference\.pad_to must be two positive integers"):
        Inference(pad_to=bad)


def test_pad_to_from_a_config_list_is_accepted() -> None:
    assert Inference(pad_to=OmegaConf.create([513, 513])).pad_to == (513, 513)
    assert Inference().pad_to is None


def test_an_image_larger_than_pad_to_fails_naming_the_key_and_the_sizes() -> None:
    x = torch.randn(1, 3, 10, 13)
    with pytest.raises(ValueError, match=r"inference\.pad_to=\[12, 12\] is smaller than a test image of 10x13"):
        Inference(pad_to=[12, 12])(global_model, x)
    with pytest.raises(ValueError, match=r"10x13"):
        Inference(pad_to=[9, 20])(global_model, x)


def test_scales_and_flip_act_on_the_padded_image_as_tf_deeplab_does() -> None:
    """Pad 10x13 -> 16x16; per scale resize the padded image (16 -> 8 at 0.5), flip the padded image (its
    padding then on the left), resize the logits back to 16x16, softmax, average the four, crop to 10x13."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 10, 13)
    model = asymmetric_global_model
    out = Inference(pad_to=[16, 16], scales=[0.5, 1.0], flip=True)(model, x)

    padded = pad_by_hand(x, 16, 16)
    half = F.interpolate(padded, size=(8, 8), mode="bilinear", align_corners=False)

    def up(p: Tensor) -> Tensor:
        return F.interpolate(p, size=(16, 16), mode="bilinear", align_corners=False)

    views = [up(model(half)).softmax(1), up(model(half.flip(-1)).flip(-1)).softmax(1),
             model(padded).softmax(1), model(padded.flip(-1)).softmax(1).flip(-1)]
    expected = (sum(views) / 4)[..., :10, :13]
    assert torch.allclose(out, expected, atol=1e-6)

    # The other orders give other scores, so the test tells them apart: scaling the unpadded image and padding
    # each scaled view to the scaled pad size, or flipping the image before padding it (padding on the right).
    def pad_each_scale(view: Tensor, scale: float) -> Tensor:
        small = F.interpolate(view, scale_factor=scale, mode="bilinear") if scale != 1.0 else view
        side = int(16 * scale)
        scores = model(pad_by_hand(small, side, side)).softmax(1)[..., : small.shape[-2], : small.shape[-1]]
        return F.interpolate(scores, size=(10, 13), mode="bilinear", align_corners=False)

    scale_first = sum(pad_each_scale(x, s) + pad_each_scale(x.flip(-1), s).flip(-1) for s in (0.5, 1.0)) / 4
    assert not torch.allclose(out, scale_first, atol=1e-3)
    flipped_padded_right = model(pad_by_hand(x.flip(-1), 16, 16)).softmax(1)[..., :10, :13].flip(-1)
    flip_first = (model(padded).softmax(1)[..., :10, :13] + flipped_padded_right) / 2
    single_scale = Inference(pad_to=[16, 16], flip=True)(model, x)
    tf_order = (model(padded).softmax(1) + model(padded.flip(-1)).softmax(1).flip(-1))[..., :10, :13] / 2
    assert torch.allclose(single_scale, tf_order, atol=1e-6)
    assert not torch.allclose(single_scale, flip_first, atol=1e-3)


def test_evaluation_scores_the_unpadded_labels_and_keeps_the_logit_loss() -> None:
    """Through the LightningModule: the confusion matrix counts the image's pixels only, and with a plain
    (single-scale, no flip) padded inference the eval loss is still computed on logits."""
    torch.manual_seed(0)
    backbone = ResNet(18, output_stride=8)
    segmentor = Segmentor(backbone, FCNHead(backbone.out_channels, 2, output_stride=8)).eval()
    module = SegmentationModule(segmentor, CrossEntropy(), PolySchedule(), class_names=("a", "b"),
                                inference=Inference(pad_to=[40, 40]))
    assert module.inference.is_plain
    images, labels = torch.randn(1, 3, 30, 27), torch.randint(0, 2, (1, 30, 27))
    with torch.no_grad():
        logits = module._eval_step({"image": images, "label": labels}, "val")
        expected = segmentor(pad_by_hand(images, 40, 40))[..., :30, :27]
    assert logits.shape == (1, 2, 30, 27)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert int(module.confusion.compute().sum()) == 30 * 27
    assert torch.allclose(module.eval_loss.compute(), F.cross_entropy(expected, labels), atol=1e-5)


def test_the_inference_configs_carry_pad_to_and_the_validator_checks_it(make_cfg) -> None:
    for group in ("whole", "slide"):
        node = OmegaConf.load(CONF / "inference" / f"{group}.yaml")
        assert "pad_to" in node and node.pad_to is None
    cfg = make_cfg("inference.pad_to=[513,513]")
    validate(cfg)
    assert Inference(**{k: v for k, v in cfg.inference.items() if k != "_target_"}).pad_to == (513, 513)
    with pytest.raises(Exception, match=r"inference\.pad_to"):
        validate(make_cfg("inference.pad_to=[513,513,3]"))
