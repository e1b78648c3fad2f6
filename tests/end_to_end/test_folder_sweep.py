"""A Hydra sweep over two losses on a `dataset=folder` tree, as a user runs it: `segexp-train -m ... loss=ce,bootstrap`
(slow: one process, two jobs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.data_files import COLOUR_CLASSES, FOLDER_RUN, make_folder


@pytest.mark.slow
def test_a_sweep_over_losses_on_a_folder_dataset(tmp_path: Path) -> None:
    root = make_folder(tmp_path, classes_file=COLOUR_CLASSES)
    cmd = [sys.executable, "-m", "segexp.cli.train", "-m", *FOLDER_RUN, "trainer.max_steps=1",
           "trainer.val_check_interval=1", "dataset=folder", f"dataset.root={root}", "loss=ce,bootstrap",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    metrics = [json.loads(path.read_text()) for path in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert [m["steps"] for m in metrics] == [1, 1]
