"""What an evaluation of a checkpoint runs with where the command line leaves it open: the checkpoint's own
device kind, precision and inference settings (``trainer=checkpoint``, ``inference=checkpoint``, segexp-eval's
defaults). A delta between an evaluation and its training run then measures what the evaluation changed
(output stride, scales, flip) and nothing else. Used by segexp-eval and by the table planner, which composes
an eval-only row's settings the same way."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from segexp.training.checkpoints import upgrade_stored_config

GPU_ACCELERATORS = ("gpu", "cuda")
"""Lightning accelerator names of a CUDA device."""


def trainer_of_checkpoint(chosen: DictConfig, trained: DictConfig) -> DictConfig:
    """The trainer ``chosen`` (``trainer=checkpoint`` by default) with the keys it leaves null taken from the
    checkpoint's trainer ``trained``: its device kind and precision on one device; on a machine without the
    checkpoint's GPU kind, the CPU in fp32 (metrics.json records which ran)."""
    trainer = chosen.copy()
    if trainer.get("accelerator") is None:
        on_gpu = str(trained.get("accelerator")) in GPU_ACCELERATORS and torch.cuda.is_available()
        trainer.accelerator = "gpu" if on_gpu else "cpu"
        trainer.benchmark = trained.get("benchmark") if on_gpu else None
        if trainer.get("precision") is None:
            trainer.precision = trained.precision if on_gpu else "32-true"
    elif trainer.get("precision") is None:
        trainer.precision = trained.precision
    return trainer


def inference_of_checkpoint(chosen: DictConfig | None, trained: DictConfig | None) -> DictConfig | None:
    """The inference node ``chosen`` with its ``???`` keys taken from the checkpoint's ``trained`` node (the
    settings the run was validated with); keys set on the command line win. A checkpoint without an inference
    node (older runs) leaves the ``???`` keys to the whole-image defaults of the Inference class."""
    if chosen is None:
        return trained
    kept = {key: chosen[key] for key in chosen if not OmegaConf.is_missing(chosen, key)}
    inherited = {key: trained[key] for key in chosen
                 if OmegaConf.is_missing(chosen, key) and trained is not None and key in trained}
    return OmegaConf.create({**inherited, **kept})


def run_config(cfg: DictConfig, stored: dict[str, Any]) -> DictConfig:
    """The training config stored in a checkpoint (upgraded to today's names), with an evaluation's choices
    applied (``cfg``: segexp-eval's or segexp-predict's config): dataset and data settings when given, the eval
    output stride, its trainer (:func:`trainer_of_checkpoint`) and inference (:func:`inference_of_checkpoint`)."""
    run = OmegaConf.create(upgrade_stored_config(stored))
    if cfg.get("dataset") is not None:
        run.dataset = cfg.dataset
    given = {k: v for k, v in (cfg.get("data") or {}).items() if v is not None}
    run.data = OmegaConf.merge(run.get("data") or {}, given)
    if cfg.model.get("eval_output_stride") is not None:
        run.model.eval_output_stride = cfg.model.eval_output_stride
    run.backbone.pretrained = None  # the checkpoint holds the weights
    run.model.init_from = None
    for key in ("logger", "callbacks", "output_dir", "seed"):
        run[key] = cfg.get(key)
    run.trainer = trainer_of_checkpoint(cfg.trainer, run.trainer)
    run.inference = inference_of_checkpoint(cfg.get("inference"), run.get("inference"))
    return run
