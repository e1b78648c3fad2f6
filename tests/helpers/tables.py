"""Shared by the table tests: writing a spec into a test's folder and checking the error loading it gives, small
spec texts, fabricated run folders and a listing of a results folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segexp.tables.plan import plan_eval_job, plan_train_job
from segexp.tables.spec import load_profile, load_spec, load_table
from segexp.tables.yaml_reader import SpecError


def write_spec(root: Path, text: str, paper: str = "demo", name: str = "t1") -> Path:
    """``text`` as ``<root>/<paper>/<name>.yaml`` (table id ``<paper>.<name>``), creating the folder."""
    path = root / paper / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_spec_error(path: Path, key: str, message: str, load: Callable[[], object] | None = None) -> None:
    """Loading ``path`` (``load_spec(path)`` unless ``load`` is given) fails with ``<path>: <key>: ...`` and
    the error contains ``message``."""
    with pytest.raises(SpecError) as err:
        load() if load is not None else load_spec(path)
    assert str(err.value).startswith(f"{path}: {key}: "), str(err.value)
    assert message in str(err.value), str(err.value)


GOOD = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
baseline: a
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {mIoU: 50.0}
  - name: b
    overrides: [backbone=resnet34]
    paper: {mIoU: 51.0}
"""


STAGED = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {}
  - name: b
    init_from: a
    overrides: [schedule.lr=0.001]
    paper: {}
  - name: c
    eval_of: b
    paper: {mIoU: 50.0}
"""


def fabricate(base_dir: Path, row: str, seed: int, values: dict[str, Any], config_hash_: str = "h") -> Path:
    run_dir = base_dir / row / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {"pixel_acc": 0.9, "mean_acc": 0.8, "per_class_iou": {}, "steps": 2, "wall_s": 10.0,
               "effective_batch": 2, "device": "cpu", "git_commit": "abc1234", "run_dir": str(run_dir), **values}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "table_row.json").write_text(json.dumps({"config_hash": config_hash_, "warnings": [],
                                                        "written_at": "2026-01-01T00:00:00"}))
    return run_dir


def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file under ``root``: (relative path, size, mtime in ns)."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


FAILING_ROW_TABLE = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
base: [backbone=resnet18, head=fcn]
rows:
  - name: single
    paper: {mIoU: 50.0}
  - name: broken
    overrides: ['loss.class_weights=[1.0,2.0]']
    paper: {mIoU: 50.0}
"""


def full_jobs(table: str):
    """Every runnable row of ``table`` planned under `full` (eval rows on their source's job)."""
    spec, full = load_table(table), load_profile("full")
    trained = {}
    for row in spec.rows:
        if row.runnable and not row.is_eval:
            source = trained.get(row.init_from) if row.init_from else None
            trained[row.name] = plan_train_job(spec, row, full, 0, Path("/x"), source=source,
                                               launcher="submitit_slurm")  # several-node rows (Table 11)
    evals = [plan_eval_job(spec, row, full, 0, Path("/x"), trained[row.eval_of])
             for row in spec.rows if row.runnable and row.is_eval]
    return spec, [*trained.values(), *evals]
