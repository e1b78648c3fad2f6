"""The files a training or evaluation run writes into its folder as its record: ``metrics.json`` on success,
``error.json`` on failure (with the traceback). The table runner reads them back (:mod:`segexp.tables.store`).
Before a run writes into a folder, the records of an earlier run there are set aside (:func:`set_aside`), never
deleted, so a run that then fails never leaves a record that looks like its own."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"


def set_aside(run_dir: Path, names: Iterable[str]) -> None:
    """Rename each existing ``<run_dir>/<name>`` (``metrics.json``) to ``<stem>.prev<suffix>``
    (``metrics.prev.json``), replacing an older one."""
    for name in names:
        old = Path(run_dir) / name
        if old.is_file():
            os.replace(old, old.with_name(f"{old.stem}.prev{old.suffix}"))
