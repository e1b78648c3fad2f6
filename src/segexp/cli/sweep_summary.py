"""The table printed at the end of a Hydra multirun of segexp-train or segexp-eval: one line per job with the
values of the swept settings (the settings common to every job printed once above), status, final and best val
mIoU, and the first line of its error.

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


def swept_keys(task_overrides: list[str]) -> set[str]:
    """The keys (or groups) that take several values in a multirun's overrides (``head=aspp,psp`` -> ``head``)."""
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(task_overrides) if o.is_sweep_override()}


def _swept_part(overrides: list[str], keys: set[str] | None) -> list[str]:
    if keys is None:
        return overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [text for text, override in zip(overrides, parsed, strict=True) if override.key_or_group in keys]


def job_rows(sweep_dir: Path, keys: set[str] | None = None) -> list[dict[str, Any]]:
    """What each job folder under ``sweep_dir`` says about its job, in the order the jobs started; with ``keys``,
    only the overrides of those keys (the swept ones) are kept."""
    rows = []
    job_dirs = sorted((p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")),
                      key=lambda d: (d / ".hydra").stat().st_mtime)
    for job_dir in job_dirs:
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
        row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir)),
                               "overrides": " ".join(_swept_part(overrides, keys))}
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


def render(rows: list[dict[str, Any]], sweep_dir: Path, common: list[str] | None = None) -> str:
    """A plain-text table: job, status, final / best mIoU (%), (swept) overrides, first error line; ``common``:
    the overrides every job shares, printed once above the table."""
    lines = [f"multirun summary ({sweep_dir}): {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} jobs ok"]
    if common:
        lines.append(f"every job: {' '.join(common)}")
    shown = "swept settings" if common is not None else "overrides"
    lines.append(f"{'job':<16} {'status':<10} {'mIoU':>6} {'best':>6}  {shown} / error")
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
        self.task_overrides: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.task_overrides = list(config.hydra.overrides.task)
        self.expected = count_jobs(self.task_overrides)
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
        keys = swept_keys(self.task_overrides)
        parsed = OverridesParser.create().parse_overrides(self.task_overrides)
        common = [text for text, o in zip(self.task_overrides, parsed, strict=True) if o.key_or_group not in keys]
        print("\n" + render(job_rows(sweep_dir, keys), sweep_dir, common), flush=True)
        self.printed = True
