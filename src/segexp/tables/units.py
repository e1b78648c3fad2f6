"""The metrics a table may report and their units in the papers: metrics.json holds fractions (mIoU 0.78),
the papers percentages (78.0 %), sizes in MB and times in seconds."""

from __future__ import annotations

MEASURABLE = ("size_mb", "test_time_s")
PER_CLASS_PREFIX = "per_class_iou."
METRIC_SCALES: dict[str, float] = {
    "mIoU": 100.0,
    "pixel_acc": 100.0,
    "mean_acc": 100.0,
    "size_mb": 1.0,
    "test_time_s": 1.0,
    "relative_time": 1.0,
}
"""Factor from a metrics.json value to the papers' units (fractions -> %)."""
METRIC_UNITS: dict[str, str] = {"size_mb": "MB", "test_time_s": "s", "relative_time": "x baseline"}
"""The unit of the metrics not given in % (those scaled by 100)."""


def metric_scale(name: str) -> float:
    """Factor from metrics.json units to the paper's; KeyError for an unknown metric."""
    if name.startswith(PER_CLASS_PREFIX):
        return 100.0
    return METRIC_SCALES[name]


def metric_unit(name: str) -> str:
    """The paper's unit of a metric: ``%`` for mIoU, accuracies and per-class IoU."""
    return "%" if metric_scale(name) == 100.0 else METRIC_UNITS[name]


def is_known_metric(name: str) -> bool:
    return name in METRIC_SCALES or (name.startswith(PER_CLASS_PREFIX) and len(name) > len(PER_CLASS_PREFIX))
