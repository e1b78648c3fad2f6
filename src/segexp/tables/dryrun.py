"""The ``dryrun`` profile: every row of a table at the shapes it will really see, for 2 optimizer steps and 2
evaluation batches, on the device at hand, before any cluster time is spent.

    python -m segexp.tables.dryrun deeplabv3.t1 [--rows os8,os256] [--batch 1] [--json PATH]
    python -m segexp.tables.dryrun all --batch 1      # every ready table (a CPU: batch 1 keeps it feasible)

Each row is composed under ``experiments/profiles/dryrun.yaml`` (the ``full`` protocol with 2 steps, 2 evaluation
batches and no weight files), so it keeps its real crop, per-device batch, model, loss, memory format and
inference (output stride, padding, scales, flips, sliding windows, shifted passes). What the profile cannot say
is done here:

- **data**: synthetic scenes (:class:`ShapedScenes`) of the row's dataset: its image size
  (:data:`segexp.tables.cost.DATASETS`, e.g. 1024x2048 for Cityscapes) and its classes (the real dataset class's
  names, so a 150-class ADE20K row has 150 outputs and hard-class bootstrapping finds its classes); no dataset is
  read;
- **device**: one device, the one at hand (a CUDA GPU, else the CPU). A row that trains on several processes runs
  one of them, at its per-device batch (SyncBN off). On a CPU the row's GPU precision (bf16-mixed) falls back to
  fp32 and the record says so; ``--batch N`` replaces the per-device batch (the record keeps both);
- **weights**: random (ImageNet weights, ``init_from`` checkpoints are not read); an eval-only row evaluates a
  freshly built model of the row it evaluates, with its own evaluation settings (as segexp-eval composes them).

Per row (seed 0) it records in ``outputs/tables/<id>/dryrun/<row>/dryrun-<device>.json``: the time of the second
optimizer step and of the second evaluation batch (the first ones pay warm-up and cuDNN autotuning; data loading
is outside both), the peak memory of training and of evaluation (``torch.cuda.max_memory_allocated`` on CUDA, the
growth of the process's resident memory on a CPU), the FLOPs per training and per evaluated image
(:mod:`segexp.tables.cost`, counted on the meta device) and the rates they give (FLOPs / time). ``segexp-table
plan`` reads these records for throughput and memory. A failure (a shape that breaks at the real size) is reported
with the table, the row and its shapes, and the other rows go on. Rows of equal shapes (:func:`cost.shape_key`)
in one invocation are measured once.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from segexp import atomic
from segexp.data.datamodule import SegmentationDataModule
from segexp.data.datasets.synthetic import SyntheticShapes
from segexp.tables import cost
from segexp.tables.plan import EVAL, TRAIN, Job, world_size
from segexp.tables.spec import TableSpec, load_all, load_profile, load_table
from segexp.tables.yaml_reader import SpecError

PROFILE = cost.DRYRUN_PROFILE
SCENE_SIZE = 256
"""Scenes are generated at this size, then resized to the dataset's image size (cheap at 1024x2048)."""
SCENES_PER_SPLIT = 2
"""Scenes per split, at least: enough for 2 batches of the row's batch size."""


# ------------------------------------------------------------------------------------------- data
def class_ids(label: np.ndarray, num_classes: int) -> np.ndarray:
    """The scene's classes 0..5 spread over ``0..num_classes-1`` (background stays 0): a 150-class row sees
    ids up to 149, as on its real labels."""
    lut = np.array([min(k, num_classes - 1) if num_classes < 6 else round(k * (num_classes - 1) / 5)
                    for k in range(6)] + [0] * 250, dtype=np.uint8)
    return lut[label]


class ShapedScenes(SyntheticShapes):
    """Synthetic scenes (:class:`SyntheticShapes`) of ``height x width`` whose labels use the class ids of the
    dataset they stand in for (``CLASSES``, set by :func:`scenes_like`)."""

    CLASSES: ClassVar[tuple[str, ...]] = SyntheticShapes.CLASSES

    def __init__(self, split: str = "train", num_images: int = SCENES_PER_SPLIT, height: int = 128,
                 width: int = 128, seed: int = 0, transform: Any = None) -> None:
        super().__init__(split=split, num_images=num_images, image_size=SCENE_SIZE, seed=seed, transform=transform)
        self.height, self.width = int(height), int(width)

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = super().load_sample(index)
        size = (self.width, self.height)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return image, class_ids(label, len(self.CLASSES))


def scenes_like(real: type) -> type[ShapedScenes]:
    """A :class:`ShapedScenes` class with the classes (names, palette) of the dataset class ``real``."""
    return type(f"Synthetic{real.__name__}", (ShapedScenes,),
                {"CLASSES": tuple(real.CLASSES), "PALETTE": tuple(real.PALETTE), "__module__": __name__})


def synthetic_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    """The row's data module (its crop, batch, augmentation) over synthetic scenes of its dataset's shape."""
    height, width = cost.dataset_shape(cfg).image_size
    data = OmegaConf.to_container(cfg.data, resolve=True)
    images = max(SCENES_PER_SPLIT, 2 * int(data.get("batch_size") or 1), 2 * int(data.get("val_batch_size") or 1))
    factory = partial(scenes_like(cost.dataset_class(cfg)), num_images=images, height=height, width=width)
    return SegmentationDataModule(dataset=factory, seed=int(cfg.get("seed", 0)), **data)


# ------------------------------------------------------------------------------------------- device
def on_cuda() -> bool:
    return torch.cuda.is_available()


def smallest_training_batch(model: torch.nn.Module) -> int:
    """2 when a BatchNorm trained on a 1x1 pooled map (DeepLabv3's image-level branch) needs two values per
    channel, else 1."""
    from segexp.models.heads.pooling import PoolingBranch

    needs_two = any(isinstance(m, PoolingBranch) and m.bins == 1 and isinstance(m.bn, torch.nn.BatchNorm2d)
                    for m in model.modules())
    return 2 if needs_two else 1


def device_config(cfg: DictConfig, batch: int | None, train: bool = True) -> tuple[DictConfig, list[str]]:
    """``cfg`` on one device of the kind at hand (CPU: fp32), training with ``batch`` images per device if given
    (at least :func:`smallest_training_batch`); the changes in words."""
    cfg = cost.weightless(cfg)
    notes = []
    batch = (int(cfg.data.batch_size) if batch is None else batch) if train else None
    if batch is not None and batch < 2:
        smallest = smallest_training_batch(cost.meta_module(cfg).model)
        if batch < smallest:  # the row's own SyncBN over its processes has them; one process here does not
            notes.append(f"batch {smallest}, not {batch}: the image-level branch's BatchNorm needs two values on one "
                         "device")
            batch = smallest
    with open_dict(cfg):
        trainer = cfg.trainer
        world = world_size(cfg)
        if world is not None and world > 1 and train:
            notes.append(f"one of the row's {world} processes (per-device batch {cfg.data.batch_size}; SyncBN off)")
        trainer.devices, trainer.num_nodes, trainer.strategy, trainer.sync_batchnorm = 1, 1, "auto", False
        trainer.enable_model_summary = False
        if on_cuda():
            trainer.accelerator = "gpu"
        else:
            if str(trainer.get("precision")) != "32-true":
                notes.append(f"fp32 on the CPU (the row's {trainer.precision} needs a GPU)")
            trainer.accelerator, trainer.precision, trainer.benchmark = "cpu", "32-true", None
        if batch is not None and int(cfg.data.batch_size) != batch:
            notes.append(f"batch {batch} per device (the row's: {cfg.data.batch_size})")
            cfg.data.batch_size = batch
    return cfg, notes


class MemoryWatch:
    """Peak memory of the training and the evaluation phase of one dry run: CUDA's allocator peak above what was
    allocated at the start, or on a CPU the growth of resident memory (sampled every 2 ms) over the start."""

    INTERVAL_S = 0.002

    def __init__(self) -> None:
        self.cuda = on_cuda()
        self.peaks: dict[str, int] = {}
        self.phase = TRAIN
        self._stop = threading.Event()
        self._current = 0
        release_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = resident_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @property
    def kind(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS growth"

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._current = max(self._current, resident_bytes())
            time.sleep(self.INTERVAL_S)

    def close_phase(self) -> None:
        """End the current phase (recording its peak) and start the next one."""
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - self.base
            torch.cuda.reset_peak_memory_stats()
        else:
            self._current = max(self._current, resident_bytes())
            peak, self._current = self._current - self.base, 0
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), max(peak, 0))

    def switch(self, phase: str) -> None:
        if phase != self.phase:
            self.close_phase()
            self.phase = phase

    def stop(self) -> dict[str, int]:
        """The peak of each phase (bytes), the current one closed."""
        self.close_phase()
        self.halt()
        return self.peaks

    def halt(self) -> None:
        """Stop sampling (also after a failure)."""
        self._stop.set()


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    """Free what earlier rows left: Python garbage, CUDA's cache, glibc's free lists (so RSS growth is this row's)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PhaseTimer(pl.Callback):
    """Times every training and evaluation batch from its start (data loaded and on the device) to its end, with
    :class:`segexp.training.step_clock.StepClock` (CUDA events, read once at the end), and switches the memory phase."""

    def __init__(self, memory: MemoryWatch) -> None:
        from segexp.training.step_clock import StepClock

        device = torch.device("cuda" if memory.cuda else "cpu")
        self.memory = memory
        self.clocks = {TRAIN: StepClock(device), EVAL: StepClock(device)}

    def on_train_batch_start(self, *args: Any) -> None:
        self.memory.switch(TRAIN)
        self.clocks[TRAIN].mark()

    def on_train_batch_end(self, *args: Any) -> None:
        self.clocks[TRAIN].mark()

    def on_validation_batch_start(self, *args: Any) -> None:
        self.memory.switch(EVAL)
        self.clocks[EVAL].mark()

    def on_validation_batch_end(self, *args: Any) -> None:
        self.clocks[EVAL].mark()

    def seconds(self, phase: str) -> list[float]:
        """Seconds of each batch of ``phase`` (start-to-end intervals; the gaps between batches are dropped)."""
        return self.clocks[phase].intervals()[::2]


# ------------------------------------------------------------------------------------------- one row
def eval_text(cfg: DictConfig) -> str:
    """How the row evaluates: image size (its dataset's), padding, output stride, geometry, scales, flip."""
    inference = cfg.get("inference") or {}
    pad = inference.get("pad_to")
    try:
        height, width = cost.dataset_shape(cfg).image_size
        image = f"eval {height}x{width}"
    except ValueError:
        image = f"eval split {cfg.data.val_split}"
    stride = cfg.model.get("eval_output_stride") or cfg.backbone.get("output_stride", "?")
    return (image + (f" padded to {pad[0]}x{pad[1]}" if pad else "")
            + f", OS {stride}, {inference.get('mode', 'whole')}, scales {list(inference.get('scales', [1.0]))}, "
            f"flip {inference.get('flip', False)}, shift passes {inference.get('shift_passes', 1)}, batch "
            f"{cfg.data.val_batch_size}")


def setting_text(cfg: DictConfig, kind: str) -> str:
    """The shapes of a dry run in words (from the config alone, so a failure anywhere can say them): crop,
    batch, output stride, precision, device; the evaluation geometry."""
    device = "cuda" if on_cuda() else "cpu"
    crop = list(cfg.data.crop_size)
    head = (f"train crop {crop[0]}x{crop[1]}, batch {cfg.data.batch_size} per device, OS "
            f"{cfg.backbone.get('output_stride', '?')}" if kind == TRAIN else "eval-only")
    return f"{head}, {cfg.trainer.precision} on {device}; {eval_text(cfg)}"


@dataclass
class Outcome:
    """A dry run of one row: its record (written to disk) or its failure."""

    table: str
    row: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.record.get("ok"))


def run_config(job: Job, source: Job | None) -> DictConfig:
    """The config the row runs: its training config, or for an eval-only row what segexp-eval would run."""
    return cost.evaluated_config(job, source) if job.kind == EVAL else job.cfg


def measure(cfg: DictConfig, kind: str, memory: MemoryWatch) -> dict[str, Any]:
    """2 training steps + 2 evaluation batches (training rows) or 2 evaluation batches (eval-only rows) of
    ``cfg`` on the device at hand: batch times and peak memory per phase."""
    from segexp.training.build import build_module
    from segexp.training.harness import build_trainer

    pl.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    datamodule = synthetic_datamodule(cfg)
    module = build_module(cfg, datamodule)
    # Random weights under a frozen BatchNorm (FCRN, PRB) can overflow to a NaN loss: that says nothing about the
    # row's shapes, time or memory, so the dry run does not stop on it (a real run with its weights does).
    module._stop_if_non_finite = lambda: None
    timer = PhaseTimer(memory)
    if kind == EVAL:
        memory.switch(EVAL)
    with tempfile.TemporaryDirectory(prefix="segexp-dryrun-") as folder:
        trainer = build_trainer(cfg, Path(folder), [], [timer])
        if kind == TRAIN:
            trainer.fit(module, datamodule=datamodule)
        else:
            trainer.validate(module, datamodule=datamodule, verbose=False)
    peaks = memory.stop()
    return {"train_step_s": timer.seconds(TRAIN), "eval_batch_s": timer.seconds(EVAL),
            "train_peak_bytes": peaks.get(TRAIN) if kind == TRAIN else None, "eval_peak_bytes": peaks.get(EVAL)}


def rate_tflops(flops_per_image: int, images: int, seconds: Sequence[float]) -> float | None:
    """FLOP rate of the last (warm) batch in TFLOP/s."""
    return flops_per_image * images / seconds[-1] / 1e12 if seconds else None


def dry_run(spec: TableSpec, job: Job, source: Job | None, batch: int | None,
            seen: dict[tuple[str, str], dict[str, Any]] | None = None) -> Outcome:
    """Dry-run one planned row (seed 0) and write its record; a failure is recorded, not raised."""
    from segexp.tables.measure import current_device, device_name

    device = device_name(current_device())
    outcome = Outcome(spec.id, job.row.name)
    base = {"table": spec.id, "row": job.row.name, "kind": job.kind, "device": device,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    cfg = None
    try:
        planned = run_config(job, source)
        key = cost.shape_key(planned)
        cfg, notes = device_config(planned, batch, train=job.kind == TRAIN)
        model_cost = cost.model_cost(cfg)
        memo = (cost.shape_key(cfg), job.kind)  # what runs here: rows that differ only in a replaced batch are one
        if seen is not None and memo in seen:
            first = seen[memo]
            record = {**first, **base, "shape_key": key, "processes": world_size(planned),
                      "row_batch": int(planned.data.batch_size),
                      "notes": [*notes, f"measured once with {first['table']} {first['row']} (the same shapes here)"]}
        else:
            start = time.perf_counter()
            memory = MemoryWatch()
            try:
                measured = measure(cfg, job.kind, memory)
            finally:
                memory.halt()
            record = {
                **base, "ok": True, "shape_key": key, "settings": setting_text(cfg, job.kind),
                "notes": notes, "memory_kind": memory.kind, "precision": str(cfg.trainer.precision),
                "row_precision": str(planned.trainer.precision), "batch": int(cfg.data.batch_size),
                "row_batch": int(planned.data.batch_size), "val_batch": int(cfg.data.val_batch_size or 1),
                "processes": world_size(planned), "params": model_cost.params,
                "crop": list(model_cost.crop), "eval_image": list(model_cost.eval_image),
                "train_output_stride": model_cost.train_output_stride,
                "eval_output_stride": model_cost.eval_output_stride,
                "train_gflops_per_image": model_cost.train_flops / 1e9,
                "eval_gflops_per_image": model_cost.eval_flops / 1e9,
                **measured, "wall_s": round(time.perf_counter() - start, 2),
            }
            record["train_tflops_measured"] = rate_tflops(model_cost.train_flops, record["batch"],
                                                          record["train_step_s"]) if job.kind == TRAIN else None
            record["eval_tflops_measured"] = rate_tflops(model_cost.eval_flops, record["val_batch"],
                                                         record["eval_batch_s"])
            if seen is not None:
                seen[memo] = record
    except Exception as err:  # a row that breaks at its real shapes: reported with the row, the others go on
        where = setting_text(cfg, job.kind) if cfg is not None else "config"
        record = {**base, "ok": False, "settings": where, "error": error_text(err)}
    finally:
        release_memory()
    outcome.record = record
    path = cost.record_path(spec.id, job.row.name, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, record)
    return outcome


def error_text(err: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line (a message's lines joined by `` | ``), at most ``limit`` characters."""
    message = " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = f"{type(err).__name__}: {message}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def outcome_line(outcome: Outcome) -> str:
    """One line per row: its shapes and what it measured, or FAILED with the row, the shapes and the error."""
    r = outcome.record
    head = f"{outcome.table} {outcome.row}"
    if not outcome.ok:
        return f"FAILED {head} [{r.get('settings')}]: {r.get('error')}"
    gib = cost.GIB
    parts = [f"{head} [{r['settings']}]"]
    if r["kind"] == TRAIN:
        parts.append(f"step {r['train_step_s'][-1]:.3g} s, train peak {r['train_peak_bytes'] / gib:.2f} GiB, "
                     f"{r['train_gflops_per_image']:.1f} GFLOP/train image")
    if r["eval_batch_s"]:
        parts.append(f"eval batch {r['eval_batch_s'][-1]:.3g} s, eval peak {(r['eval_peak_bytes'] or 0) / gib:.2f} "
                     f"GiB, {r['eval_gflops_per_image']:.1f} GFLOP/evaluated image")
    parts += r.get("notes", [])
    return "; ".join(parts)


def dry_run_table(spec: TableSpec, rows: Sequence[str] | None, batch: int | None,
                  seen: dict[tuple[str, str], dict[str, Any]] | None = None,
                  quiet: bool = False) -> list[Outcome]:
    """Every row of ``spec`` (or ``rows``) under the ``dryrun`` profile, seed 0; rows the profile cannot plan
    are reported as failures with their reason."""
    from segexp.tables.runner import plan_table

    profile = load_profile(PROFILE)
    plan = plan_table(spec, profile, rows=rows, quiet=True)
    outcomes = [Outcome(spec.id, label.split("/")[0], {"ok": False, "settings": "planning", "error": error})
                for label, error in plan.planning.failed.items()]
    cluster = cost.cluster_rows_plan(spec, profile, plan)  # several-node rows: one of their processes here
    jobs = [*plan.trained.values(), *plan.evals]
    if cluster is not None:
        jobs += [j for j in [*cluster.trained.values(), *cluster.evals] if j.row.name in plan.planning.not_run]
    for job in jobs:
        trained = cluster.trained if cluster is not None and job.row.name in plan.planning.not_run else plan.trained
        source = trained.get((job.row.eval_of, 0)) if job.kind == EVAL else None
        outcome = dry_run(spec, job, source, batch, seen)
        outcomes.append(outcome)
        if not quiet:
            print(outcome_line(outcome), flush=True)
    return outcomes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segexp.tables.dryrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="table id (e.g. deeplabv3.t1), or 'all' for every ready table")
    parser.add_argument("--rows", help="comma-separated row names (default: all rows)")
    parser.add_argument("--batch", type=int, help="images per device instead of the row's (e.g. 1 on a CPU)")
    parser.add_argument("--json", type=Path, help="also write every row's record to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = [s for s in load_all() if s.ready] if args.table == "all" else [load_table(args.table)]
        rows = [r for r in args.rows.split(",") if r] if args.rows else None
        start = time.perf_counter()
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        outcomes = [o for spec in specs for o in dry_run_table(spec, rows, args.batch, seen, args.quiet)]
    except SpecError as err:
        print(f"segexp-dryrun: {err}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if not o.ok]
    print(f"\ndry run of {len(specs)} table(s): {len(outcomes)} rows, {len(failed)} failed, in "
          f"{time.perf_counter() - start:.0f} s; records in outputs/tables/<id>/dryrun/<row>/")
    for outcome in failed:
        print(f"  {outcome_line(outcome)}")
    if args.json is not None:
        atomic.write_json(args.json, {"rows": [o.record for o in outcomes]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
