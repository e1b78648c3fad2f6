"""``make bench``: training throughput, peak memory and framework overhead; on a GPU also MFU, inference
and data-loading rates.

Training: the same model, loss, poly-scheduled SGD and batches are timed twice, through segexp's Lightning
module and Trainer and in a bare PyTorch loop (the same autocast precision and memory format); the ratio of
the median step times is the framework's overhead. The step is timed apart from data preparation: the
batches (normalised float32 images, int64 labels, as the loader and the after-transfer hook deliver them)
are made and moved to the device before the clock starts, so no collation, pinning or host-to-device copy is
in a step, and the loader is timed on its own. Step boundaries are CUDA events recorded in the stream and
read once after the run (on a CPU, host timestamps), so timing adds no host-device synchronisation of its
own. On a CPU each measurement runs in its own process, so its peak (resident) memory is its own; on a GPU
they share one process (one start-up, CUDA context and cuDNN autotuning) and the peak is reset between them.

On a CPU (no CUDA): DeepLabv3-ResNet50, OS 16, 321x321 crops, batch 4, fp32 -- the figure the README
tracks for laptops and CI machines.

On a GPU, the DeepLabv3-ResNet101 protocol of the papers (VOC, 21 classes, 512x512 crops), bf16 mixed
precision (fp16 where bf16 is unsupported), channels_last, cuDNN benchmark:

- training at OS 16 (batch 16) and OS 8 (batch 8): images/s, peak memory, achieved TFLOP/s and MFU. Model
  FLOPs per training image are counted with torch's FLOP counter on a forward pass over meta tensors (one
  multiply-add = 2 FLOPs), x3 for forward + backward; ``--write-flops`` counts them beforehand on any
  machine, and ``--flops`` reads them back (used while the model sources are unchanged), so a lent GPU
  spends no time on it. MFU is achieved FLOP/s over two peaks: the median rate of a large random bf16 matrix
  product measured in the same run (``mfu``), and the datasheet's dense bf16 rate (``mfu_datasheet``; 989
  TFLOP/s for H100/H200 SXM). ``--compare-layouts`` also times both modes with contiguous (NCHW) tensors;
- inference (batch 1, OS 8, 19 Cityscapes classes): images/s whole at 512x1024, and sliding 512x1024
  windows (stride 341x683, 3x3 windows) over 1024x2048 images, the Cityscapes protocol of mmsegmentation;
- the data loader alone: samples/s of segexp's training pipeline (decode, random scale 0.5-2, pad,
  crop 512x512 as the training figures, flip, normalise, collate, pin) over JPEG/PNG pairs of Cityscapes
  size that the benchmark writes itself, with as many workers as CPU cores and epochs long enough that every
  worker is busy (4 batches per worker): does loading keep up? Timed twice: batches as float32 images + int64
  labels, and as uint8 (``data.normalize_on_device``).

``--parts`` picks among training, inference and loader. Figures are printed and written to ``--json``
(default ``outputs/bench/bench-<device>.json``), on a GPU after every measurement (``"complete": false``
until the last), so a run cut short keeps what it measured. ``--plan`` prints what the GPU suite would
measure and where its FLOPs come from, without a GPU.

    python -m segexp.cli.bench [--steps N] [--warmup N] [--json PATH]            # the suite for this device
    python -m segexp.cli.bench --parts training --only-os 16 --compare-layouts   # scripts/device_check.sh
    python -m segexp.cli.bench --write-flops PATH                                 # FLOPs beforehand (no GPU)
    python -m segexp.cli.bench --batch 4 --crop 321 --precision 32-true          # CPU-style single comparison
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from segexp import atomic
from segexp.config import CONF_DIR, REPO_ROOT, SOURCE_CHECKOUT, compose_config
from segexp.resolvers import gpu_mixed_precision
from segexp.training.build import build_datamodule, build_module
from segexp.training.step_clock import StepClock

MMSEG_V100_FPS = 1.92
"""mmsegmentation's published inference rate of DeepLabV3-R101-D8 on Cityscapes (V100, fp32, 1024x2048)."""

DATASHEET_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
                         ("H200", 989.0))
"""Dense (no sparsity) bf16 tensor-core rates of NVIDIA's datasheets, by a part of the device name (first match)."""

PARTS = ("training", "inference", "loader")
GPU_TRAINING = ((16, 16), (8, 8))
"""(output stride, batch) of the GPU suite's training measurements."""
FLOPS_CONFIGS = tuple((101, output_stride, 512, 512, "voc") for output_stride, _ in GPU_TRAINING)
"""(depth, output stride, height, width, dataset) of the forward FLOP counts the GPU suite needs."""


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


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def staged_batches(batch: int, crop: int, num_classes: int, steps: int, device: torch.device,
                   distinct: int = 2) -> list[dict[str, Tensor]]:
    """``steps`` training batches already on ``device``: ``distinct`` different ones (random, never zeros),
    reused in turn. Normalised float32 images and int64 labels, what a step receives after the loader and the
    after-transfer hook, so a timed step holds the model step alone."""
    generator = torch.Generator().manual_seed(0)
    made = [{"image": torch.randn(batch, 3, crop, crop, generator=generator).to(device),
             "label": torch.randint(0, num_classes, (batch, crop, crop), generator=generator).to(device)}
            for _ in range(distinct)]
    return [made[i % distinct] for i in range(steps)]


class StagedLoader:
    """Staged batches as one iterable for a Lightning Trainer (a plain list would read as several loaders)."""

    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepTimer(pl.Callback):
    """Marks ``clock`` when training starts and after every optimizer step."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.mark()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.clock.mark()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_memory_mb(base_bytes: int = 0) -> float:
    """Peak memory since :func:`_reset_peak`: on CUDA, allocated above ``base_bytes`` (what was allocated before
    the measurement); on a CPU, the process's peak resident memory."""
    if torch.cuda.is_available():
        return (torch.cuda.max_memory_allocated() - base_bytes) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _reset_peak() -> int:
    """Free what earlier measurements left and restart the CUDA peak; the bytes still allocated (0 on a CPU)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def model_overrides(depth: int, output_stride: int, dataset: str = "voc") -> list[str]:
    return [f"backbone=resnet{depth}", f"backbone.output_stride={output_stride}", "head=aspp",
            f"dataset={dataset}", "logger=csv"]


def build(args: argparse.Namespace) -> tuple[Any, list[dict[str, Tensor]]]:
    """The module of the configuration in ``args`` and its ``warmup + steps`` batches, staged on the device."""
    cfg = compose_config([
        *model_overrides(args.depth, args.output_stride), f"data.crop_size=[{args.crop},{args.crop}]",
        f"data.batch_size={args.batch}", f"trainer.max_steps={args.steps + args.warmup}",
        f"model.channels_last={str(args.channels_last).lower()}", f"model.compile={str(args.compile).lower()}",
    ])
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    batches = staged_batches(args.batch, args.crop, datamodule.num_classes, args.steps + args.warmup,
                             bench_device())
    return module, batches


def time_framework(args: argparse.Namespace) -> list[float]:
    """Step times through segexp's module and a Lightning Trainer (no logger, checkpoints or validation)."""
    module, batches = build(args)
    clock = StepClock(bench_device())
    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_steps=args.steps + args.warmup, max_epochs=-1,
        precision=args.precision, benchmark=torch.cuda.is_available() or None, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[StepTimer(clock)],
    )
    trainer.fit(module, train_dataloaders=StagedLoader(batches))
    return clock.intervals()


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def time_bare(args: argparse.Namespace) -> list[float]:
    """The same training step written as a plain PyTorch loop: the floor segexp is compared with."""
    module, batches = build(args)
    steps = args.steps + args.warmup
    device = bench_device()
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
    clock = StepClock(device)
    clock.mark()
    for batch_data in batches:
        images = batch_data["image"].contiguous(memory_format=memory_format)
        labels = batch_data["label"]
        with autocast:
            logits = model.forward_raw(images)["out"]
            loss = loss_fn(model.upsample(logits, tuple(labels.shape[-2:])), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        clock.mark()
    return clock.intervals()


MODES: dict[str, Callable[[argparse.Namespace], list[float]]] = {"bare": time_bare, "segexp": time_framework}


def step_statistics(times: Sequence[float]) -> dict[str, float]:
    """Median step time and the 10th/90th percentiles (the spread a difference must exceed to be real)."""
    median = statistics.median(times)
    low, high = (statistics.quantiles(times, n=10)[i] for i in (0, 8)) if len(times) > 1 else (median, median)
    return {"median_s": median, "p10_s": low, "p90_s": high}


def run_mode(args: argparse.Namespace) -> dict[str, float]:
    """One measurement in this process: step statistics after the warm-up and peak memory."""
    base = _reset_peak()
    times = MODES[args.only](args)[args.warmup :]
    return {**step_statistics(times), "peak_mb": _peak_memory_mb(base)}


def measure(mode: str, argv: list[str]) -> dict[str, float]:
    """One mode's measurement: in this process on CUDA (start-up, CUDA context and cuDNN autotuning paid once;
    the peak is reset between measurements), in a fresh process on a CPU (a process's peak only grows)."""
    if torch.cuda.is_available():
        return run_mode(parse_args(["--only", mode, *argv]))
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
        if "p10_s" in res:
            result[mode].update(p10_step_ms=res["p10_s"] * 1000, p90_step_ms=res["p90_s"] * 1000)
        spread = f" (p10-p90 {res['p10_s'] * 1000:.1f}-{res['p90_s'] * 1000:.1f})" if "p10_s" in res else ""
        print(f"  {label:13s} median step {res['median_s'] * 1000:8.1f} ms{spread} | "
              f"{batch / res['median_s']:7.2f} images/s | peak memory {res['peak_mb']:8.0f} MB", flush=True)
    result["segexp_over_bare"] = result["segexp"]["median_step_ms"] / result["bare"]["median_step_ms"]
    return result


# ------------------------------------------------------------------------------------------- FLOP counts
def forward_flops(depth: int, output_stride: int, height: int, width: int, dataset: str = "voc") -> int:
    """FLOPs of one forward pass of one image (torch's FLOP counter; a multiply-add is 2 FLOPs)."""
    cfg = compose_config(model_overrides(depth, output_stride, dataset))
    model = build_module(cfg, build_datamodule(cfg)).model.eval().to("meta")  # shapes only: no arithmetic
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width, device="meta"))
    return int(counter.get_total_flops())


def flops_key(depth: int, output_stride: int, height: int, width: int, dataset: str = "voc") -> str:
    return f"resnet{depth}-os{output_stride}-{dataset}-{height}x{width}"


def model_fingerprint() -> str:
    """sha256 of what a forward FLOP count depends on: the model code, the configs and this file."""
    models = Path(__file__).resolve().parents[1] / "models"
    paths = sorted(models.rglob("*.py")) + sorted(Path(CONF_DIR).rglob("*.yaml")) + [Path(__file__).resolve()]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_flops(path: Path, configs: Sequence[tuple[int, int, int, int, str]] = FLOPS_CONFIGS) -> dict[str, Any]:
    """Count the forward FLOPs of ``configs`` here (meta tensors: no GPU, about a second each) into ``path``."""
    table = {"fingerprint": model_fingerprint(), "torch": torch.__version__,
             "forward_flops": {flops_key(*config): forward_flops(*config) for config in configs}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, table)
    return table


class Flops:
    """Forward FLOPs per image: from a file of :func:`write_flops` when it was written for these model sources
    (its fingerprint), else counted here. ``source`` says which."""

    def __init__(self, path: Path | None = None) -> None:
        self.known: dict[str, int] = {}
        self.source = "counted here (no --flops file)"
        if path is None:
            return
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            self.source = f"counted here ({path} unreadable: {err})"
            return
        if table.get("fingerprint") != model_fingerprint():
            self.source = f"counted here ({path} was written for other model sources)"
            return
        self.known = {key: int(value) for key, value in table["forward_flops"].items()}
        self.source = f"from {path}"

    def forward(self, depth: int, output_stride: int, height: int, width: int, dataset: str = "voc") -> int:
        key = flops_key(depth, output_stride, height, width, dataset)
        if key in self.known:
            return self.known[key]
        return forward_flops(depth, output_stride, height, width, dataset)


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


def datasheet_bf16_tflops(device_name: str) -> float | None:
    """The datasheet's dense bf16 rate of ``device_name`` (:data:`DATASHEET_BF16_TFLOPS`), None if unknown."""
    return next((rate for part, rate in DATASHEET_BF16_TFLOPS if part in device_name), None)


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


def write_cityscapes_size_pairs(root: Path, count: int, seed: int = 0, listed: int | None = None) -> None:
    """``count`` smooth synthetic 1024x2048 scenes as JPEG images + PNG labels in CamVid's list layout; the
    split file lists ``listed`` samples (default ``count``): the scenes in turn, under names of their own (hard
    links; a split file lists every sample once).

    Written with PIL, not OpenCV: OpenCV's thread pool in the parent can deadlock forked loader workers.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))
        image = np.asarray(coarse.resize((2048, 1024), Image.Resampling.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        label = Image.fromarray(rng.integers(0, 11, (8, 16), dtype=np.uint8)).resize((2048, 1024), Image.NEAREST)
        Image.fromarray(image).save(root / "train" / f"{i:04d}.jpg", quality=90)
        label.save(root / "trainannot" / f"{i:04d}.png")
    for i in range(count, listed or count):
        for folder, suffix in (("train", "jpg"), ("trainannot", "png")):
            os.link(root / folder / f"{i % count:04d}.{suffix}", root / folder / f"{i:04d}.{suffix}")
    lines = [f"/x/train/{i:04d}.jpg /x/trainannot/{i:04d}.png" for i in range(listed or count)]
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def loader_rate(workers: int, normalize_on_device: bool = False, crop: int = 512, batch: int = 16,
                images: int | None = None, epochs: int = 3, files: int = 32) -> float:
    """Samples/s of segexp's training loader (``crop`` squares, as the training figures) on Cityscapes-size
    files, batches as float32 images + int64 labels or (``normalize_on_device``) as uint8; the first epoch
    (worker start-up) is not counted. An epoch holds ``images`` samples, by default 4 batches per worker (at
    least 96), so that every worker is busy; they are ``files`` distinct pairs listed in turn (decoding costs
    the same each time, and writing thousands of such files would cost more than the measurement)."""
    images = images or max(96, 4 * batch * max(1, workers))
    with tempfile.TemporaryDirectory() as tmp:
        write_cityscapes_size_pairs(Path(tmp), min(files, images), listed=images)
        cfg = compose_config(["dataset=camvid", f"dataset.root={tmp}", f"data.crop_size=[{crop},{crop}]",
                              f"data.batch_size={batch}", f"data.num_workers={workers}",
                              "data.scale_range=[0.5,2.0]", f"data.normalize_on_device={normalize_on_device}"])
        loader = build_datamodule(cfg).train_dataloader()
        counted, start = 0, 0.0
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            if epoch == 1:
                start = time.perf_counter()
            for batch_data in loader:
                counted += len(batch_data["image"]) if epoch >= 1 else 0
        return counted / (time.perf_counter() - start)


def training_configs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(output stride, batch) of the GPU suite's training measurements that ``--only-os`` keeps."""
    return [(os_, batch) for os_, batch in GPU_TRAINING if not args.only_os or os_ in args.only_os]


def training_mfu(result: dict[str, Any], flops: int, peak: float, datasheet: float | None) -> None:
    """Add achieved TFLOP/s (forward FLOPs x3 for the backward pass, segexp's rate) and MFU over both peaks."""
    achieved = 3 * flops * result["segexp"]["images_per_s"] / 1e12
    result.update(achieved_tflops=achieved, mfu=achieved / peak,
                  mfu_datasheet=achieved / datasheet if datasheet else None)


def gpu_suite(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The GPU figures of ``args.parts``; ``emit`` receives the report after every measurement."""
    emit = emit or (lambda report: None)
    precision = gpu_mixed_precision() if args.precision == "auto" else args.precision
    device = torch.cuda.get_device_name()
    parts = args.parts or PARTS
    print(f"segexp GPU benchmark on {device} ({precision}, channels_last, cuDNN benchmark), "
          f"torch {torch.__version__}", flush=True)
    datasheet = datasheet_bf16_tflops(device)
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "precision": precision,
                              "date": time.strftime("%Y-%m-%d"), "datasheet_bf16_tflops": datasheet,
                              "complete": False, "training": {}, "inference": {}}
    if "training" in parts:
        peak = bf16_peak_tflops()
        report["bf16_peak_tflops"] = peak
        print(f"dense bf16 matrix product (8192^3, random): {peak:.0f} TFLOP/s (an MFU denominator; datasheet: "
              f"{datasheet or 'unknown'})", flush=True)
        flops_table = Flops(args.flops)
        for output_stride, batch in training_configs(args):
            flops = flops_table.forward(101, output_stride, 512, 512)
            print(f"DeepLabv3-ResNet101 OS {output_stride}, 512x512, batch {batch}: "
                  f"{flops / 1e9:.1f} GFLOPs forward per image ({flops_table.source})", flush=True)
            argv = train_argv(args, batch=batch, crop=512, precision=precision, depth=101,
                              output_stride=output_stride)
            result = compare_training(argv, batch)
            result.update(batch=batch, crop=512, forward_gflops_per_image=flops / 1e9)
            training_mfu(result, flops, peak, datasheet)
            sheet = f", {result['mfu_datasheet']:.1%} of the datasheet's" if datasheet else ""
            print(f"  achieved {result['achieved_tflops']:.0f} TFLOP/s = MFU {result['mfu']:.1%} of the measured "
                  f"peak{sheet}; segexp / bare step time {result['segexp_over_bare']:.3f}", flush=True)
            report["training"][f"os{output_stride}"] = result
            emit(report)
            if args.compare_layouts and args.channels_last:
                print("  the same with contiguous (NCHW) tensors:", flush=True)
                contiguous = compare_training(train_argv(args, batch=batch, crop=512, precision=precision,
                                                         depth=101, output_stride=output_stride,
                                                         channels_last=False), batch)
                training_mfu(contiguous, flops, peak, datasheet)
                result["contiguous"] = contiguous
                result["channels_last_speedup"] = (contiguous["segexp"]["median_step_ms"]
                                                   / result["segexp"]["median_step_ms"])
                print(f"  channels_last / contiguous: {result['channels_last_speedup']:.2f}x faster (segexp)",
                      flush=True)
                emit(report)
    if "inference" in parts:
        for name, size, slide in (("whole_512x1024", (512, 1024), False), ("slide_1024x2048", (1024, 2048), True)):
            rate = inference_rate(101, 8, size, slide, repeats=args.steps)
            report["inference"][name] = {"images_per_s": rate, "output_stride": 8, "batch": 1}
            print(f"inference DeepLabv3-R101 OS 8, {name.replace('_', ' ')}, batch 1: {rate:.1f} images/s "
                  f"({rate / MMSEG_V100_FPS:.1f}x mmseg's V100 fp32 {MMSEG_V100_FPS} fps)", flush=True)
            emit(report)
    if "loader" in parts:
        workers = args.loader_workers or os.cpu_count() or 1
        rates = {name: loader_rate(workers, normalize_on_device=name == "uint8") for name in ("float32", "uint8")}
        report["loader"] = {"workers": workers, "samples_per_s": rates, "crop": [512, 512],
                            "source": "1024x2048 JPEG + PNG label pairs"}
        need = report["training"].get("os16", {}).get("segexp", {}).get("images_per_s")
        verdict = f" (training at OS 16 consumes {need:.0f}/s)" if need else ""
        print(f"data loader, {workers} workers, 1024x2048 JPEG/PNG -> 512x512 crops: {rates['float32']:.0f} "
              f"samples/s as float32, {rates['uint8']:.0f} as uint8 (data.normalize_on_device){verdict}", flush=True)
    report["complete"] = True
    emit(report)
    return report


def plan(args: argparse.Namespace) -> list[str]:
    """What the GPU suite would measure with ``args`` and where its FLOP counts come from (no GPU needed)."""
    parts = args.parts or PARTS
    lines = [f"GPU suite parts: {', '.join(parts)}; {args.warmup} warm-up + {args.steps} timed steps"]
    if "training" in parts:
        flops_table = Flops(args.flops)
        layouts = "channels_last and contiguous" if args.compare_layouts else "channels_last"
        for output_stride, batch in training_configs(args):
            flops = flops_table.forward(101, output_stride, 512, 512)
            lines.append(f"training DeepLabv3-ResNet101 OS {output_stride}, 512x512, batch {batch}: bare and segexp, "
                         f"{layouts}; {flops / 1e9:.1f} GFLOPs forward per image ({flops_table.source})")
    if "inference" in parts:
        lines.append("inference DeepLabv3-ResNet101 OS 8, batch 1: whole 512x1024, sliding 512x1024 over 1024x2048")
    if "loader" in parts:
        lines.append(f"loader: {args.loader_workers or os.cpu_count() or 1} workers, float32 and uint8 batches")
    return lines


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
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="GPU suite: only these parts (default: all)")
    parser.add_argument("--only-os", type=int, nargs="*", help="GPU suite: only these output strides")
    parser.add_argument("--compare-layouts", action="store_true",
                        help="GPU suite: also time training with contiguous (NCHW) tensors")
    parser.add_argument("--loader-workers", type=int, default=0, help="GPU suite: loader workers (0: CPU cores)")
    parser.add_argument("--flops", type=Path, help="forward FLOP counts written beforehand by --write-flops")
    parser.add_argument("--write-flops", type=Path, metavar="PATH",
                        help="count the GPU suite's forward FLOPs here (no GPU needed), write them to PATH, exit")
    parser.add_argument("--plan", action="store_true", help="print what the GPU suite would measure, exit")
    parser.add_argument("--json", type=Path, help="where to write the figures")
    parser.add_argument("--only", choices=sorted(MODES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        print(json.dumps(run_mode(args)))
        return
    if args.write_flops:
        table = write_flops(args.write_flops)
        print(f"forward FLOPs per image written to {args.write_flops}: {table['forward_flops']}")
        return
    if args.plan:
        print("\n".join(plan(args)))
        return
    gpu = torch.cuda.is_available() and not args.cpu_style
    device = "gpu" if gpu else "cpu"
    outputs = REPO_ROOT / "outputs" if SOURCE_CHECKOUT else Path("outputs")
    path = Path(args.json or outputs / "bench" / f"bench-{device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    report = gpu_suite(args, emit=lambda partial: atomic.write_json(path, partial)) if gpu else cpu_comparison(args)
    atomic.write_json(path, report)
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
