"""Shared by the CUDA checks and their CPU counterparts: the environment that keeps test processes off the
network, relative error and cosine of two tensors, and one SGD step on a fixed synthetic batch."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from segexp.training.build import build_datamodule, build_module

OFFLINE_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


"""What keeps the processes of a CUDA test off the network (albumentations asks PyPI for a newer release on
import); scripts/device_stages.py's OFFLINE_ENV holds the same and more (tests/test_device_scripts.py checks)."""


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / a.double().norm() / b.double().norm())


def one_step_update(cfg: Any, accelerator: str, precision: str) -> tuple[torch.Tensor, pl.LightningModule]:
    """All parameters' change in one SGD step on a fixed batch (same initial weights on every call: seed 0)."""
    torch.manual_seed(0)
    cfg = cfg.copy()
    # a plain loader, without the datamodule's after-transfer hook: float batches
    OmegaConf.update(cfg, "data.normalize_on_device", False, force_add=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    loader = DataLoader(SyntheticBatch(datamodule), batch_size=4)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    after = dict(module.model.named_parameters())
    return torch.cat([(after[k].detach().cpu() - before[k]).flatten() for k in before]), module


class SyntheticBatch(Dataset):
    """The first ``n`` augmented training samples of the config's synthetic dataset, fixed."""

    def __init__(self, datamodule: Any, n: int = 4) -> None:
        dataset = datamodule.split_dataset(datamodule.train_split, train=True)
        self.samples = [dataset[(i, i)] for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.samples[i]
