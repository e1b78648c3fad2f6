import torch
import torch.nn.functional as F

from segexp.training.inference import Inference, sliding_window


def _pixel_model(x: torch.Tensor) -> torch.Tensor:
    """A 'model' whose logits are a fixed per-pixel function of the input (translation-equivariant)."""
    return torch.cat([x[:, :1], -x[:, :1]], dim=1) * 3


def test_single_scale_returns_logits_unchanged() -> None:
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(Inference()(_pixel_model, x), _pixel_model(x))


def test_flip_averages_probabilities_of_flipped_views() -> None:
    x = torch.randn(1, 3, 6, 6)
    asym = lambda t: _pixel_model(t) + torch.linspace(0, 1, t.shape[-1])  # noqa: E731 - not flip-equivariant
    out = Inference(flip=True)(asym, x)
    expected = (asym(x).softmax(1) + asym(x.flip(-1)).softmax(1).flip(-1)) / 2
    assert torch.allclose(out, expected)


def test_multi_scale_average_and_output_size() -> None:
    x = torch.randn(2, 3, 16, 12)
    out = Inference(scales=[0.5, 1.0])(_pixel_model, x)
    # each scale's logits are resized back to the image, then turned into probabilities (TF DeepLab, mmseg)
    half = F.interpolate(_pixel_model(F.interpolate(x, size=(8, 6), mode="bilinear")), size=(16, 12),
                         mode="bilinear").softmax(1)
    assert out.shape == (2, 2, 16, 12)
    assert torch.allclose(out, (half + _pixel_model(x).softmax(1)) / 2, atol=1e-6)
    resized_probabilities = F.interpolate(
        _pixel_model(F.interpolate(x, size=(8, 6), mode="bilinear")).softmax(1), size=(16, 12), mode="bilinear")
    assert not torch.allclose(half, resized_probabilities, atol=1e-3)  # the order matters on this input


def test_scaled_test_inputs_round_half_up_as_training_and_the_model_do() -> None:
    seen: list[tuple[int, int]] = []

    def model(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape[-2:]))
        return _pixel_model(images)

    Inference(scales=[0.5, 1.0])(model, torch.randn(1, 3, 373, 375))
    assert seen == [(187, 188), (373, 375)]  # 186.5 -> 187, 187.5 -> 188


def test_the_predictor_resizes_as_the_model_does(make_cfg) -> None:
    from segexp.training.build import build_datamodule, build_module

    for corners in (False, True):
        cfg = make_cfg(f"model.align_corners={str(corners).lower()}", "inference.scales=[0.5,1.0]")
        module = build_module(cfg, build_datamodule(cfg))
        assert module.inference.align_corners is corners and module.model.align_corners is corners


def test_sliding_window_equals_whole_image_for_a_pixelwise_model() -> None:
    x = torch.randn(1, 3, 20, 30)
    out = sliding_window(_pixel_model, x, crop=(8, 8), stride=(5, 6))
    assert out.shape == (1, 2, 20, 30)
    assert torch.allclose(out, _pixel_model(x), atol=1e-6)
