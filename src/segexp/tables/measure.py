"""Model size and speed of a table row (pyramid-residual-block paper, Table V): float32 size in MB and the
mean wall time of one forward pass on one validation image, on the current device.

Both depend on the architecture only, so the model is rebuilt from the row's config (random weights):
``size_mb`` = parameters x 4 bytes / 2**20; ``test_time_s`` = mean of :data:`TIMED_PASSES` forward passes
(logits upsampled to the image, as at test time) after :data:`WARMUP_PASSES` warm-up passes.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from segexp import atomic
from segexp.data.datamodule import SegmentationDataModule
from segexp.environment import device_name
from segexp.models.build import build_segmentor
from segexp.tables.plan import Job, compose
from segexp.tables.store import METRICS_FILE, read_json
from segexp.tables.units import MEASURABLE
from segexp.training.build import build_datamodule

WARMUP_PASSES = 2
TIMED_PASSES = 5


def val_image_size(datamodule: SegmentationDataModule) -> tuple[int, int]:
    """Height and width of the first validation image (the crop size if it cannot be read)."""
    try:
        image, _ = datamodule.split_dataset(datamodule.val_split, train=False).load_sample(0)
        return int(image.shape[0]), int(image.shape[1])
    except Exception:  # a dataset that cannot be read here: fall back to the training crop
        return datamodule.crop_size


def current_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_forward(model: torch.nn.Module, image: torch.Tensor, device: torch.device) -> float:
    """Mean seconds per forward pass of ``image`` after warm-up."""
    model, image = model.to(device), image.to(device)
    with torch.inference_mode():
        for _ in range(WARMUP_PASSES):
            model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(TIMED_PASSES):
            model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / TIMED_PASSES


def measure_model(cfg: DictConfig) -> dict[str, Any]:
    """size_mb and test_time_s of the model ``cfg`` builds (ImageNet weights are not loaded)."""
    with open_dict(cfg):
        cfg.backbone.pretrained = None
    datamodule = build_datamodule(cfg)
    model = build_segmentor(cfg, datamodule.num_classes).eval()
    height, width = val_image_size(datamodule)
    device = current_device()
    seconds = time_forward(model, torch.zeros(1, 3, height, width), device)
    return {
        "size_mb": round(sum(p.numel() for p in model.parameters()) * 4 / 2**20, 2),
        "test_time_s": round(seconds, 4),
        "test_time_device": device_name(device),
        "test_image_size": [height, width],
    }


def add_measurements(job: Job) -> bool:
    """Write the measurements ``job.row.measure`` asks for into its metrics.json; False if already there."""
    path = job.run_dir / METRICS_FILE
    metrics = read_json(path) or {}
    if all(key in metrics for key in job.row.measure):
        return False
    measured = measure_model(compose(job.overrides, job.seed))
    wanted = {k: v for k, v in measured.items() if k in job.row.measure or k not in MEASURABLE}
    atomic.write_json(path, {**metrics, **wanted})
    return True
