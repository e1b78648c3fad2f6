"""``make bench``: training throughput, peak memory and framework overhead; on a GPU also MFU, inference
and data-loading rates.

Training: the same model, loss, poly-scheduled SGD and in-memory batches are timed twice, through segexp's
Lightning module and Trainer and in a bare PyTorch loop (the same autocast precision and memory format);
the ratio of the median step times is the framework's overhead. Each measurement runs in its own process,
so its peak memory is its own.

On a CPU (no CUDA): DeepLabv3-ResNet50, OS 16, 321x321 crops, batch 4, fp32 -- the figure the README
tracks for laptops and CI machines.

On a GPU, the DeepLabv3-ResNet101 protocol of the papers (VOC, 21 classes, 512x512 crops), bf16 mixed
precision (fp16 where bf16 is unsupported), channels_last, cuDNN benchmark:

- training at OS 16 (batch 16) and OS 8 (batch 8): images/s, peak memory, achieved TFLOP/s and MFU. Model
  FLOPs per training image are counted once with torch's FLOP counter on a forward pass (one multiply-add
  = 2 FLOPs), x3 for forward + backward; MFU is achieved FLOP/s over the device's dense bf16 peak, which
  is measured in the same run as the median rate of a large random bf16 matrix product;
- inference (batch 1, OS 8, 19 Cityscapes classes): images/s whole at 512x1024, and sliding 512x1024
  windows (stride 341x683, 3x3 windows) over 1024x2048 images, the Cityscapes protocol of mmsegmentation;
- the data loader alone: samples/s of segexp's training pipeline (decode, random scale 0.5-2, pad,
  crop 512x512 as the training figures, flip, normalise, collate, pin) over JPEG/PNG pairs of Cityscapes
  size that the benchmark writes itself, with as many workers as CPU cores: does loading keep up? Timed
  twice: batches as float32 images + int64 labels, and as uint8 (``data.normalize_on_device``).

Figures are printed and written to ``--json`` (default ``outputs/bench/bench-<device>.json``).

    python -m segexp.cli.bench [--steps N] [--warmup N] [--json PATH]            # the suite for this device
    python -m segexp.cli.bench --batch 4 --crop 321 --precision 32-true          # CPU-style single comparison
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from segexp import atomic
from segexp.config import REPO_ROOT, SOURCE_CHECKOUT, compose_config, gpu_mixed_precision
from segexp.training.build import build_datamodule, build_module

MMSEG_V100_FPS = 1.92
"""mmsegmentation's published inference rate of DeepLabV3-R101-D8 on Cityscapes (V100, fp32, 1024x2048)."""


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


def model_overrides(depth: int, output_stride: int, dataset: str = "voc") -> list[str]:
    return [f"backbone=resnet{depth}", f"backbone.output_stride={output_stride}", "head=aspp",
            f"dataset={dataset}", "logger=csv"]


def build(args: argparse.Namespace) -> tuple[Any, DataLoader]:
    cfg = compose_config([
        *model_overrides(args.depth, args.output_stride), f"data.crop_size=[{args.crop},{args.crop}]",
        f"data.batch_size={args.batch}", f"trainer.max_steps={args.steps + args.warmup}",
        f"model.channels_last={str(args.channels_last).lower()}", f"model.compile={str(args.compile).lower()}",
    ])
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    data = FixedBatches(args.batch * 2, args.crop, datamodule.num_classes)
    return module, DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=0,
                             pin_memory=torch.cuda.is_available())


def time_framework(args: argparse.Namespace) -> list[float]:
    module, loader = build(args)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_steps=args.steps + args.warmup, max_epochs=-1,
        precision=args.precision, benchmark=torch.cuda.is_available() or None, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[timer],
    )
    _sync()
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    stamps = [start, *timer.stamps]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def time_bare(args: argparse.Namespace) -> list[float]:
    """The same training step written as a plain PyTorch loop: the floor segexp is compared with."""
    module, loader = build(args)
    steps = args.steps + args.warmup
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model, loss_fn = module.model.to(device, memory_format=memory_format).train(), module.loss.to(device)
    if args.compile:
        for part in (model.backbone, model.head):
            part.compile()
    heads = [model.head] + ([model.aux_head] if model.aux_head is not None else [])
    optimizer, scheduler = module.schedule.build(model.backbone, heads, steps)
    dtype = autocast_dtype(args.precision)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(enabled=args.precision == "16-mixed")
    times: list[float] = []
    _sync()
    last = time.perf_counter()
    while len(times) < steps:
        for batch_data in loader:
            images = batch_data["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
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


MODES: dict[str, Callable[[argparse.Namespace], list[float]]] = {"bare": time_bare, "segexp": time_framework}


def run_mode(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line for the parent."""
    _reset_peak()
    times = MODES[args.only](args)[args.warmup :]
    print(json.dumps({"median_s": statistics.median(times), "peak_mb": _peak_memory_mb()}))


def measure(mode: str, argv: list[str]) -> dict[str, float]:
    """Run one mode in a fresh process so peak memory is that mode's alone."""
    out = subprocess.run(
        [sys.executable, "-m", "segexp.cli.bench", "--only", mode, *argv], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark mode {mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_argv(args: argparse.Namespace, **changes: Any) -> list[str]:
    values = {key: getattr(args, key) for key in ("batch", "steps", "warmup", "crop", "precision", "depth",
                                                   "output_stride", "channels_last", "compile")}
    values.update(changes)
    return [f"--{key.replace('_', '-')}={value}" for key, value in values.items()]


def compare_training(argv: list[str], batch: int) -> dict[str, Any]:
    """bare and segexp step times, images/s and peak memory for one configuration; their ratio."""
    result: dict[str, Any] = {}
    for mode, label in (("bare", "bare PyTorch"), ("segexp", "segexp")):
        res = measure(mode, argv)
        result[mode] = {"median_step_ms": res["median_s"] * 1000, "images_per_s": batch / res["median_s"],
                        "peak_memory_mb": res["peak_mb"]}
        print(f"  {label:13s} median step {res['median_s'] * 1000:8.1f} ms | "
              f"{batch / res['median_s']:7.2f} images/s | peak memory {res['peak_mb']:8.0f} MB", flush=True)
    result["segexp_over_bare"] = result["segexp"]["median_step_ms"] / result["bare"]["median_step_ms"]
    return result


# ------------------------------------------------------------------------------------------- GPU suite
def bf16_peak_tflops(size: int = 8192, repeats: int = 20) -> float:
    """Median rate of a ``size``-cubed bf16 matrix product on random data (the device's dense peak)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / statistics.median(times) / 1e12


def forward_flops(depth: int, output_stride: int, height: int, width: int, dataset: str = "voc") -> int:
    """FLOPs of one forward pass of one image (torch's FLOP counter; a multiply-add is 2 FLOPs)."""
    cfg = compose_config(model_overrides(depth, output_stride, dataset))
    model = build_module(cfg, build_datamodule(cfg)).model.eval().to("meta")  # shapes only: no arithmetic
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width, device="meta"))
    return int(counter.get_total_flops())


def inference_rate(depth: int, output_stride: int, size: tuple[int, int], slide: bool, repeats: int,
                   device: str = "cuda", window: tuple[int, int] = (512, 1024)) -> float:
    """Images/s of batch-1 inference at ``size``: the whole image, or ``window`` crops at 2/3 of their size
    apart (512x1024 at 341x683, mmsegmentation's Cityscapes protocol); NHWC, under the GPU's autocast
    precision on CUDA, fp32 elsewhere."""
    from segexp.training.inference import Inference

    cfg = compose_config(model_overrides(depth, output_stride, "cityscapes"))
    module = build_module(cfg, build_datamodule(cfg))
    model = module.model.to(device).eval().to(memory_format=torch.channels_last)
    stride = (round(window[0] * 2 / 3), round(window[1] * 2 / 3))
    inference = Inference(mode="slide", crop_size=window, stride=stride) if slide else Inference()
    image = torch.randn(1, 3, *size, device=device).contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(gpu_mixed_precision()) or torch.float32
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        for _ in range(3):
            inference(model, image).argmax(1)
        _sync()
        start = time.perf_counter()
        for _ in range(repeats):
            inference(model, image).argmax(1)
        _sync()
    return repeats / (time.perf_counter() - start)


def write_cityscapes_size_pairs(root: Path, count: int, seed: int = 0) -> None:
    """``count`` smooth synthetic 1024x2048 scenes as JPEG images + PNG labels in CamVid's list layout.

    Written with PIL, not OpenCV: OpenCV's thread pool in the parent can deadlock forked loader workers.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    lines = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize((2048, 1024), Image.Resampling.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        label = Image.fromarray(rng.integers(0, 11, (8, 16), dtype=np.uint8)).resize((2048, 1024), Image.NEAREST)
        Image.fromarray(image).save(root / "train" / f"{i:04d}.jpg", quality=90)
        label.save(root / "trainannot" / f"{i:04d}.png")
        lines.append(f"/x/train/{i:04d}.jpg /x/trainannot/{i:04d}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def loader_rate(workers: int, normalize_on_device: bool = False, crop: int = 512, batch: int = 16,
                images: int = 96, epochs: int = 3) -> float:
    """Samples/s of segexp's training loader (``crop`` squares, as the training figures) on Cityscapes-size
    files, batches as float32 images + int64 labels or (``normalize_on_device``) as uint8; the first epoch
    (worker start-up) is not counted."""
    with tempfile.TemporaryDirectory() as tmp:
        write_cityscapes_size_pairs(Path(tmp), images)
        cfg = compose_config(["dataset=camvid", f"dataset.root={tmp}", f"data.crop_size=[{crop},{crop}]",
                              f"data.batch_size={batch}", f"data.num_workers={workers}",
                              "data.scale_range=[0.5,2.0]", f"+data.normalize_on_device={normalize_on_device}"])
        loader = build_datamodule(cfg).train_dataloader()
        counted, start = 0, 0.0
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            if epoch == 1:
                start = time.perf_counter()
            for batch_data in loader:
                counted += len(batch_data["image"]) if epoch >= 1 else 0
        return counted / (time.perf_counter() - start)


def gpu_suite(args: argparse.Namespace) -> dict[str, Any]:
    precision = gpu_mixed_precision() if args.precision == "auto" else args.precision
    device = torch.cuda.get_device_name()
    print(f"segexp GPU benchmark on {device} ({precision}, channels_last, cuDNN benchmark), "
          f"torch {torch.__version__}", flush=True)
    peak = bf16_peak_tflops()
    print(f"dense bf16 matrix product (8192^3, random): {peak:.0f} TFLOP/s (the MFU denominator)", flush=True)
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "precision": precision,
                              "bf16_peak_tflops": peak, "date": time.strftime("%Y-%m-%d"), "training": {},
                              "inference": {}}
    for output_stride, batch in ((16, 16), (8, 8)):
        if args.only_os and output_stride not in args.only_os:
            continue
        flops = forward_flops(101, output_stride, 512, 512)
        print(f"DeepLabv3-ResNet101 OS {output_stride}, 512x512, batch {batch}: "
              f"{flops / 1e9:.1f} GFLOPs forward per image", flush=True)
        argv = train_argv(args, batch=batch, crop=512, precision=precision, depth=101, output_stride=output_stride)
        result = compare_training(argv, batch)
        rate = result["segexp"]["images_per_s"]
        result.update(batch=batch, crop=512, forward_gflops_per_image=flops / 1e9,
                      achieved_tflops=3 * flops * rate / 1e12, mfu=3 * flops * rate / 1e12 / peak)
        print(f"  achieved {result['achieved_tflops']:.0f} TFLOP/s = MFU {result['mfu']:.1%}; "
              f"segexp / bare step time {result['segexp_over_bare']:.3f}", flush=True)
        report["training"][f"os{output_stride}"] = result
    for name, size, slide in (("whole_512x1024", (512, 1024), False), ("slide_1024x2048", (1024, 2048), True)):
        rate = inference_rate(101, 8, size, slide, repeats=args.steps)
        report["inference"][name] = {"images_per_s": rate, "output_stride": 8, "batch": 1}
        print(f"inference DeepLabv3-R101 OS 8, {name.replace('_', ' ')}, batch 1: {rate:.1f} images/s "
              f"({rate / MMSEG_V100_FPS:.1f}x mmseg's V100 fp32 {MMSEG_V100_FPS} fps)", flush=True)
    workers = args.loader_workers or os.cpu_count() or 1
    rates = {name: loader_rate(workers, normalize_on_device=name == "uint8") for name in ("float32", "uint8")}
    report["loader"] = {"workers": workers, "samples_per_s": rates, "crop": [512, 512],
                        "source": "1024x2048 JPEG + PNG label pairs"}
    need = report["training"].get("os16", {}).get("segexp", {}).get("images_per_s")
    verdict = f" (training at OS 16 consumes {need:.0f}/s)" if need else ""
    print(f"data loader, {workers} workers, 1024x2048 JPEG/PNG -> 512x512 crops: {rates['float32']:.0f} samples/s "
          f"as float32, {rates['uint8']:.0f} as uint8 (data.normalize_on_device){verdict}", flush=True)
    return report


def cpu_comparison(args: argparse.Namespace) -> dict[str, Any]:
    precision = "32-true" if args.precision == "auto" else args.precision
    argv = train_argv(args, precision=precision)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"DeepLabv3-ResNet{args.depth}, OS {args.output_stride}, {args.crop}x{args.crop} crops, batch {args.batch}, "
          f"{precision}, {args.steps} timed steps after {args.warmup} warm-up, on {device}")
    result = compare_training(argv, args.batch)
    ratio = result["segexp_over_bare"]
    print(f"framework / bare step time: {ratio:.3f} ({'within' if ratio <= 1.05 else 'OVER'} the 1.05 budget)")
    return {"device": device, "precision": precision, "date": time.strftime("%Y-%m-%d"), "training": result}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30 if on_gpu else 6)
    parser.add_argument("--warmup", type=int, default=10 if on_gpu else 2)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--precision", default="auto", help="Lightning precision; auto: bf16/fp16 on GPU, fp32 on CPU")
    parser.add_argument("--channels-last", type=lambda s: s.lower() == "true", default=on_gpu)
    parser.add_argument("--compile", type=lambda s: s.lower() == "true", default=False)
    parser.add_argument("--cpu-style", action="store_true", help="on a GPU, run the single CPU-style comparison")
    parser.add_argument("--only-os", type=int, nargs="*", help="GPU suite: only these output strides")
    parser.add_argument("--loader-workers", type=int, default=0, help="GPU suite: loader workers (0: CPU cores)")
    parser.add_argument("--json", type=Path, help="where to write the figures")
    parser.add_argument("--only", choices=sorted(MODES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        run_mode(args)
        return
    gpu = torch.cuda.is_available() and not args.cpu_style
    report = gpu_suite(args) if gpu else cpu_comparison(args)
    device = "gpu" if gpu else "cpu"
    outputs = REPO_ROOT / "outputs" if SOURCE_CHECKOUT else Path("outputs")
    path = Path(args.json or outputs / "bench" / f"bench-{device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, report)
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
