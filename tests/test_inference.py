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
    half = F.interpolate(_pixel_model(F.interpolate(x, size=(8, 6), mode="bilinear")).softmax(1), size=(16, 12),
                         mode="bilinear")
    assert out.shape == (2, 2, 16, 12)
    assert torch.allclose(out, (half + _pixel_model(x).softmax(1)) / 2, atol=1e-6)


def test_sliding_window_equals_whole_image_for_a_pixelwise_model() -> None:
    x = torch.randn(1, 3, 20, 30)
    out = sliding_window(_pixel_model, x, crop=(8, 8), stride=(5, 6))
    assert out.shape == (1, 2, 20, 30)
    assert torch.allclose(out, _pixel_model(x), atol=1e-6)
