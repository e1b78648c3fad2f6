"""Online bootstrapping of hard pixels (FCRN Sec. 3.3, Eq. 1) on hand-made logits with known kept sets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segexp.models.losses.bootstrap import BootstrappedCrossEntropy


def two_class_logits(p_true: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 2 classes whose softmax gives each pixel ground-truth probability ``p_true`` (label 0)."""
    p = torch.tensor(p_true, dtype=torch.float64)  # (B, N)
    logits = torch.stack([torch.log(p), torch.log1p(-p)], dim=1)[..., None]  # (B, 2, N, 1)
    return logits.requires_grad_(True), torch.zeros(p.shape + (1,), dtype=torch.long)


def nll(p: float) -> float:
    return -math.log(p)


def test_top_k_per_image_keeps_the_k_hardest_pixels_of_each_crop() -> None:
    logits, labels = two_class_logits([[0.9, 0.2, 0.6, 0.4], [0.5, 0.95, 0.1, 0.8]])
    loss = BootstrappedCrossEntropy(top_k=2)(logits, labels)
    expected = (nll(0.2) + nll(0.4) + nll(0.1) + nll(0.5)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_top_k_per_batch_pools_the_crops() -> None:
    logits, labels = two_class_logits([[0.9, 0.2, 0.6, 0.4], [0.5, 0.95, 0.1, 0.8]])
    loss = BootstrappedCrossEntropy(top_k=3, per_image=False)(logits, labels)
    assert loss.item() == pytest.approx((nll(0.1) + nll(0.2) + nll(0.4)) / 3, rel=1e-9)


def test_threshold_keeps_pixels_below_t_and_is_raised_to_keep_top_k() -> None:
    logits, labels = two_class_logits([[0.9, 0.2, 0.6, 0.4, 0.3]])
    below_t = BootstrappedCrossEntropy(top_k=2, threshold=0.5)(logits, labels)  # 0.2, 0.4, 0.3 < 0.5: 3 >= 2
    assert below_t.item() == pytest.approx((nll(0.2) + nll(0.4) + nll(0.3)) / 3, rel=1e-9)
    raised = BootstrappedCrossEntropy(top_k=4, threshold=0.5)(logits, labels)  # only 3 below: t raised to 0.6+
    assert raised.item() == pytest.approx((nll(0.2) + nll(0.4) + nll(0.3) + nll(0.6)) / 4, rel=1e-9)


def test_fewer_labelled_pixels_than_k_keeps_all_and_ignored_pixels_are_never_kept() -> None:
    logits, labels = two_class_logits([[0.9, 0.2, 0.6, 0.4]])
    labels[0, 1, 0] = 255  # the hardest pixel is ignored
    loss = BootstrappedCrossEntropy(top_k=512)(logits, labels)
    assert loss.item() == pytest.approx((nll(0.9) + nll(0.6) + nll(0.4)) / 3, rel=1e-9)
    labels[:] = 255
    assert BootstrappedCrossEntropy(top_k=2)(logits, labels).item() == 0.0


def test_gradients_are_zero_on_the_pixels_not_kept() -> None:
    logits, labels = two_class_logits([[0.9, 0.2, 0.6, 0.4]])
    BootstrappedCrossEntropy(top_k=2)(logits, labels).backward()
    grad_norm = logits.grad.abs().sum(dim=(0, 1, 3))
    assert (grad_norm[[0, 2]] == 0).all() and (grad_norm[[1, 3]] > 0).all()


def test_top_k_at_least_the_labelled_pixels_equals_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 6, 6), torch.randint(0, 5, (2, 6, 6))
    labels[0, :2] = 255
    loss = BootstrappedCrossEntropy(top_k=36)(logits, labels)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, ignore_index=255))


@pytest.mark.parametrize(("kwargs", "message"), [({"top_k": 0}, "top_k"), ({"threshold": 1.5}, "threshold")])
def test_bad_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=rf"loss\.{message}"):
        BootstrappedCrossEntropy(**kwargs)


def test_loss_bootstrap_composes_and_trains(make_cfg) -> None:
    from segexp.cli.train import run_training

    metrics = run_training(make_cfg("loss=bootstrap", "loss.top_k=256", "trainer.max_steps=2",
                                    "trainer.val_check_interval=2"))
    assert metrics["steps"] == 2 and 0.0 <= metrics["mIoU"] <= 1.0
