"""The table printed at the end of a Hydra multirun of segexp-train or segexp-eval: one line per job with its
overrides, status, final and best val mIoU, and the first line of its error.

Hydra's basic launcher stops reporting at the first failed job, so the summary is built from what each job
left in its folder (``.hydra/overrides.yaml``, ``metrics.json`` or ``error.json``) and printed when the last
job ends -- whether or not jobs failed -- or, for launchers that run jobs elsewhere, when the multirun ends.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from segexp.tables.store import ERROR_FILE, METRICS_FILE, read_json


def count_jobs(task_overrides: list[str]) -> int:
    """Jobs of the basic sweeper: the product of the lengths of the sweep overrides (``a=1,2`` -> 2)."""
    total = 1
    for override in OverridesParser.create().parse_overrides(task_overrides):
        if override.is_sweep_override():
            total *= len(list(override.sweep_string_iterator()))
    return total


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """What each job folder under ``sweep_dir`` says about its job, in the order the jobs started."""
    rows = []
    job_dirs = sorted((p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")),
                      key=lambda d: (d / ".hydra").stat().st_mtime)
    for job_dir in job_dirs:
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
        row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir)), "overrides": " ".join(overrides)}
        metrics, error = read_json(job_dir / METRICS_FILE), read_json(job_dir / ERROR_FILE)
        if metrics is not None:
            row.update(status="ok", mIoU=metrics.get("mIoU"), best=metrics.get("best_mIoU"))
        elif error is not None:
            row.update(status="failed", error=headline(str(error.get("error") or "")))
        else:
            row.update(status="unfinished")
        rows.append(row)
    return rows


def headline(error: str) -> str:
    """The first line of an error message, with the next one when the first only introduces it (Hydra's
    "Error in call to target '...':" is followed by the real error)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else ""


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def render(rows: list[dict[str, Any]], sweep_dir: Path) -> str:
    """A plain-text table: job, status, final / best mIoU (%), overrides, first error line."""
    lines = [f"multirun summary ({sweep_dir}): {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} jobs ok",
             f"{'job':<16} {'status':<10} {'mIoU':>6} {'best':>6}  overrides / error"]
    for row in rows:
        lines.append(f"{row['job']:<16} {row['status']:<10} {_percent(row.get('mIoU')):>6} "
                     f"{_percent(row.get('best')):>6}  {row['overrides']}")
        if row.get("error"):
            lines.append(f"{'':<42}error: {row['error']}")
    return "\n".join(lines)


class MultirunSummary(Callback):
    """Hydra callback (``hydra.callbacks.summary`` in conf/train.yaml and conf/eval.yaml)."""

    def __init__(self) -> None:
        self.expected = 0
        self.ended = 0
        self.printed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.expected = count_jobs(list(config.hydra.overrides.task))
        self.ended, self.printed = 0, False

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.ended += 1
        if self.expected and self.ended == self.expected:
            self.print_summary(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.print_summary(config)

    def print_summary(self, config: DictConfig) -> None:
        if self.printed:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        print("\n" + render(job_rows(sweep_dir), sweep_dir), flush=True)
        self.printed = True
