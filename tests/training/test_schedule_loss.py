import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segexp.models.losses.cross_entropy import CrossEntropy
from segexp.training.schedules.poly import PolySchedule


def _lrs(schedule: PolySchedule, max_steps: int, steps: int) -> list[float]:
    backbone, head = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer, scheduler = schedule.build(backbone, [head], max_steps)
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def test_poly_lr_at_given_steps() -> None:
    lrs = _lrs(PolySchedule(lr=0.01, power=0.9), max_steps=100, steps=100)
    assert lrs[0][0] == pytest.approx(0.01)
    assert lrs[50][0] == pytest.approx(0.01 * 0.5**0.9)
    assert lrs[90][0] == pytest.approx(0.01 * 0.1**0.9)
    assert lrs[99][0] == pytest.approx(0.01 * 0.01**0.9)


def test_poly_min_lr_warmup_and_head_multiplier() -> None:
    s = PolySchedule(lr=0.1, power=1.0, min_lr=0.02, warmup_steps=10, warmup_start_factor=0.1, head_lr_mult=10)
    lrs = _lrs(s, max_steps=100, steps=100)
    assert lrs[0] == pytest.approx([0.01, 0.1])  # warm-up starts at 0.1 x base; head 10x
    assert lrs[5][0] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert lrs[10][0] == pytest.approx(0.1 * 0.9)
    assert lrs[95][0] == pytest.approx(0.02)  # floored at min_lr
    assert lrs[95][1] == pytest.approx(0.2)


def test_no_decay_on_norm_and_bias() -> None:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    groups = PolySchedule(weight_decay=1e-4, no_decay_norm_bias=True).param_groups(backbone, [])
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(backbone[0].weight)}


def test_cross_entropy_equals_formula_with_ignore_and_weights() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2 classes, 1, 2 pixels)
    target = torch.tensor([[[0, 255]]])
    loss = CrossEntropy()(logits, target)
    assert float(loss) == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)))
    target = torch.tensor([[[0, 1]]])
    weighted = CrossEntropy(class_weights=[1.0, 3.0])(logits, target)
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    l1 = -math.log(math.exp(1) / (math.exp(1) + 1))
    assert float(weighted) == pytest.approx((l0 + 3 * l1) / 4)
    assert float(CrossEntropy()(logits, torch.full((1, 1, 2), 255))) == 0.0
    assert float(CrossEntropy()(logits, target)) == pytest.approx(float(F.cross_entropy(logits, target)))
