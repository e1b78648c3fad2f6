"""Segmentation metrics derived from one confusion matrix accumulated over a whole split.

The matrix is torchmetrics' ``MulticlassConfusionMatrix`` (rows = true class, columns =
prediction, ignore label excluded, synchronised across DDP ranks by torchmetrics). From it:
per-class IoU = TP / (TP + FP + FN); mIoU = mean over classes whose IoU is defined (classes absent
from both labels and predictions are skipped, as in mmsegmentation); pixel accuracy = trace / sum;
mean class accuracy = mean over labelled classes of TP / (TP + FN). These are the measures the
FCRN paper reports (pixel acc., mean acc., mIoU) and the only one the others report (mIoU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from segexp.data.datasets.base import IGNORE_INDEX


def confusion_matrix_metric(num_classes: int, ignore_index: int = IGNORE_INDEX) -> MulticlassConfusionMatrix:
    """A confusion-matrix accumulator over predicted and true label maps."""
    return MulticlassConfusionMatrix(
        num_classes=num_classes, ignore_index=ignore_index, normalize="none", validate_args=False
    )


def metrics_from_confusion(confusion: Tensor, class_names: Sequence[str]) -> dict:
    """mIoU, pixel accuracy, mean class accuracy and named per-class IoU from a confusion matrix."""
    cm = confusion.double()
    tp = cm.diag()
    gt_total = cm.sum(dim=1)
    pred_total = cm.sum(dim=0)
    union = gt_total + pred_total - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    class_acc = torch.where(gt_total > 0, tp / gt_total.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    return {
        "mIoU": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": _nanmean(class_acc),
        "per_class_iou": {name: _finite_or_none(v) for name, v in zip(class_names, iou.tolist())},
    }


def _nanmean(values: Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else float("nan")


def _finite_or_none(value: float) -> float | None:
    return None if value != value else value  # NaN -> None keeps metrics.json valid JSON
