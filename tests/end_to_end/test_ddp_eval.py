"""Validation under DDP and ``segexp-eval`` on two gloo processes score each of five val images exactly once and
give the one-process scores (slow: three real runs; the sampler's unit checks are in tests/training/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.runs import EQUIVALENCE_RUN

ODD_VAL_SPLIT = [*EQUIVALENCE_RUN, "dataset.num_images=5", "data.val_batch_size=1", "trainer.max_steps=2",
                 "trainer.val_check_interval=2"]
"""Five val images (two ranks: 3 and 2 batches of one image; the padded sharding scored image 0 twice). One image
per batch, so each image's forward pass is the same in every run and the scores can be compared exactly."""


SCORES = ("mIoU", "pixel_acc", "mean_acc", "per_class_iou")


def run_module(module: str, args: list[str], run_dir: Path) -> str:
    """``python -m <module> <args> hydra.run.dir=<run_dir>`` on one torch thread per process (the sums of a
    forward pass then do not depend on how many processes share the CPU); its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_process_validation_and_eval_score_each_image_once(tmp_path: Path) -> None:
    run_module("segexp.cli.train", [*ODD_VAL_SPLIT, "trainer=ddp_cpu", "data.batch_size=2"], tmp_path / "ddp")
    trained = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert (trained["world_size"], trained["val_images"], trained["val_split_size"]) == (2, 5, 5)

    ckpt = f"ckpt={tmp_path / 'ddp' / 'checkpoints' / 'last.ckpt'}"
    run_module("segexp.cli.evaluate", [ckpt], tmp_path / "eval1")
    stdout = run_module("segexp.cli.evaluate", [ckpt, "trainer=ddp_cpu"], tmp_path / "eval2")
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("eval1", "eval2"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["val_images"] == two["val_images"] == 5
    assert stdout.count("metrics: ") == 1  # rank 0 alone writes metrics.json and prints the summary
    # the confusion matrix summed over two ranks is the one-process matrix: every score derived from it agrees
    assert {k: two[k] for k in SCORES} == {k: one[k] for k in SCORES}
    assert {k: trained[k] for k in SCORES} == {k: one[k] for k in SCORES}  # the final validation, same weights
