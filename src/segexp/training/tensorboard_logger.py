"""TensorBoard logger whose HParams tab lists every run of a sweep with its settings and validation metrics.

Lightning's ``TensorBoardLogger`` writes the hparams plugin's summaries only together with metric *values*
(``default_hp_metric`` logs a placeholder ``hp_metric = -1``; passing ``metrics`` logs those values at the given
step), so with ``default_hp_metric: false`` a run's settings reach ``hparams.yaml`` but not the HParams tab. This
logger writes the plugin's experiment/session summaries with the *names* of the metrics the run will log
(``hp_metrics``, e.g. ``val/mIoU``); TensorBoard reads each metric's value from the run's own scalar series, so no
placeholder value enters a curve.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence
from typing import Any

from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams


class TensorBoardHParamsLogger(TensorBoardLogger):
    """``TensorBoardLogger`` that also registers the run's settings and ``hp_metrics`` with the HParams tab."""

    def __init__(self, *args: Any, hp_metrics: Sequence[str] = ("val/mIoU",), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hp_metrics = list(hp_metrics)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None,
                        step: int | None = None) -> None:
        super().log_hyperparams(params, metrics=metrics, step=step)
        if metrics is None and self.hp_metrics:
            self._write_hparams_plugin(params)

    def _write_hparams_plugin(self, params: dict[str, Any] | Namespace) -> None:
        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        # The metric values are not written: the HParams tab takes them from the scalar series of the same tags.
        experiment, start, end = hparams(flat, dict.fromkeys(self.hp_metrics, 0.0))
        writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)
