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
from segexp.training.checkpoint_callbacks import AtomicModelCheckpoint, LastCheckpoint
from segexp.training.harness import build_callbacks, build_loggers, named_entries
from segexp.training.preemption import Preemption
from segexp.training.validation_examples import ValidationExamples
from tests.helpers.runs import wandb_record

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


def test_tensorboard_hparams_tab_gets_the_config_and_the_metric_columns(make_cfg) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = make_cfg("logger=tensorboard", *TWO_STEPS)
    run_training(cfg)
    [event_file] = (Path(cfg.output_dir) / "tensorboard").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file.parent), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert [m.name.tag for m in experiment.metric_infos] == ["val/mIoU", "val/pixel_acc", "val/mean_acc"]
    settings = start.session_start_info.hparams
    assert settings["backbone/depth"].number_value == 18 and settings["head/rates"].string_value == "[2, 4, 6]"
    # the metric columns read the run's own scalar series: no placeholder value is logged
    assert [event.step for event in events.Scalars("val/mIoU")] == [2]


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


def test_validation_examples_gather_num_images_over_batches_of_any_size(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import numpy as np
    import torch
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path))
    logged: list[tuple[str, np.ndarray, int]] = []
    logger.experiment.add_images = lambda tag, images, step, dataformats: logged.append((tag, images, step))
    datamodule = SimpleNamespace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), palette=((0, 0, 0), (255, 0, 0)),
                                 class_names=("a", "b"))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, datamodule=datamodule, loggers=[logger],
                              global_step=5)
    module = SimpleNamespace()  # no model: no scale attention to log

    def batch(value: float, height: int) -> tuple[dict, torch.Tensor]:
        images = torch.full((2, 3, height, 8), value)
        return {"image": images, "label": torch.ones(2, height, 8, dtype=torch.long)}, torch.zeros(2, 2, height, 8)

    four = ValidationExamples(num_images=4)
    four.on_validation_epoch_start(trainer, module)
    for index, (value, height) in enumerate([(0.2, 6), (0.4, 4), (0.6, 6)]):
        four.on_validation_batch_end(trainer, module, batch(value, height)[1], batch(value, height)[0], index)
    four.on_validation_epoch_end(trainer, module)
    [(tag, strips, step)] = logged  # once per validation, from the first two batches (val_batch_size=2)
    assert tag == "val/examples" and step == 5 and strips.shape == (4, 6, 3 * 8, 3)
    assert [int(strip[0, 0, 0]) for strip in strips] == [51, 51, 102, 102]  # 0.2 and 0.4 of 255
    assert not strips[2, 4:].any()  # the 4-row images are padded with black to the 6-row ones
    logged.clear()
    five = ValidationExamples(num_images=5)  # a split smaller than num_images: logged when validation ends
    five.on_validation_epoch_start(trainer, module)
    five.on_validation_batch_end(trainer, module, batch(0.2, 6)[1], batch(0.2, 6)[0], 0)
    assert logged == []
    five.on_validation_epoch_end(trainer, module)
    assert [images.shape[0] for _, images, _ in logged] == [2]
