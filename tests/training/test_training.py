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

from segexp.cli.evaluate import run_evaluation
from segexp.cli.train import run_training
from segexp.training.module import NonFiniteLossError
from tests.helpers.runs import CaptureFinalState, interrupted_and_resumed, wandb_record


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
    assert saved["environment"]["torch"] == torch.__version__  # what the run ran on (segexp.environment)
    assert saved["environment"]["pytorch_lightning"] == pl.__version__
    assert saved["git_commit"] == saved["environment"]["segexp_commit"]
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
    saved = json.loads((Path(eval_cfg.output_dir) / "metrics.json").read_text())
    assert saved["steps"] == 6
    assert saved["environment"]["torch"] == torch.__version__




def test_resume_after_interruption_matches_uninterrupted_run(make_cfg) -> None:
    reference, resumed = interrupted_and_resumed(make_cfg)  # 6 batches/epoch: step 6 is mid-epoch
    for key, value in reference.state.items():
        assert torch.equal(resumed.state[key], value), key
    for i, buf in reference.momentum.items():
        assert torch.equal(resumed.momentum[i], buf)


@pytest.fixture
def falling_miou(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every validation reports a lower mIoU than the one before (0.9, 0.45, 0.3, ...)."""
    import segexp.training.module

    original, calls = segexp.training.module.metrics_from_confusion, []

    def falling(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return {**original(*args, **kwargs), "mIoU": 0.9 / len(calls)}

    monkeypatch.setattr(segexp.training.module, "metrics_from_confusion", falling)


def read_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_last_ckpt_is_the_final_state_when_val_miou_drops(make_cfg, falling_miou) -> None:
    # validations at steps 3 and 6; training ends at 8, between validations
    cfg = make_cfg("trainer.max_steps=8", "trainer.val_check_interval=3")
    final = CaptureFinalState()
    run_training(cfg, extra_callbacks=[final])
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    assert read_step(checkpoints / "last.ckpt") == 8
    [best] = checkpoints.glob("best-step*.ckpt")
    assert best.name.startswith("best-step3-") and read_step(best) == 3
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in final.state.items():
        assert torch.equal(saved[key], value), key
    assert not list(checkpoints.glob("*.tmp"))


def test_eval_and_init_from_read_the_final_weights_of_last_ckpt(make_cfg, falling_miou) -> None:
    """What an eval_of row (segexp-eval ckpt=last.ckpt) and an init_from row (model.init_from) load."""
    from segexp.training.build import build_model

    cfg = make_cfg("trainer.max_steps=8", "trainer.val_check_interval=3")
    final = CaptureFinalState()
    run_training(cfg, extra_callbacks=[final])
    last = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    started = build_model(make_cfg(f"model.init_from={last}"), num_classes=6).state_dict()
    eval_cfg = make_cfg(f"ckpt={last}", base=["data.num_workers=0", "trainer.enable_progress_bar=false"],
                        config_name="eval")
    evaluated = run_evaluation(eval_cfg)
    assert evaluated["steps"] == 8
    for key, value in started.items():
        assert torch.equal(value, final.state[f"model.{key}"]), key


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
    # the resolved config is in the run's record file (an offline run keeps it there until `wandb sync`),
    # one JSON value per top-level key: runs of a sweep can be grouped and filtered by their settings
    expected = (b'"rates":[2,4,6],"rates_output_stride":8', b'"depth":18,"output_stride":8')
    data = wandb_record(Path(cfg.output_dir), *expected)
    assert all(part in data for part in expected)


def test_multirun_gives_each_job_its_own_dir_and_metrics(tmp_path: Path) -> None:
    from tests.helpers.runs import FAST_RUN

    base = [o for o in FAST_RUN if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    cmd = [sys.executable, "-m", "segexp.cli.train", "-m", *base, "trainer.max_steps=2",
           "trainer.val_check_interval=2", "head.rates=[1,2,3],[2,4,6]", f"hydra.sweep.dir={tmp_path}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    metrics = sorted(tmp_path.glob("*/metrics.json"))
    assert [m.parent.name for m in metrics] == ["0", "1"]
    params = [json.loads(m.read_text())["num_params"] for m in metrics]
    assert params[0] == params[1]  # same architecture, different rates: the sweep really varied head.rates
    rates = [(m.parent / ".hydra" / "overrides.yaml").read_text() for m in metrics]
    assert "head.rates=[1,2,3]" in rates[0] and "head.rates=[2,4,6]" in rates[1]


def geometry(model: torch.nn.Module) -> list[tuple[str, Any, Any, Any]]:
    """Stride, dilation and padding of every convolution: what the output stride changes."""
    return [(name, m.stride, m.dilation, m.padding) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d)]


class GeometryLog(pl.Callback):
    """The model's conv geometry at every training step."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[str, Any, Any, Any]]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.seen.append(geometry(pl_module.model))


def test_aspp_is_built_at_the_backbone_output_stride(make_cfg) -> None:
    from segexp.models.build import build_segmentor

    cfg = make_cfg("backbone.output_stride=8", "head.rates=[6,12,18]", "head.rates_output_stride=16")
    model = build_segmentor(cfg, num_classes=6)
    assert model.head.dilations == (12, 24, 36)  # "the rates are doubled when output_stride=8"
    assert [branch[0].padding for branch in model.head.atrous] == [(12, 12), (24, 24), (36, 36)]


def test_validation_at_another_output_stride_restores_the_training_geometry(make_cfg) -> None:
    from segexp.models.build import build_segmentor

    overrides = ("backbone.output_stride=8", "head.rates=[6,12,18]", "head.rates_output_stride=16")
    built = geometry(build_segmentor(make_cfg(*overrides), num_classes=6))
    log = GeometryLog()
    run_training(make_cfg(*overrides, "model.eval_output_stride=16", "trainer.max_steps=6",
                          "trainer.val_check_interval=2"), extra_callbacks=[log])
    assert len(log.seen) == 6 and all(seen == built for seen in log.seen)


def test_an_eval_output_stride_the_rates_cannot_reach_fails_before_any_work(make_cfg) -> None:
    from segexp.config import ConfigError

    cfg = make_cfg("model.eval_output_stride=32")  # rates [2,4,6] at OS 8 -> 0.5 at OS 32
    with pytest.raises(ConfigError, match=r"model.eval_output_stride=32.*output stride 32"):
        run_training(cfg)
    error = json.loads((Path(cfg.output_dir) / "error.json").read_text())
    assert "model.eval_output_stride=32" in error["error"] and error["step"] == 0
    assert not (Path(cfg.output_dir) / "checkpoints").exists()


def test_a_model_that_cannot_be_built_leaves_error_json(make_cfg) -> None:
    from segexp.config import ConfigError

    cfg = make_cfg("backbone.output_stride=12")
    with pytest.raises(ConfigError, match="backbone: output_stride must be a power of two"):
        run_training(cfg)
    error = json.loads((Path(cfg.output_dir) / "error.json").read_text())
    assert "output_stride must be a power of two" in error["error"] and "Traceback" in error["traceback"]


def test_multirun_ends_with_a_summary_of_every_job_failed_ones_too(tmp_path: Path) -> None:
    from tests.helpers.runs import FAST_RUN

    base = [o for o in FAST_RUN if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    cmd = [sys.executable, "-m", "segexp.cli.train", "-m", *base, "trainer.max_steps=2",
           "trainer.val_check_interval=2", "backbone.output_stride=8,12", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0  # a job failed
    summary = done.stdout[done.stdout.index("multirun summary"):]
    assert "1 of 2 jobs ok" in summary
    ok = next(line for line in summary.splitlines() if "backbone.output_stride=8" in line)
    failed = next(line for line in summary.splitlines() if "backbone.output_stride=12" in line)
    miou = json.loads((tmp_path / "0" / "metrics.json").read_text())["mIoU"]
    assert " ok " in ok and f"{100 * miou:.2f}" in ok
    # each job line shows the swept setting only; the settings every job shares are printed once above
    assert ok.split()[-1] == "backbone.output_stride=8" and "trainer.max_steps" not in ok
    every = next(line for line in summary.splitlines() if line.startswith("every job: "))
    assert "trainer.max_steps=2" in every and "backbone.output_stride" not in every
    assert " failed " in failed and "error: ConfigError" in summary
    assert "output_stride must be a power of two" in summary


def test_dashboard_scalars_steps_and_lr_names(make_cfg) -> None:
    """Validation scalars at the step of the checkpoint they describe, LR curves named by parameter group,
    and the training loss logged even when the run is shorter than log_every_n_steps."""
    import csv

    cfg = make_cfg("trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=10")
    run_training(cfg)
    [metrics_csv] = Path(cfg.output_dir).rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    assert {"lr-SGD/backbone", "lr-SGD/head"} <= set(rows[0])
    val_steps = sorted(int(r["step"]) for r in rows if r["val/mIoU"])
    assert val_steps == [2, 4] == sorted(int(r["step"]) for r in rows if r["val/loss"])
    assert read_step(Path(cfg.output_dir) / "checkpoints" / "last.ckpt") == 4
    assert [r for r in rows if r["train/loss"]]
