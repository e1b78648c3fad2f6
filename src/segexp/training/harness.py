"""Shared run plumbing for segexp-train and segexp-eval: loggers, callbacks, trainer, metrics.json.

The ``logger`` and ``callbacks`` config nodes hold named entries, one object each (``logger.wandb``,
``logger.csv``, ``callbacks.last``, ...): every file of ``conf/logger`` and ``conf/callbacks`` adds its entries,
so ``logger=[wandb,csv]`` selects two loggers, ``~callbacks.examples`` removes one callback and
``+callbacks.<name>._target_=...`` adds one.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint, LearningRateMonitor
from pytorch_lightning.loggers import Logger, WandbLogger
from torch.utils.data import DataLoader

from segexp import atomic
from segexp.config import ConfigError
from segexp.environment import device_name, environment_facts
from segexp.training.devices import requested_devices
from segexp.training.eval_settings import GPU_ACCELERATORS
from segexp.training.run_files import ERROR_FILE


def hydra_job_names(output_dir: Path) -> tuple[str | None, str]:
    """(group, name) for dashboards: in a multirun the sweep folder and the job's overrides."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name, hc.job.override_dirname or f"job{hc.job.num}"
    return None, output_dir.name


def named_entries(cfg: DictConfig, key: str) -> list[tuple[str, DictConfig]]:
    """The ``<name>: {_target_: ...}`` entries of ``cfg[key]`` in config order; none when the node is absent
    or null, and a null entry is skipped. A node or entry of another shape raises :class:`ConfigError`
    naming its key."""
    node = cfg.get(key)
    if node is None:
        return []
    if not isinstance(node, DictConfig) or "_target_" in node:
        raise ConfigError(f"{key}: expected named entries ({key}.<name>._target_=...), as in the files of "
                          f"conf/{key}/, got {node!r}")
    entries = []
    for name in node:
        entry = node[name]
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ConfigError(f"{key}.{name}: expected a node with a _target_ (the class to build), got {entry!r}")
        entries.append((str(name), entry))
    return entries


def build_loggers(cfg: DictConfig, output_dir: Path) -> list[Logger]:
    """One logger per entry of the ``logger`` node (none for ``logger=null``), wandb with its group/name per
    Hydra job. The resolved config is logged to every logger as the run's hyper-parameters (wandb's config,
    TensorBoard's hparams, the CSV logger's hparams.yaml), so the runs of a sweep can be grouped and filtered
    by their settings. When one fails to start, those already started are closed (marked failed)."""
    loggers: list[Logger] = []
    try:
        for _, node in named_entries(cfg, "logger"):
            loggers.append(build_logger(node, output_dir))
        hyperparameters = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        for logger in loggers:
            logger.log_hyperparams(hyperparameters)
    except BaseException:
        finish_loggers(loggers, failed=True)
        raise
    return loggers


def build_logger(node: DictConfig, output_dir: Path) -> Logger:
    kwargs: dict[str, Any] = {}
    if str(node.get("_target_", "")).endswith("WandbLogger"):
        group, name = hydra_job_names(output_dir)
        kwargs = {"group": node.get("group") or group, "name": node.get("name") or name}
        (output_dir / "wandb").mkdir(parents=True, exist_ok=True)
    return instantiate(node, **kwargs)


def build_callbacks(cfg: DictConfig, loggers: Sequence[Logger]) -> list[pl.Callback]:
    """One Lightning callback per entry of the ``callbacks`` node (conf/callbacks/default.yaml: last.ckpt, the
    best checkpoint, validation examples, LR monitor), in config order."""
    callbacks = [instantiate(node) for _, node in named_entries(cfg, "callbacks")]
    if not loggers:
        # Lightning raises at the start of fit when a LearningRateMonitor has no logger to write to
        # (logger=null, debug=fdr): without loggers there is no LR curve to draw, so the monitor is dropped.
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def finish_loggers(loggers: Sequence[Logger], failed: bool) -> None:
    """Close each logger's run, marking wandb runs of crashed jobs as failed."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)
        else:
            logger.finalize("failed" if failed else "success")


def effective_sync_batchnorm(cfg: DictConfig) -> bool:
    """SyncBN only where it can work: DDP over several CUDA devices; otherwise one warning."""
    t = cfg.trainer
    wanted = bool(t.get("sync_batchnorm", False))
    if not wanted:
        return False
    accelerator = str(t.get("accelerator", "auto"))
    on_gpu = accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available())
    devices = t.get("devices", 1)
    n_devices = requested_devices(devices) or 0
    if on_gpu and torch.cuda.is_available() and n_devices * int(t.get("num_nodes", 1)) > 1:
        return True
    warnings.warn(
        "trainer.sync_batchnorm=true ignored: SyncBatchNorm needs DDP over several CUDA devices "
        f"(accelerator={accelerator}, devices={devices}); using plain BatchNorm.",
        stacklevel=2,
    )
    return False


def export_submitit_local_ranks() -> None:
    """In a submitit_local job of several tasks, make each task one DDP rank: export its torch.distributed
    variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) so that Lightning sees processes created
    externally (``LOCAL_RANK`` set) instead of re-running the command line to start its workers. Call it
    before the loggers and the trainer are built. Under SLURM (submitit_slurm) nothing is needed: Lightning's
    SLURMEnvironment reads SLURM's task variables."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) < 2:
        return
    from pytorch_lightning.utilities.rank_zero import rank_zero_only
    from submitit.helpers import TorchDistributedEnvironment

    ranks = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    rank_zero_only.rank = ranks.rank  # read from the environment when Lightning was imported, before the export


def build_trainer(
    cfg: DictConfig, output_dir: Path, loggers: list[Logger], callbacks: list[pl.Callback]
) -> pl.Trainer:
    """The ``trainer`` node with the run's loggers and callbacks. Checkpoints are only those of ``callbacks``:
    without a Lightning checkpoint callback among them (``~callbacks.best``), Lightning's own default one,
    which would write ``epoch=*-step=*.ckpt`` files, is turned off."""
    return instantiate(
        cfg.trainer,
        log_every_n_steps=log_interval(cfg),
        default_root_dir=str(output_dir),
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        sync_batchnorm=effective_sync_batchnorm(cfg),
    )


def in_multirun() -> bool:
    """Whether this job is one of a Hydra sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def refuse_relaunch_in_sweep(trainer: pl.Trainer, multirun: bool) -> None:
    """Refuse a sweep job whose trainer would start its DDP workers by re-running the command line: in a Hydra
    multirun that re-runs the whole sweep from rank 1 (Lightning's known multirun + DDP problem). Workers started
    externally (torchrun, SLURM, submitit) are fine."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if not multirun or trainer.world_size < 2 or environment is None or environment.creates_processes_externally:
        return
    raise ConfigError(
        f"trainer: {trainer.world_size} DDP processes inside a Hydra sweep (-m): Lightning would start its workers "
        "by re-running the whole sweep. Run each configuration as a single run (segexp-train without -m), sweep "
        "with `segexp-table run` (it starts DDP rows as single runs), or use a launcher that starts the processes "
        "itself (hydra/launcher=submitit_slurm, or torchrun)")


def log_interval(cfg: DictConfig) -> int:
    """``trainer.log_every_n_steps``, but never above ``max_steps``: a short run still logs its training loss."""
    interval = int(cfg.trainer.get("log_every_n_steps") or 50)
    max_steps = cfg.trainer.get("max_steps")
    return max(1, min(interval, int(max_steps))) if max_steps and int(max_steps) > 0 else interval


def protocol_facts(trainer: pl.Trainer, batch_size: int) -> dict[str, Any]:
    """What the result depends on beyond the config: devices, effective batch, precision, commit, and the
    versions of the packages that ran (``environment``: :func:`segexp.environment.environment_facts`)."""
    environment = environment_facts()
    return {
        "world_size": trainer.world_size,
        "per_device_batch": batch_size,
        "effective_batch": batch_size * trainer.world_size * trainer.accumulate_grad_batches,
        "precision": str(trainer.precision),
        "device": device_name(trainer.strategy.root_device),
        "git_commit": environment["segexp_commit"],
        "environment": environment,
    }


def eval_split_size(loaders: Any) -> int | None:
    """Images in the split a validation/test loader reads (its dataset's length); None when unknown."""
    return len(loaders.dataset) if isinstance(loaders, DataLoader) else None


def metrics_payload(
    module: Any, trainer: pl.Trainer, batch_size: int, wall_s: float, output_dir: Path,
    split_size: int | None = None,
) -> dict[str, Any]:
    """The metrics.json contract: final metrics (``mIoU`` is the final validation's, at ``mIoU_step``; the best
    one and its step beside it), how many images it scored out of the split (``val_images`` of
    ``val_split_size``: fewer with ``data.val_limit``, ``limit_val_batches``, ``fast_dev_run`` or skipped bad
    samples), model size, steps, training time over every session of the run (``wall_s``), its resumes, and
    protocol facts."""
    return {
        **module.last_metrics,
        "mIoU_step": module.last_val_step,
        "best_mIoU": module.best_miou,
        "best_step": module.best_step,
        "val_images": module.last_eval_images,
        "val_split_size": split_size,
        "num_params": sum(p.numel() for p in module.model.parameters()),
        "steps": trainer.global_step,
        "wall_s": round(wall_s, 2),
        "resumes": module.resumes,
        **protocol_facts(trainer, batch_size),
        "run_dir": str(output_dir),
    }


@contextmanager
def failure_record(output_dir: Path, step: Callable[[], int] = lambda: 0) -> Iterator[None]:
    """Any exception inside -- a bad config, a missing dataset, a crash or interrupt while training --
    leaves ``<output_dir>/error.json`` (error, step, traceback) and propagates; a stale one is removed first.
    A table runner reads why a job failed from this file."""
    (output_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        yield
    except BaseException as err:
        atomic.write_json(output_dir / ERROR_FILE, {
            "error": f"{type(err).__name__}: {err}", "step": step(), "traceback": traceback.format_exc(),
        })
        raise


def output_dir_of(cfg: DictConfig) -> Path:
    """``cfg.output_dir`` (the Hydra run dir by default), created if needed."""
    path = Path(str(cfg.output_dir)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
