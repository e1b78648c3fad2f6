"""How many devices a trainer config asks for, and the effective batch it trains with: the one computation, for
the training harness (SyncBN) and the table planner (protocol checks, process counts, costs)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def requested_devices(devices: Any) -> int | None:
    """Devices a Lightning ``trainer.devices`` setting asks for: a count, a list of ids or a comma-separated string
    of ids; ``-1`` / ``auto`` count this machine's CUDA devices (None when it has none: only known at run time)."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    text = str(devices).strip()
    if text in ("-1", "auto"):
        import torch

        return torch.cuda.device_count() or None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text)


def world_size(cfg: DictConfig) -> int | None:
    """Processes of the run: devices x ``trainer.num_nodes`` (None when the devices are only known at run time)."""
    devices = requested_devices(cfg.trainer.get("devices", 1))
    return None if devices is None else devices * int(cfg.trainer.get("num_nodes", 1))


def effective_batch(cfg: DictConfig) -> int | None:
    """data.batch_size x devices x num_nodes x accumulate_grad_batches (None if devices are unknown)."""
    world = world_size(cfg)
    if world is None:
        return None
    return int(cfg.data.batch_size) * world * int(cfg.trainer.get("accumulate_grad_batches", 1))
