import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segexp.training.metrics import confusion_matrix_metric, metrics_from_confusion


def test_metrics_on_hand_made_confusion() -> None:
    # rows = truth, cols = prediction
    cm = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    iou_a = 8 / (10 + 9 - 8)
    iou_b = 3 / (4 + 5 - 3)
    assert m["per_class_iou"]["a"] == pytest.approx(iou_a)
    assert m["per_class_iou"]["b"] == pytest.approx(iou_b)
    assert m["per_class_iou"]["c"] is None  # absent from labels and predictions: excluded
    assert m["mIoU"] == pytest.approx((iou_a + iou_b) / 2)
    assert m["pixel_acc"] == pytest.approx(11 / 14)
    assert m["mean_acc"] == pytest.approx((8 / 10 + 3 / 4) / 2)


def test_predicted_but_absent_class_counts_as_zero_iou() -> None:
    cm = torch.tensor([[5, 1], [0, 0]])
    m = metrics_from_confusion(cm, ["a", "b"])
    assert m["per_class_iou"]["b"] == 0.0
    assert m["mIoU"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert math.isclose(m["mean_acc"], 5 / 6)


def test_accumulated_confusion_matches_torchmetrics_and_ignores_255() -> None:
    g = torch.Generator().manual_seed(0)
    metric = confusion_matrix_metric(4)
    jaccard = MulticlassJaccardIndex(4, ignore_index=255, average="macro")
    acc = MulticlassAccuracy(4, ignore_index=255, average="micro")
    for _ in range(3):  # several batches: whole-split accumulation, not a mean of batch scores
        target = torch.randint(0, 4, (2, 16, 16), generator=g)
        target[:, :3] = 255
        pred = torch.where(torch.rand(2, 16, 16, generator=g) < 0.6, target, torch.randint(0, 4, (2, 16, 16)))
        pred[pred == 255] = 0
        metric.update(pred, target)
        jaccard.update(pred, target)
        acc.update(pred, target)
    m = metrics_from_confusion(metric.compute(), list("abcd"))
    assert m["mIoU"] == pytest.approx(float(jaccard.compute()), abs=1e-6)
    assert m["pixel_acc"] == pytest.approx(float(acc.compute()), abs=1e-6)
    assert int(metric.compute().sum()) == 3 * 2 * 13 * 16  # ignored rows excluded
