"""Known-answer tests of the training / evaluation albumentations pipelines."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from segexp.data.datasets.base import IGNORE_INDEX
from segexp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DiscreteRandomScale,
    build_eval_transform,
    build_train_transform,
    scale_set,
)
from segexp.geometry import scaled_size


def _pair(height: int = 40, width: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (height, width), dtype=np.uint8)
    return image, mask


def test_scale_set_is_the_discrete_grid() -> None:
    assert scale_set((0.5, 2.0), 0.25) == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    assert scale_set((0.5, 1.9), 0.5) == (0.5, 1.0, 1.5)
    assert scale_set((1.0, 1.0), 0.25) == (1.0,)
    assert scale_set((0.5, 2.0), 0.0) == ()
    with pytest.raises(ValueError):
        scale_set((2.0, 0.5), 0.25)


def test_discrete_scale_takes_only_grid_values_and_resizes_accordingly() -> None:
    scaler = DiscreteRandomScale(scale_range=(0.5, 2.0), scale_step=0.25)
    pipeline = A.Compose([scaler])
    image, mask = _pair()
    allowed = {scaled_size((40, 60), s) for s in scaler.scales}
    seen = set()
    for seed in range(60):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape[:2] == out["mask"].shape
        seen.add(out["mask"].shape)
    assert seen <= allowed
    assert len(seen) >= 5  # the draw really varies


def test_continuous_scale_when_step_is_zero() -> None:
    scaler = DiscreteRandomScale(scale_range=(0.5, 2.0), scale_step=0.0)
    scaler.set_random_seed(3)
    draws = [scaler.sample_scale() for _ in range(50)]
    assert all(0.5 <= d <= 2.0 for d in draws)
    assert len({round(d, 6) for d in draws}) == 50


def test_mask_resize_is_nearest() -> None:
    scaler = DiscreteRandomScale(scale_range=(2.0, 2.0), scale_step=0.25)
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    out = A.Compose([scaler])(image=np.zeros((2, 2, 3), np.uint8), mask=mask)["mask"]
    np.testing.assert_array_equal(out, np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1))


def test_train_transform_exact_crop_and_ignore_padding() -> None:
    image, mask = _pair(20, 30)
    mask[:] = 1
    transform = build_train_transform((64, 48), scale_range=(1.0, 1.0), hflip=False)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (3, 64, 48)
    assert out["image"].dtype == torch.float32
    assert out["mask"].shape == (64, 48)
    labels = out["mask"].numpy()
    # a 20x30 image centred in 64x48: rows 22..41 and columns 9..38 are real, the rest is padding
    assert set(np.unique(labels)) == {1, IGNORE_INDEX}
    assert (labels == 1).sum() == 20 * 30
    np.testing.assert_array_equal(labels[22:42, 9:39], 1)
    # padded image pixels are the mean pixel (124, 116, 104), 0 after normalisation up to its uint8 rounding,
    # as the test-time padding (inference.pad_to) and TF DeepLab's training crops
    expected = (np.array([124, 116, 104]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out["image"][:, 0, 0].numpy(), expected, rtol=1e-5)
    assert np.abs(out["image"][:, 0, 0].numpy()).max() < 0.01


def test_train_transform_crop_size_for_every_scale() -> None:
    image, mask = _pair(50, 70)
    transform = build_train_transform((32, 40))
    for seed in range(20):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (3, 32, 40)
        assert out["mask"].shape == (32, 40)


def test_train_transform_is_a_function_of_the_seed() -> None:
    image, mask = _pair(50, 70)
    transform = build_train_transform((32, 32))
    transform.set_random_seed(7)
    first = transform(image=image, mask=mask)
    transform(image=image, mask=mask)  # advance the generators
    transform.set_random_seed(7)
    again = transform(image=image, mask=mask)
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["mask"], again["mask"])


def test_hflip_flips_image_and_mask_together() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0] = [[10, 20, 30], [40, 50, 60]]
    mask = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    transform = build_train_transform((2, 3), scale_range=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    outcomes = set()
    for seed in range(20):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        red = np.rint(out["image"][0].numpy() * 255).astype(int)
        labels = out["mask"].numpy()
        if labels[0, 0] == 0:
            np.testing.assert_array_equal(labels, mask)
            np.testing.assert_array_equal(red, [[10, 20, 30], [40, 50, 60]])
            outcomes.add("kept")
        else:
            np.testing.assert_array_equal(labels, [[2, 1, 0], [5, 4, 3]])
            np.testing.assert_array_equal(red, [[30, 20, 10], [60, 50, 40]])
            outcomes.add("flipped")
    assert outcomes == {"kept", "flipped"}


def test_eval_transform_normalises_without_resizing() -> None:
    image = np.full((5, 7, 3), 255, dtype=np.uint8)
    mask = np.zeros((5, 7), dtype=np.uint8)
    out = build_eval_transform()(image=image, mask=mask)
    assert out["image"].shape == (3, 5, 7)
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out["image"][:, 2, 3].numpy(), expected, rtol=1e-5)
    assert out["mask"].shape == (5, 7)


def test_invalid_crop_size() -> None:
    with pytest.raises(ValueError):
        build_train_transform((0, 32))
