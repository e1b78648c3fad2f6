"""The ``logger`` and ``callbacks`` config groups: several loggers at once, callbacks added or removed from the
command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger

from segexp.cli.precheck import null_choices_as_deletions
from segexp.cli.train import run_training
from segexp.config import ConfigError, compose_config
from segexp.training.build import validate
from segexp.training.callbacks import AtomicModelCheckpoint, LastCheckpoint, Preemption, ValidationExamples
from segexp.training.harness import build_callbacks, build_loggers, named_entries
from tests.conftest import wandb_record

TWO_STEPS = ("trainer.max_steps=2", "trainer.val_check_interval=2")


def test_wandb_and_csv_together_each_get_the_metrics_and_the_resolved_config(make_cfg, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=[wandb,csv]", *TWO_STEPS)
    assert [name for name, _ in named_entries(cfg, "logger")] == ["wandb", "csv"]
    run_training(cfg)
    out = Path(cfg.output_dir)
    # wandb: the offline run's record file holds the resolved config (one JSON value per top-level key)
    assert b'"rates":[2,4,6],"rates_output_stride":8' in wandb_record(out, b'"rates":[2,4,6]')
    # CSV: metrics.csv with the validation scalars, the same resolved config in hparams.yaml
    [metrics_csv] = (out / "csv").rglob("metrics.csv")
    assert "val/mIoU" in metrics_csv.read_text().splitlines()[0]
    hparams = yaml.safe_load((metrics_csv.parent / "hparams.yaml").read_text())
    assert hparams["head"]["rates"] == [2, 4, 6] and hparams["backbone"]["depth"] == 18
    assert set(hparams["logger"]) == {"wandb", "csv"}


@pytest.mark.parametrize("choice, expected", [
    ("logger=csv", ["csv"]), ("logger=wandb", ["wandb"]), ("logger=tensorboard", ["tensorboard"]),
    ("~logger", []), ("logger=[csv,tensorboard]", ["csv", "tensorboard"]),
])
def test_logger_choices(choice: str, expected: list[str], tmp_path: Path) -> None:
    cfg = compose_config([choice, f"output_dir={tmp_path}"])
    validate(cfg)
    assert [name for name, _ in named_entries(cfg, "logger")] == expected


def test_the_default_logger_is_wandb_and_logger_null_means_none(tmp_path: Path) -> None:
    assert [name for name, _ in named_entries(compose_config([f"output_dir={tmp_path}"]), "logger")] == ["wandb"]
    # Hydra refuses `logger=null` on the command line; segexp-train and segexp-eval pass it on as `~logger`
    argv = null_choices_as_deletions(["logger=null", "callbacks=null", "head.dropout=null", "ckpt_path=null"])
    assert argv == ["~logger", "~callbacks", "head.dropout=null", "ckpt_path=null"]
    cfg = compose_config([argv[0], f"output_dir={tmp_path}"])
    assert cfg.get("logger") is None and build_loggers(cfg, tmp_path) == []
    assert compose_config(["debug=fdr", f"output_dir={tmp_path}"]).logger is None


def test_a_logger_without_target_is_named(tmp_path: Path) -> None:
    cfg = compose_config(["logger=csv", "+logger.mine.save_dir=x", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^logger\.mine: expected a node with a _target_"):
        build_loggers(cfg, tmp_path)


def callback_types(*overrides: str, loggers: bool = True, tmp_path: Path) -> list[type]:
    cfg = compose_config([*overrides, f"output_dir={tmp_path}"])
    validate(cfg)
    return [type(c) for c in build_callbacks(cfg, [CSVLogger(tmp_path)] if loggers else [])]


def test_callbacks_come_from_the_config_and_can_be_added_or_removed(tmp_path: Path) -> None:
    default = [LastCheckpoint, AtomicModelCheckpoint, Preemption, ValidationExamples, LearningRateMonitor]
    assert callback_types(tmp_path=tmp_path) == default
    assert callback_types("~callbacks.examples", tmp_path=tmp_path) == [
        LastCheckpoint, AtomicModelCheckpoint, Preemption, LearningRateMonitor]
    added = ["+callbacks.early_stop._target_=pytorch_lightning.callbacks.EarlyStopping",
             "+callbacks.early_stop.monitor=val/mIoU", "+callbacks.early_stop.mode=max"]
    assert callback_types(*added, tmp_path=tmp_path) == [*default, EarlyStopping]
    # Lightning refuses an LR monitor without loggers: it is dropped then
    assert callback_types("~logger", loggers=False, tmp_path=tmp_path) == default[:4]
    cfg = compose_config([f"output_dir={tmp_path}"])
    last, best = build_callbacks(cfg, [])[:2]
    assert last.dirpath == tmp_path / "checkpoints" and Path(best.dirpath) == tmp_path / "checkpoints"


def test_a_misspelt_callback_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'callbacks\.best\.save_top': AtomicModelCheckpoint .*'save_top_k'"):
        validate(compose_config(["+callbacks.best.save_top=2", f"output_dir={tmp_path}"]))


def test_the_default_callbacks_write_last_and_best_and_a_removed_one_is_gone(make_cfg) -> None:
    default = make_cfg(*TWO_STEPS)
    run_training(default)
    checkpoints = Path(default.output_dir) / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and len(list(checkpoints.glob("best-step2-miou*.ckpt"))) == 1
    without_best = make_cfg("~callbacks.best", "~logger", *TWO_STEPS)  # no logger: no LR monitor either
    run_training(without_best)
    checkpoints = Path(without_best.output_dir) / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
