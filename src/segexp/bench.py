"""``make bench``: training throughput and peak memory of DeepLabv3-ResNet50 (OS 16, 321x321).

The same model, loss, poly-scheduled SGD and in-memory batches are timed twice: through
segexp's Lightning module and Trainer, and in a bare PyTorch loop. The ratio of the median step
times is the framework's overhead (target: at most 1.05). Runs on CUDA when present, else CPU.

    python -m segexp.bench [--batch 4] [--steps 6] [--warmup 2] [--crop 321]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from segexp.builders import build_datamodule, build_module
from segexp.info import compose_config


class FixedBatches(Dataset):
    """``n`` random image/label pairs generated once and kept in memory."""

    def __init__(self, n: int, crop: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, crop, crop, generator=generator)
        self.labels = torch.randint(0, num_classes, (n, crop, crop), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        _sync()
        self.stamps.append(time.perf_counter())


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build(crop: int, batch: int, steps: int) -> tuple[Any, DataLoader]:
    cfg = compose_config([
        "backbone=resnet50", "backbone.output_stride=16", "head=aspp", "dataset=voc", "logger=csv",
        f"data.crop_size=[{crop},{crop}]", f"data.batch_size={batch}", f"trainer.max_steps={steps}",
    ])
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    data = FixedBatches(batch * 2, crop, datamodule.num_classes)
    return module, DataLoader(data, batch_size=batch, shuffle=False, num_workers=0)


def time_framework(crop: int, batch: int, steps: int, precision: str) -> list[float]:
    module, loader = build(crop, batch, steps)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_steps=steps, max_epochs=-1, precision=precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
    )
    _sync()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    stamps = [start, *timer.stamps]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def time_bare(crop: int, batch: int, steps: int, precision: str) -> list[float]:
    module, loader = build(crop, batch, steps)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, loss_fn = module.model.to(device).train(), module.loss.to(device)
    heads = [model.head] + ([model.aux_head] if model.aux_head is not None else [])
    optimizer, scheduler = module.schedule.build(model.backbone, heads, steps)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=precision == "16-mixed")
    scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")
    times: list[float] = []
    _sync()
    last = time.perf_counter()
    while len(times) < steps:
        for batch_data in loader:
            images = batch_data["image"].to(device, non_blocking=True)
            labels = batch_data["label"].to(device, non_blocking=True)
            with autocast:
                logits = model.forward_raw(images)["out"]
                loss = loss_fn(model.upsample(logits, tuple(labels.shape[-2:])), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            _sync()
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) == steps:
                break
    return times


MODES = {"bare": time_bare, "segexp": time_framework}


def run_mode(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line for the parent."""
    _reset_peak()
    times = MODES[args.only](args.crop, args.batch, args.steps + args.warmup, args.precision)[args.warmup :]
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": _peak_memory_mb()}))


def measure(mode: str, argv: list[str]) -> dict[str, float]:
    """Run one mode in a fresh process so peak memory is that mode's alone."""
    out = subprocess.run(
        [sys.executable, "-m", "segexp.bench", "--only", mode, *argv], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark mode {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--batch", type=int, default=16 if on_gpu else 4)
    parser.add_argument("--steps", type=int, default=30 if on_gpu else 6)
    parser.add_argument("--warmup", type=int, default=5 if on_gpu else 2)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--precision", default="16-mixed" if on_gpu else "32-true")
    parser.add_argument("--only", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_mode(args)
        return
    argv = [f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
            f"--crop={args.crop}", f"--precision={args.precision}"]
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"DeepLabv3-ResNet50, OS 16, {args.crop}x{args.crop} crops, batch {args.batch}, "
          f"{args.precision}, {args.steps} timed steps after {args.warmup} warm-up, on {device}")
    results = {}
    for mode, label in (("bare", "bare PyTorch"), ("segexp", "segexp")):
        res = measure(mode, argv)
        results[mode] = res["median_s"]
        print(f"{label:13s} median step {res['median_s'] * 1000:8.1f} ms | "
              f"{args.batch / res['median_s']:7.2f} images/s | peak memory {res['peak_mb']:8.0f} MB")
    ratio = results["segexp"] / results["bare"]
    verdict = "within" if ratio <= 1.05 else "OVER"
    print(f"framework / bare step time: {ratio:.3f} ({verdict} the 1.05 budget)")


if __name__ == "__main__":
    main()
