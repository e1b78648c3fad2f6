"""``<job output dir>/job_status.json``: how a Hydra job of segexp-train or segexp-eval ended, written by a Hydra
callback (``hydra.callbacks.job_status`` in conf/train.yaml and conf/eval.yaml) from the ``JobReturn`` Hydra
hands it, for every job of a run or a multirun, under any launcher.

    {"status": "FAILED", "error_type": "ValueError", "error": "ValueError: loss.class_weights has ...",
     "overrides": ["+table_row=broken/seed0"]}

``status`` is Hydra's ``JobStatus`` name (``COMPLETED`` or ``FAILED``); ``error_type`` and ``error`` only for a
failed job. A table runner reads why a job failed from this file (:func:`segexp.tables.runner.collect`);
``error.json`` (written by the job itself, see :func:`segexp.training.harness.failure_record`) adds the step and
traceback.
A job stopped by something other than an ``Exception`` (Ctrl-C, a kill) writes no status file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from segexp import atomic
from segexp.tables.store import JOB_STATUS_FILE


def status_record(job_return: JobReturn) -> dict[str, Any]:
    """What ``job_status.json`` holds for a job that ended this way."""
    record: dict[str, Any] = {"status": job_return.status.name, "overrides": list(job_return.overrides or [])}
    if job_return.status == JobStatus.FAILED:
        # The exception itself: the public ``return_value`` re-raises it (and prints Hydra's error report).
        error = job_return._return_value
        record["error_type"] = type(error).__name__
        record["error"] = f"{type(error).__name__}: {error}"
    return record


def job_output_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.runtime.output_dir))


class JobStatusFile(Callback):
    """Hydra callback: removes a stale ``job_status.json`` when a job starts, writes the new one when it ends."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        (job_output_dir(config) / JOB_STATUS_FILE).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        output_dir = job_output_dir(config)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(output_dir / JOB_STATUS_FILE, status_record(job_return))
