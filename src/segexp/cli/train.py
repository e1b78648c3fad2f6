"""``segexp-train``: compose a config with Hydra, train, and write ``metrics.json``.

    segexp-train experiment=synthetic
    segexp-train backbone=resnet101 head=aspp head.rates=[6,12,18] dataset=voc_aug
    segexp-train -m head.rates=[6,12,18],[6,12,18,24]          # a sweep (Hydra multirun)
    segexp-train ... hydra.run.dir=<old run dir> ckpt_path=last  # resume an interrupted run
    segexp-train experiment=theirs --trust-targets              # a config naming code outside the allowed packages

Every ``_target_`` must name a class of the allowed packages (:data:`segexp.targets.TRUSTED_TARGET_PREFIXES`)
unless ``--trust-targets`` is given; the check runs before anything the config names is imported. A resumed run
(``ckpt_path``) loads its checkpoint with ``weights_only=True``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segexp import atomic
from segexp.cli.precheck import input_errors_exit, run_cli
from segexp.config import CONF_DIR
from segexp.training.build import build_datamodule, build_module, plain_config, validate
from segexp.training.checkpoints import resolve_ckpt_path, stored_run_state, upgrade_stored_config
from segexp.training.harness import (
    build_callbacks,
    build_loggers,
    build_trainer,
    eval_split_size,
    export_submitit_local_ranks,
    failure_record,
    finish_loggers,
    in_multirun,
    metrics_payload,
    output_dir_of,
    refuse_relaunch_in_sweep,
)
from segexp.training.module import SegmentationModule
from segexp.training.preemption import Preempted
from segexp.training.resume import check_resume_changes, config_changes, resume_record
from segexp.training.run_files import METRICS_FILE, set_aside


def run_training(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train one configuration and return (and write) its final validation metrics; any failure, from the
    config check on, writes ``error.json`` instead."""
    export_submitit_local_ranks()
    output_dir = output_dir_of(cfg)
    module: SegmentationModule | None = None

    def step() -> int:
        return module.global_step if module is not None and module._trainer is not None else 0

    with failure_record(output_dir, step):
        set_aside_old_results(output_dir)
        validate(cfg)
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
        resumes, resumed_wall_s = resume_history(cfg, ckpt_path)
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        datamodule = build_datamodule(cfg)
        module = build_module(cfg, datamodule)
        module.resumes, module.resumed_wall_s = resumes, resumed_wall_s
        loggers = build_loggers(cfg, output_dir)
        failed = True
        module.session_start = time.perf_counter()
        try:
            callbacks = [*build_callbacks(cfg, loggers), *extra_callbacks]
            trainer = build_trainer(cfg, output_dir, loggers, callbacks)
            refuse_relaunch_in_sweep(trainer, in_multirun())
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            except SIGTERMException as err:  # SIGTERM outside a training step (Preemption saves inside one)
                raise Preempted(f"SIGTERM at step {trainer.global_step}: the state of the last checkpoint is kept; "
                                "rerun with ckpt_path=auto in the same run folder to resume") from err
            if module.last_val_step != trainer.global_step and not trainer.interrupted:
                trainer.validate(module, datamodule=datamodule, verbose=False)
            failed = trainer.interrupted
        finally:
            finish_loggers(loggers, failed)
    metrics = metrics_payload(module, trainer, datamodule.batch_size, module.wall_s(), output_dir,
                              split_size=eval_split_size(trainer.val_dataloaders))
    if trainer.is_global_zero and not failed:
        atomic.write_json(output_dir / "metrics.json", metrics)
        print_summary(output_dir, metrics, loggers)
    return metrics


def resume_history(cfg: DictConfig, ckpt_path: str | None) -> tuple[list[dict[str, Any]], float]:
    """For a resumed run (``ckpt_path`` set): the resumes recorded so far plus this one, and the training
    seconds before it; refuses (ConfigError) a changed setting the restored state would ignore
    (:mod:`segexp.training.resume`). ``([], 0.0)`` for a fresh run."""
    if ckpt_path is None:
        return [], 0.0
    stored, step = stored_run_state(ckpt_path)
    changes = config_changes(upgrade_stored_config(stored.get("config") or {}), plain_config(cfg))
    ignored = check_resume_changes(changes, str(cfg.get("resume_changes") or "refuse"), ckpt_path)
    record = resume_record(ckpt_path, step, changes, ignored)
    return [*stored.get("resumes", []), record], float(stored.get("wall_s") or 0.0)


def set_aside_old_results(output_dir: Path) -> None:
    """A finished run's ``metrics.json`` in the folder this run writes to becomes ``metrics.prev.json`` before
    anything else happens: a run that then fails or is pre-empted never leaves a metrics.json that looks like
    its own success (the table runner does the same for its rows)."""
    set_aside(output_dir, [METRICS_FILE])


def print_summary(output_dir: Path, metrics: dict[str, Any], loggers: Sequence[Any]) -> None:
    print(f"\nval mIoU {metrics['mIoU']:.4f} | pixel acc {metrics['pixel_acc']:.4f} | "
          f"mean acc {metrics['mean_acc']:.4f} | {metrics['steps']} steps in {metrics['wall_s']:.0f}s")
    print(f"run dir:      {output_dir}")
    print(f"metrics:      {output_dir / 'metrics.json'}")
    print(f"checkpoints:  {output_dir / 'checkpoints'}")
    for logger in loggers:
        print(f"dashboard:    {dashboard_hint(logger, output_dir)}")


def dashboard_hint(logger: Any, output_dir: Path) -> str:
    if isinstance(logger, WandbLogger):
        return (f"wandb files in {output_dir / 'wandb'} (an offline run uploads with "
                f"`wandb sync {output_dir / 'wandb'}/offline-run-*`)")
    if isinstance(logger, TensorBoardLogger):
        return f"tensorboard --logdir {output_dir}"
    return f"{type(logger).__name__} files in {getattr(logger, 'log_dir', output_dir)}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Returns val mIoU so Hydra sweepers can optimise it. A pre-empted run exits with
    :attr:`Preempted.EXIT_CODE` (its reason is in error.json and on stderr)."""
    try:
        with input_errors_exit("segexp-train"):
            return float(run_training(cfg)["mIoU"])
    except Preempted as err:
        print(f"segexp-train: pre-empted: {err}", file=sys.stderr)
        sys.exit(Preempted.EXIT_CODE)


def main() -> None:
    """Console entry point (see :func:`segexp.cli.precheck.run_cli`)."""
    run_cli(hydra_main, "train")


if __name__ == "__main__":
    main()
