"""End-to-end behaviour of segexp-train / segexp-eval on tiny synthetic runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from segexp.evaluate import run_evaluation
from segexp.module import NonFiniteLossError
from segexp.train import run_training


class CaptureFinalState(pl.Callback):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.step = trainer.global_step
        self.lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        self.momentum = {
            i: s["momentum_buffer"].clone() for i, s in enumerate(trainer.optimizers[0].state.values())
        }


class Interrupt(pl.Callback):
    """Kills the run after ``at_step`` optimizer steps, like a pre-empted job."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated pre-emption")


def test_train_writes_metrics_json_and_loadable_checkpoints(make_cfg) -> None:
    cfg = make_cfg()
    metrics = run_training(cfg)
    out = Path(cfg.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 6
    assert list(saved["per_class_iou"]) == ["background", "disc", "box", "triangle", "ring", "stripe"]
    for key in ("mIoU", "pixel_acc", "mean_acc", "num_params", "wall_s", "world_size", "effective_batch"):
        assert key in saved
    assert saved["mIoU"] == pytest.approx(metrics["mIoU"])
    assert saved["effective_batch"] == 4
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)  # plain values only
    assert last["global_step"] == 6
    assert last["segexp"]["config"]["backbone"]["depth"] == 18
    assert len(list((out / "checkpoints").glob("best-step*.ckpt"))) == 1


def test_eval_of_checkpoint_reproduces_final_metrics(make_cfg) -> None:
    cfg = make_cfg()
    trained = run_training(cfg)
    ckpt = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    eval_cfg = make_cfg(f"ckpt={ckpt}", base=["data.num_workers=0", "trainer.enable_progress_bar=false"],
                        config_name="eval")
    evaluated = run_evaluation(eval_cfg)
    assert evaluated["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-9)
    assert json.loads((Path(eval_cfg.output_dir) / "metrics.json").read_text())["steps"] == 6


def test_resume_after_interruption_matches_uninterrupted_run(make_cfg) -> None:
    steps = ["trainer.max_steps=10", "trainer.val_check_interval=3"]  # 6 batches/epoch: step 3 is mid-epoch
    reference = CaptureFinalState()
    run_training(make_cfg(*steps), extra_callbacks=[reference])

    cfg = make_cfg(*steps)
    with pytest.raises(RuntimeError, match="simulated pre-emption"):
        run_training(cfg, extra_callbacks=[Interrupt(at_step=8)])  # last.ckpt is from step 6
    assert not (Path(cfg.output_dir) / "metrics.json").exists()
    assert torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    cfg.ckpt_path = "last"
    resumed = CaptureFinalState()
    run_training(cfg, extra_callbacks=[resumed])
    assert resumed.step == reference.step == 10
    assert resumed.lrs == pytest.approx(reference.lrs, rel=0, abs=0)
    for key, value in reference.state.items():
        assert torch.equal(resumed.state[key], value), key
    for i, buf in reference.momentum.items():
        assert torch.equal(resumed.momentum[i], buf)


def test_non_finite_loss_stops_with_step_number(make_cfg) -> None:
    cfg = make_cfg("schedule.lr=1.0e12")
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        run_training(cfg)
    assert not (Path(cfg.output_dir) / "metrics.json").exists()
    error = json.loads((Path(cfg.output_dir) / "error.json").read_text())
    assert error["error"].startswith("NonFiniteLossError") and error["step"] >= 0


def test_sync_batchnorm_on_cpu_is_reverted_with_one_warning(make_cfg) -> None:
    cfg = make_cfg("trainer.sync_batchnorm=true", "trainer.max_steps=1", "trainer.val_check_interval=1")
    with pytest.warns(UserWarning, match="sync_batchnorm=true ignored") as record:
        run_training(cfg)
    assert sum("sync_batchnorm" in str(w.message) for w in record) == 1


def test_wandb_offline_run_is_written_and_finished_even_on_crash(make_cfg, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=wandb", "schedule.lr=1.0e12")
    with pytest.raises(NonFiniteLossError):
        run_training(cfg)
    assert wandb.run is None  # the crashed job's run was finished
    assert list((Path(cfg.output_dir) / "wandb").glob("offline-run-*"))


def test_multirun_gives_each_job_its_own_dir_and_metrics(tmp_path: Path) -> None:
    from tests.conftest import FAST_RUN

    base = [o for o in FAST_RUN if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    cmd = [sys.executable, "-m", "segexp.train", "-m", *base, "trainer.max_steps=2",
           "trainer.val_check_interval=2", "head.rates=[1,2,3],[2,4,6]", f"hydra.sweep.dir={tmp_path}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    metrics = sorted(tmp_path.glob("*/metrics.json"))
    assert [m.parent.name for m in metrics] == ["0", "1"]
    params = [json.loads(m.read_text())["num_params"] for m in metrics]
    assert params[0] == params[1]  # same architecture, different rates: the sweep really varied head.rates
    rates = [(m.parent / ".hydra" / "overrides.yaml").read_text() for m in metrics]
    assert "head.rates=[1,2,3]" in rates[0] and "head.rates=[2,4,6]" in rates[1]
