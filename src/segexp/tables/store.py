"""Reading a table's run folders back: per row, the seeds that finished, their metrics and run records.

Layout (written by :mod:`segexp.tables.runner`): ``outputs/tables/<id>/<profile>/<row>/seed<k>/`` with
``metrics.json`` (segexp-train / segexp-eval), ``table_row.json`` (the runner's record: config hash,
overrides, warnings), ``job_status.json`` (how the Hydra job ended) and, for a failed run, ``error.json``.
Reports of profiles that are not evidence (``evidence: false``, e.g. smoke) are scratch output in
``outputs/tables/reports/``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexp.training.run_files import ERROR_FILE, METRICS_FILE

TABLE_ROW_FILE = "table_row.json"
JOB_STATUS_FILE = "job_status.json"
"""How the Hydra job ended (COMPLETED / FAILED with the error), written by :mod:`segexp.cli.job_status`."""
NOT_RUN_FILE = "not_run.json"
"""In a row folder: why the last ``segexp-table run`` could not run the row under this profile."""
SEED_DIR = re.compile(r"^seed(\d+)$")
REPORTS_FOLDER = "reports"
"""Beside the tables' folders (ids are ``<paper>.t<N>``, so never a table's): scratch reports."""


def outputs_root() -> Path:
    """``$SEGEXP_OUTPUT_DIR`` (default ``outputs``) / tables."""
    return Path(os.environ.get("SEGEXP_OUTPUT_DIR", "outputs")).resolve() / "tables"


def profile_dir(table_id: str, profile: str, root: Path | None = None) -> Path:
    """``outputs/tables/<id>/<profile>``; rows live in ``<row>/seed<k>`` below it."""
    return (root or outputs_root()) / table_id / profile


def scratch_reports_dir(root: Path | None = None) -> Path:
    """``outputs/tables/reports``: where the reports of a profile without ``evidence: true`` go."""
    return (root or outputs_root()) / REPORTS_FOLDER


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (e.g. being replaced)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class RowResults:
    """The finished seeds of one row (only those run under the row's latest config) and its problems."""

    seeds: dict[int, dict[str, Any]] = field(default_factory=dict)
    dirs: dict[int, Path] = field(default_factory=dict)
    """The run folder of every seed (finished, failed or stale)."""
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    stale: list[int] = field(default_factory=list)
    not_run: str | None = None

    @property
    def empty(self) -> bool:
        """Nothing was ever run or recorded for this row under this profile."""
        return not (self.dirs or self.not_run)

    def run_dirs(self) -> list[Path]:
        """The folders behind the row's result: its finished seeds, else its failed ones."""
        return [self.dirs[seed] for seed in sorted(self.seeds or self.errors)]

    def warnings(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records.values():
            seen.update(dict.fromkeys(record.get("warnings", [])))
        return list(seen)


def seed_dirs(row_dir: Path) -> dict[int, Path]:
    if not row_dir.is_dir():
        return {}
    return {int(m.group(1)): p for p in row_dir.iterdir() if (m := SEED_DIR.match(p.name)) and p.is_dir()}


def load_row(row_dir: Path) -> RowResults:
    """Seeds with a metrics.json; seeds recorded under an older config hash than the newest are stale."""
    dirs = seed_dirs(row_dir)
    results = RowResults(dirs=dirs, not_run=(read_json(row_dir / NOT_RUN_FILE) or {}).get("reason"))
    records = {seed: read_json(path / TABLE_ROW_FILE) or {} for seed, path in dirs.items()}
    newest = max(records.values(), key=lambda r: r.get("written_at", ""), default={}).get("config_hash")
    for seed, path in sorted(dirs.items()):
        record = records[seed]
        metrics = read_json(path / METRICS_FILE)
        if newest is not None and record.get("config_hash") not in (None, newest):
            results.stale.append(seed)
        elif metrics is not None:
            results.seeds[seed] = metrics
            results.records[seed] = record
        elif (error := read_json(path / ERROR_FILE)) is not None:
            results.errors[seed] = str(error.get("error", "failed"))
        elif record:
            results.errors[seed] = "no metrics.json (interrupted or failed; see the table's _logs)"
    return results


def rows_with_results(base_dir: Path, row_names: list[str]) -> int:
    """How many of ``row_names`` have at least one finished seed under ``base_dir`` (cheap: no hashing)."""
    return sum(any((p / METRICS_FILE).is_file() for p in seed_dirs(base_dir / name).values()) for name in row_names)
