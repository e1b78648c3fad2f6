"""The tiny training run most tests start from (``FAST_RUN``), reading an offline wandb record once it is
flushed, and an interrupted-then-resumed run with the final state of each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from segexp.cli.train import run_training

# A tiny but complete run: real model code, a handful of steps on small synthetic crops.
FAST_RUN = [
    "experiment=synthetic",
    "logger=csv",
    "dataset.num_images=24",
    "dataset.image_size=64",
    "data.crop_size=[64,64]",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "data.num_workers=0",
    "head.channels=16",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
]


def wandb_record(output_dir: Path, *expected: bytes, timeout_s: float = 30.0) -> bytes:
    """The record file of the one offline wandb run under ``output_dir``, once it holds every ``expected`` part
    (or, after ``timeout_s``, as it is). wandb's writer process flushes the file shortly after ``wandb.finish``
    returns: on a busy machine it can still be a bare header at that moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        [run_dir] = (output_dir / "wandb").glob("offline-run-*")
        [records] = run_dir.glob("run-*.wandb")
        data = records.read_bytes()
        if all(part in data for part in expected) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


class CaptureFinalState(pl.Callback):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.step = trainer.global_step
        self.lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self.momentum = {
            i: s["momentum_buffer"].clone() for i, s in enumerate(trainer.optimizers[0].state.values())
        }


def interrupted_and_resumed(make_cfg, *steps: str) -> tuple[CaptureFinalState, CaptureFinalState]:
    """The final state of an uninterrupted run of 10 steps (validation every 3) and of the same run killed at
    step 8 and resumed from ``ckpt_path=last`` (step 6); checks the interrupted run left no metrics.json."""
    overrides = [*steps, "trainer.max_steps=10", "trainer.val_check_interval=3"]
    reference = CaptureFinalState()
    run_training(make_cfg(*overrides), extra_callbacks=[reference])
    cfg = make_cfg(*overrides)
    with pytest.raises(RuntimeError, match="simulated pre-emption"):
        run_training(cfg, extra_callbacks=[Interrupt(at_step=8)])
    assert not (Path(cfg.output_dir) / "metrics.json").exists()
    assert torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    cfg.ckpt_path = "last"
    resumed = CaptureFinalState()
    run_training(cfg, extra_callbacks=[resumed])
    assert resumed.step == reference.step == 10
    assert resumed.lrs == pytest.approx(reference.lrs, rel=0, abs=0)
    return reference, resumed


class Interrupt(pl.Callback):
    """Kills the run after ``at_step`` optimizer steps, like a pre-empted job."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated pre-emption")


# Frozen BN, no BN in the head (FCN classifier), no dropout, no random rescale or padding: every sample has
# 64x64 labelled pixels and the per-rank mean losses average to the full-batch mean loss.
EQUIVALENCE_RUN = [
    "backbone=resnet18", "backbone.frozen_bn=true", "head=fcn", "dataset=synthetic", "dataset.num_images=8",
    "dataset.image_size=64", "data.crop_size=[64,64]", "data.scale_range=[1.0,1.0]", "data.num_workers=0",
    "data.val_batch_size=4", "logger=csv", "schedule.lr=0.05", "trainer.max_steps=3",
    "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
]
