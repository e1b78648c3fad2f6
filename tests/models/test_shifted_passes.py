"""Shifted passes (FCRN Sec. 3.2): four passes of an OS-8 network interleave into the dense OS-4 output of
the same weights, at test time and (gradients) at training time."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segexp.models.backbones.resnet import ResNet
from segexp.models.heads.fcn import FCNHead
from segexp.models.losses.cross_entropy import CrossEntropy
from segexp.models.segmentor import Segmentor
from segexp.models.shifted_passes import interleave, shifted_pass_outputs
from segexp.training.inference import Inference
from segexp.training.module import SegmentationModule
from segexp.training.schedules.poly import PolySchedule

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def test_interleave_puts_each_pass_at_its_offset_odd_sizes_too() -> None:
    dense = torch.arange(5 * 4, dtype=torch.float32).reshape(1, 1, 5, 4)
    passes = {(dy, dx): dense[..., dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)}
    assert passes[(1, 0)].shape[-2] == 2 and passes[(0, 0)].shape[-2] == 3
    assert torch.equal(interleave(passes), dense)


def os8_model(depth: int) -> Segmentor:
    torch.manual_seed(0)
    backbone = ResNet(depth, output_stride=8)
    head = FCNHead(backbone.out_channels, 5, output_stride=8, kernel_size=3, dilation=2)
    model = Segmentor(backbone, head)
    for module in model.modules():  # non-trivial BN statistics, fixed (eval mode), as FCRN trains
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def dense_os4(model: Segmentor) -> Segmentor:
    """The same weights at OS 4. By the hole algorithm the removed stride's own conv keeps its rate 1 and every
    dilation after it doubles (layer2's later convs 2, layer3 4 after its entry conv at 2, layer4 8 after 4,
    the 3x3 classifier 4)."""
    dense = copy.deepcopy(model)
    strided = [m for m in dense.backbone.layer2[0].modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    dense.set_output_stride(4)
    assert strided and all(conv.stride == (1, 1) and conv.dilation == (1, 1) for conv in strided)
    assert dense.head.classifier.dilation == (4, 4)
    return dense


@pytest.mark.parametrize(("depth", "size"), [(18, 64), (50, 64), (18, 68)])
def test_four_shifted_passes_equal_the_dense_half_stride_network(depth: int, size: int) -> None:
    model = os8_model(depth)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        shifted = shifted_pass_outputs(model, images)["out"]
        single = model.forward_raw(images)["out"]
        dense = dense_os4(model).forward_raw(images)["out"]
    assert single.shape[-1] == -(-size // 8) and shifted.shape == dense.shape
    assert shifted.shape[-1] == -(-size // 4)  # twice the resolution of one pass
    torch.testing.assert_close(shifted, dense, atol=1e-4, rtol=1e-4)
    assert model.backbone.layer2[0].conv2.stride == (2, 2) or model.backbone.layer2[0].conv1.stride == (2, 2)


def test_inference_shift_passes_scores_the_dense_network_and_combines_with_flip() -> None:
    model = os8_model(18)
    dense = dense_os4(model)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # one scale, no flip: the mean of one probability map
        torch.testing.assert_close(Inference(shift_passes=2)(model, images), dense(images).softmax(1),
                                   atol=1e-4, rtol=1e-4)
        flipped = Inference(shift_passes=2, flip=True)(model, images)
        expected = (dense(images).softmax(1) + dense(images.flip(-1)).softmax(1).flip(-1)) / 2
    torch.testing.assert_close(flipped, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"inference\.shift_passes must be 1"):
        Inference(shift_passes=4)


def test_shifted_pass_training_step_has_the_gradient_of_the_dense_step() -> None:
    model = os8_model(18)
    dense = dense_os4(model)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    grads = []
    for net, shifted in ((model, True), (dense, False)):
        module = SegmentationModule(net, CrossEntropy(), PolySchedule(), class_names=tuple("abcde"),
                                    train_shift_passes=shifted)
        net.zero_grad()
        module.training_step({"image": images, "label": labels}, 0).backward()
        grads.append({name: p.grad.clone() for name, p in net.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_shifted_passes_need_a_strided_stage() -> None:
    model = Segmentor(ResNet(18, output_stride=4), FCNHead(512, 3, output_stride=4)).eval()
    with pytest.raises(ValueError, match="no strided stage after the stem"):
        shifted_pass_outputs(model, torch.randn(1, 3, 32, 32))


def test_shift_pass_options_compose(make_cfg) -> None:
    from segexp.cli.train import run_training

    cfg = make_cfg("backbone.output_stride=8", "model.train_shift_passes=true", "inference.shift_passes=2",
                   "model.freeze_bn=true", "trainer.max_steps=2", "trainer.val_check_interval=2")
    metrics = run_training(cfg)
    assert metrics["steps"] == 2 and 0.0 <= metrics["mIoU"] <= 1.0


def test_shift_passes_on_a_model_without_a_strided_stage_fail_before_training(make_cfg) -> None:
    from segexp.config import ConfigError
    from segexp.training.build import build_datamodule, build_module

    cfg = make_cfg("backbone.output_stride=4", "inference.shift_passes=2")
    with pytest.raises(ConfigError, match=r"inference\.shift_passes=2: shifted passes cannot run on this model: "
                                          r"ResNet at output stride 4 has no strided stage"):
        build_module(cfg, build_datamodule(cfg))


def test_shifted_passes_through_an_extra_block_identity_shortcut() -> None:
    """When the last strided stage is an extra block (DeepLabv3 block5, OS 64), its subsampled identity shortcut
    runs densely with the strided conv, so the four passes equal the OS-32 network of the same weights."""
    torch.manual_seed(0)
    backbone = ResNet(18, output_stride=64, extra_blocks=1)
    model = Segmentor(backbone, FCNHead(backbone.out_channels, 3, output_stride=64, kernel_size=1)).eval()
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        shifted = shifted_pass_outputs(model, images)["out"]
        dense = copy.deepcopy(model)
        dense.set_output_stride(32)
        expected = dense.forward_raw(images)["out"]
    assert model.backbone.last_strided_stage() == "layer5"
    torch.testing.assert_close(shifted, expected, atol=1e-4, rtol=1e-4)
