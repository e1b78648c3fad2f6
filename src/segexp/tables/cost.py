"""What a table costs before it runs: FLOPs per training and evaluated image of every row, the runs x steps x
images they add up to, GPU-hours at a stated throughput, and peak memory per device against a GPU's capacity.

FLOPs are counted by torch's FLOP counter (one multiply-add = 2 FLOPs, as segexp-info and the benchmark count)
on the meta device: the row's own module is built there (no weights, no arithmetic), so counting a ResNet-101
at OS 8 takes about a second and needs no GPU.

- per training image: the network's training forward (:meth:`SegmentationModule.raw_outputs`: every input
  scale, fusion, auxiliary head and FCRN's four shifted passes) counted x3 (**forward + backward ~ 3 x
  forward**: the backward pass computes the gradients of both the activations and the weights, each costing
  about one forward), plus the loss counted once on real tensors of the crop (its label-side work, e.g. the
  blur of the boundary-aware loss, has no backward);
- per evaluated image: the row's inference (:class:`segexp.training.inference.Inference`: padding, every test
  scale, flips, sliding windows and shifted passes) at its evaluation output stride on one image of the
  dataset's size (:data:`DATASETS`).

Runs: a training row costs ``train FLOPs/image x effective batch x max_steps`` plus its validations during
training (``max_steps // val_check_interval``, one more at the end when the last step is not one) x the
images of the validation split; an eval-only row one pass over its split. Every seed repeats it all.
``GPU-hours = FLOPs / throughput / 3600``: the throughput is per device, either ``--tflops`` (the user's
sustained rate) or the rate the row's ``dryrun`` record measured on this device (:mod:`segexp.tables.dryrun`:
FLOPs of a step / its time); the output says which. Several devices divide the wall time, not the GPU-hours.

Memory per device comes only from a dry run (nothing else knows the allocator's peak). A record made at
another per-device batch (``--batch 1`` on a CPU) is scaled to the row's batch by the rule
``peak(b) = state + b x (measured peak - state) / measured batch``, with ``state`` = 12 bytes per parameter
(fp32 weights, gradients and SGD momentum); the largest batch that fits a ``--gpu-mem`` device follows from the
same line. A CPU record is fp32 resident memory (bf16 activations on a GPU take less), so it is an upper bound.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.flop_counter import FlopCounterMode

from segexp.tables.plan import EVAL, Job, effective_batch, world_size
from segexp.tables.spec import Profile, TableSpec
from segexp.tables.store import profile_dir, read_json

if TYPE_CHECKING:
    from segexp.tables.runner import TablePlan

GIB = 2**30
STATE_BYTES_PER_PARAM = 12
"""fp32 weights + their gradients + SGD momentum (every paper trains with momentum SGD)."""
BACKWARD_FACTOR = 3
"""forward + backward ~ 3 x forward (activation gradients ~ 1 forward, weight gradients ~ 1 forward)."""
DRYRUN_PROFILE = "dryrun"
RECORD_PREFIX = "dryrun-"


@dataclass(frozen=True)
class DatasetShape:
    """The image size a dataset's images are evaluated at (and dry runs synthesise) and its split sizes."""

    image_size: tuple[int, int]
    splits: dict[str, int]
    source: str


DATASETS: dict[str, DatasetShape] = {
    "VOC": DatasetShape((375, 500), {"train": 1464, "val": 1449, "trainval": 2913, "test": 1456},
                        "VOC 2012 images are at most 500x500, most 500x375 or 375x500 (HxW 375x500 here)"),
    "VOCAug": DatasetShape((375, 500), {"train_aug": 10582, "train": 10582, "val": 1449},
                           "VOC 2012 images (375x500 here); train_aug 10,582 with SBD"),
    "Cityscapes": DatasetShape((1024, 2048), {"train": 2975, "val": 500, "test": 1525, "train_extra": 19998},
                               "every Cityscapes image is 1024x2048"),
    "ADE20K": DatasetShape((512, 683), {"train": 20210, "training": 20210, "val": 2000, "validation": 2000},
                           "assumed: ADE20K images vary in size; 512x683 is a common one of the val set"),
    "COCOVOC": DatasetShape((480, 640), {"train2017": 118287, "train": 118287, "val2017": 5000, "val": 5000},
                            "COCO images are mostly 480x640; split sizes before the VOC-class filter (upper bounds)"),
    "CamVid": DatasetShape((360, 480), {"train": 367, "val": 101, "test": 233}, "every CamVid image is 360x480"),
}
"""By dataset class name: the size of the images evaluated and the number of images per split."""


def dataset_class(cfg: DictConfig) -> type:
    """The dataset class a config builds (imported, never instantiated: no files are read)."""
    return get_class(str(cfg.dataset._target_))


def dataset_shape(cfg: DictConfig) -> DatasetShape:
    """The :class:`DatasetShape` of the config's dataset; the synthetic scenes are their own size."""
    name = str(cfg.dataset._target_).rsplit(".", 1)[-1]
    if name == "SyntheticShapes":
        size = int(cfg.dataset.get("image_size", 128))
        count = int(cfg.dataset.get("num_images", 200))
        return DatasetShape((size, size), {}, f"{count} generated {size}x{size} scenes per split")
    if name not in DATASETS:
        raise ValueError(f"dataset {cfg.dataset._target_}: its image size and split sizes are not known to "
                         f"segexp.tables.cost.DATASETS (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def split_images(cfg: DictConfig, split: str) -> int:
    """Images of ``split`` (a union ``a+b`` sums its parts) of the config's dataset."""
    shape = dataset_shape(cfg)
    if not shape.splits:
        return int(cfg.dataset.get("num_images", 200)) * len(split.split("+"))
    total = 0
    for part in split.split("+"):
        if part not in shape.splits:
            raise ValueError(f"data split '{part}' of {cfg.dataset._target_}: size unknown to segexp.tables.cost."
                             f"DATASETS (known: {', '.join(shape.splits)})")
        total += shape.splits[part]
    return total


# ------------------------------------------------------------------------------------------- FLOP counts
def counted_flops(work: Callable[[], Any]) -> int:
    """FLOPs of the tensor operations ``work`` runs (torch's FlopCounterMode; a multiply-add is 2 FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return int(counter.get_total_flops())


def weightless(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` that reads no weight files (ImageNet weights, a head's fc6/fc7, ``init_from``): cost
    and shapes do not depend on the weights."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.backbone.pretrained = None
        cfg.model.init_from = None
        if "init_from" in cfg.head:
            cfg.head.init_from = None
    return cfg


def meta_module(cfg: DictConfig) -> Any:
    """The row's Lightning module with its network on the meta device (shapes, no data) and its loss on the CPU
    (a loss may compute constants when built, e.g. the boundary-aware loss's kernel; the loss is counted on real
    tensors). Built on the meta device directly, or where a part cannot be, on the CPU and then moved."""
    from segexp.training.build import build_datamodule, build_module

    cfg = weightless(cfg)
    datamodule = build_datamodule(cfg)  # a partial of the dataset class: nothing is read
    try:
        with torch.device("meta"):
            module = build_module(cfg, datamodule)
    except Exception:  # a part that computes on its tensors when built
        module = build_module(cfg, datamodule)
    module.model.to("meta")
    module.loss = instantiate(cfg.loss)  # the same class: the module's loss_takes_batch still holds
    return module


@dataclass(frozen=True)
class ModelCost:
    """FLOPs per training and per evaluated image of one configuration, and its parameter count."""

    train_flops: int
    eval_flops: int
    params: int
    crop: tuple[int, int]
    eval_image: tuple[int, int]
    train_output_stride: int
    eval_output_stride: int


def training_flops(module: Any, crop: tuple[int, int]) -> int:
    """Per training image: 3 x the training forward + the loss once (see the module docstring). Counted on
    two images (BatchNorm of a 1x1 pooled map needs two values per channel in training mode) and halved."""
    module.train()
    images = torch.zeros(2, 3, *crop, device="meta")
    with torch.no_grad():
        outputs = {}
        forward = counted_flops(lambda: outputs.update(module.raw_outputs(images)))
    weights = module.model.loss_weights
    batch = {"image": torch.zeros(1, 3, *crop), "label": torch.zeros(1, *crop, dtype=torch.long)}
    loss = 0
    for name, logits in outputs.items():
        if weights.get(name, 0.0) != 0.0:
            real = torch.randn(1, *logits.shape[1:])
            loss += counted_flops(lambda real=real: module.output_loss(real, batch))
    return BACKWARD_FACTOR * forward // 2 + loss


def evaluation_flops(module: Any, image: tuple[int, int], eval_stride: int | None) -> int:
    """Per evaluated image: the row's inference (padding, scales, flips, windows, shifted passes) at its
    evaluation output stride on one ``image``-sized image."""
    module.eval()
    trained = module.model.output_stride
    if eval_stride is not None:
        module.model.set_output_stride(int(eval_stride))
    try:
        with torch.no_grad():
            return counted_flops(lambda: module.inference(module.model, torch.zeros(1, 3, *image, device="meta")))
    finally:
        module.model.set_output_stride(trained)


COST_KEYS = ("backbone", "block", "head", "aux_head", "fusion", "model", "loss", "inference", "dataset._target_",
             "data.crop_size", "data.val_split", "data.batch_size", "data.val_batch_size", "trainer.precision")
"""What the FLOPs and the memory of a row depend on (its shape key)."""


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def shape_key(cfg: DictConfig) -> str:
    """16 hex digits identifying what the cost of ``cfg`` depends on (:data:`COST_KEYS`; weight files and
    ``init_from`` left out): equal keys, equal FLOPs and memory; a dry-run record of another key is stale."""
    cfg = weightless(cfg)
    plain = {key: _select(cfg, key) for key in COST_KEYS}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


_COSTS: dict[str, ModelCost] = {}


def model_cost(cfg: DictConfig) -> ModelCost:
    """:class:`ModelCost` of a (training or evaluated) config, counted once per shape key per process."""
    key = shape_key(cfg)
    if key not in _COSTS:
        module = meta_module(cfg)
        crop = (int(cfg.data.crop_size[0]), int(cfg.data.crop_size[1]))
        image = dataset_shape(cfg).image_size
        eval_stride = cfg.model.get("eval_output_stride")
        _COSTS[key] = ModelCost(
            train_flops=training_flops(module, crop),
            eval_flops=evaluation_flops(module, image, eval_stride),
            params=sum(p.numel() for p in module.model.parameters()),
            crop=crop, eval_image=image, train_output_stride=int(module.model.output_stride),
            eval_output_stride=int(eval_stride or module.model.output_stride))
    return _COSTS[key]


def evaluated_config(job: Job, source: Job) -> DictConfig:
    """What segexp-eval runs for an eval-only row: the source row's training config with the row's evaluation
    choices applied (:func:`segexp.cli.evaluate.run_config`, the same function)."""
    from segexp.training.build import plain_config
    from segexp.training.eval_settings import run_config

    return run_config(job.cfg, plain_config(weightless(source.cfg)))


CLUSTER_LAUNCHER = "submitit_slurm"


def cluster_rows_plan(spec: TableSpec, profile: Profile, plan: TablePlan, seeds: int = 1,
                      extra: Sequence[str] = ()) -> TablePlan | None:
    """The plan of the runnable rows that ``plan``'s launcher cannot start (several nodes need a cluster launcher),
    as under :data:`CLUSTER_LAUNCHER`, so that costs and dry runs cover every row; None when there are none."""
    from segexp.tables.runner import plan_table

    skipped = [name for name in plan.planning.not_run if spec.row(name).runnable]
    if not skipped:
        return None
    return plan_table(spec, profile, seeds=seeds, rows=skipped, launcher=CLUSTER_LAUNCHER, extra=extra, quiet=True)


# ------------------------------------------------------------------------------------------- runs x images
def validations(cfg: DictConfig) -> int:
    """Validations of a training run: every ``val_check_interval`` steps, and once more at the end when the last
    step is not one (segexp-train validates the final weights); none with ``limit_val_batches=0``."""
    trainer = cfg.trainer
    steps = int(trainer.max_steps)
    if trainer.get("limit_val_batches") == 0:
        return 0
    interval = trainer.get("val_check_interval")
    if not isinstance(interval, int) or interval <= 0:
        return 1  # per epoch or a fraction of one: counted as the final validation only
    return steps // interval + (1 if steps % interval else 0)


def images_per_evaluation(cfg: DictConfig, world: int = 1) -> int:
    """Images one evaluation scores: the validation split, cut by ``data.val_limit`` and ``limit_val_batches``."""
    images = split_images(cfg, str(cfg.data.val_split))
    limit = cfg.data.get("val_limit")
    if limit is not None:
        images = min(images, int(limit))
    batches = cfg.trainer.get("limit_val_batches")
    if isinstance(batches, int) and not isinstance(batches, bool):
        images = min(images, batches * int(cfg.data.val_batch_size or 1) * world)
    elif isinstance(batches, float):
        images = math.ceil(images * batches)
    return images


# ------------------------------------------------------------------------------------------- dry-run records
def record_path(table_id: str, row: str, device: str) -> Path:
    """``outputs/tables/<id>/dryrun/<row>/dryrun-<device>.json``: a row's dry run on one kind of device."""
    slug = "".join(c if c.isalnum() else "_" for c in device).strip("_") or "device"
    return profile_dir(table_id, DRYRUN_PROFILE) / row / f"{RECORD_PREFIX}{slug}.json"


def read_record(table_id: str, row: str, device: str) -> dict[str, Any] | None:
    record = read_json(record_path(table_id, row, device))
    return record if record and record.get("ok") else None


# ------------------------------------------------------------------------------------------- rates, memory
@dataclass(frozen=True)
class Rate:
    """Sustained FLOP/s per device for training and for evaluation, and where they come from."""

    train: float | None
    eval: float | None
    source: str


def given_rate(tflops: float) -> Rate:
    if tflops <= 0:
        raise ValueError(f"--tflops must be positive, got {tflops}")
    return Rate(tflops * 1e12, tflops * 1e12, f"--tflops {tflops:g}")


def measured_rate(record: dict[str, Any] | None) -> Rate:
    """The rates a dry run measured (FLOPs of a step / its time), or none."""
    if record is None:
        return Rate(None, None, "none (give --tflops or dry-run the row)")
    train = record.get("train_tflops_measured")
    evaluation = record.get("eval_tflops_measured")
    return Rate(train * 1e12 if train else None, evaluation * 1e12 if evaluation else None,
                f"dry run on {record['device']} ({record['precision']}, batch {record['batch']})")


def memory_at_batch(peak: float, measured_batch: int, params: int, batch: int) -> float:
    """Bytes at ``batch`` from a peak measured at ``measured_batch`` (module docstring's linear rule)."""
    state = STATE_BYTES_PER_PARAM * params
    if batch == measured_batch:
        return peak
    return state + batch * max(peak - state, 0.0) / measured_batch


def largest_batch(peak: float, measured_batch: int, params: int, capacity: float) -> int | None:
    """The largest per-device batch whose memory (the same rule) fits ``capacity`` bytes; None if unbounded."""
    state = STATE_BYTES_PER_PARAM * params
    per_image = max(peak - state, 0.0) / measured_batch
    if per_image == 0:
        return None
    return max(0, math.floor((capacity - state) / per_image))


# ------------------------------------------------------------------------------------------- per row
@dataclass
class RowCost:
    """The cost of one row over all its seeds."""

    table: str
    row: str
    kind: str
    seeds: int
    processes: int | None
    per_device_batch: int | None
    effective_batch: int | None
    steps: int
    train_gflops_per_image: float
    eval_gflops_per_image: float
    validations: int
    eval_images: int
    train_pflops: float
    eval_pflops: float
    gpu_hours: float | None
    rate_source: str
    peak_gib: float | None = None
    memory_source: str = "not measured (dry-run the row on a GPU)"
    fits: bool | None = None
    max_batch: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pflops(self) -> float:
        return self.train_pflops + self.eval_pflops


def _hours(flops: float, rate: float | None) -> float | None:
    if flops == 0:
        return 0.0
    return None if not rate else flops / rate / 3600


def job_cost(spec: TableSpec, job: Job, source: Job | None, seeds: int, rate: Rate | None, gpu_mem_gib: float,
             device: str) -> RowCost:
    """The :class:`RowCost` of one planned job (``source``: the trained job an eval-only row evaluates) over
    ``seeds``; ``rate`` None: the row's dry-run record on ``device``."""
    train_cfg = source.cfg if job.kind == EVAL else job.cfg
    cfg = evaluated_config(job, source) if job.kind == EVAL else job.cfg
    cost = model_cost(cfg)
    world = world_size(train_cfg)
    if job.kind == EVAL:
        steps, runs, batch, per_device = 0, 1, None, None
        images = images_per_evaluation(cfg)
    else:
        steps, runs = int(cfg.trainer.max_steps), validations(cfg)
        batch, per_device = effective_batch(cfg), int(cfg.data.batch_size)
        images = runs * images_per_evaluation(cfg, world or 1)
    train_flops = seeds * cost.train_flops * (batch or 0) * steps
    eval_flops = seeds * cost.eval_flops * images
    record = read_record(spec.id, job.row.name, device)
    notes = []
    if record is not None and record.get("shape_key") != shape_key(cfg):
        notes.append(f"dry-run record {record_path(spec.id, job.row.name, device)} was made for another config: "
                     "not used (rerun the dry run)")
        record = None
    used = rate or measured_rate(record)
    hours = [_hours(train_flops, used.train), _hours(eval_flops, used.eval)]
    row = RowCost(
        table=spec.id, row=job.row.name, kind=job.kind, seeds=seeds, processes=world, per_device_batch=per_device,
        effective_batch=batch, steps=steps, train_gflops_per_image=cost.train_flops / 1e9,
        eval_gflops_per_image=cost.eval_flops / 1e9, validations=runs if job.kind != EVAL else 1,
        eval_images=images, train_pflops=train_flops / 1e15, eval_pflops=eval_flops / 1e15,
        gpu_hours=None if None in hours else sum(hours), rate_source=used.source, notes=notes)
    if record is not None:
        add_memory(row, record, cost.params, per_device, gpu_mem_gib * GIB)
    return row


def add_memory(row: RowCost, record: dict[str, Any], params: int, per_device: int | None, capacity: float) -> None:
    """Peak memory per device at the row's per-device batch from a dry-run ``record``; fits ``capacity``?"""
    measured = int(record["batch"])
    train_peak = record.get("train_peak_bytes")
    eval_peak = float(record.get("eval_peak_bytes") or 0.0)
    peak = eval_peak
    if train_peak is not None and per_device is not None:
        peak = max(memory_at_batch(float(train_peak), measured, params, per_device), eval_peak)
        if peak > capacity:
            row.max_batch = largest_batch(float(train_peak), measured, params, capacity)
    row.peak_gib = peak / GIB
    row.fits = peak <= capacity
    where = f"{record['memory_kind']} on {record['device']}, {record['precision']}"
    if per_device is None:  # an eval-only row: its evaluation batch
        row.memory_source = f"{where}, eval batch {record.get('val_batch', 1)}"
    else:
        row.memory_source = f"{where}, batch {measured}" + (f", scaled to {per_device}" if per_device != measured
                                                            else "")


# ------------------------------------------------------------------------------------------- totals, output
@dataclass
class TableCost:
    table: str
    rows: list[RowCost]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def pflops(self) -> float:
        return sum(r.pflops for r in self.rows)

    @property
    def gpu_hours(self) -> float | None:
        hours = [r.gpu_hours for r in self.rows]
        return None if not hours or None in hours else sum(hours)

    @property
    def too_big(self) -> list[str]:
        return [r.row for r in self.rows if r.fits is False]


def table_cost(spec: TableSpec, plan: TablePlan, seeds: int, rate: Rate | None, gpu_mem_gib: float,
               device: str) -> TableCost:
    """Every planned row of ``plan``, seed 0's job counted ``seeds``
    times; a row whose cost cannot be computed is listed in ``failed``."""
    result = TableCost(spec.id, [], dict(plan.planning.failed))
    for job in [*plan.trained.values(), *plan.evals]:
        if job.seed != 0:
            continue
        source = plan.trained.get((job.row.eval_of, 0)) if job.kind == EVAL else None
        try:
            result.rows.append(job_cost(spec, job, source, seeds, rate, gpu_mem_gib, device))
        except Exception as err:  # one row's problem is reported with the row, the others are still costed
            result.failed[job.label] = f"cost: {type(err).__name__}: {err}"
    return result


CSV_FIELDS = ("table", "row", "kind", "seeds", "processes", "per_device_batch", "effective_batch", "steps",
              "train_gflops_per_image", "eval_gflops_per_image", "validations", "eval_images", "train_pflops",
              "eval_pflops", "gpu_hours", "rate_source", "peak_gib", "memory_source", "fits", "max_batch")


def csv_text(tables: Iterable[TableCost]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            writer.writerow(asdict(row))
    return out.getvalue()


def json_payload(tables: Sequence[TableCost], gpu_mem_gib: float, device: str, node_gpus: int) -> dict[str, Any]:
    """Per table its rows and totals, and the grand total (GPU-hours None where a row has no rate)."""
    hours = [t.gpu_hours for t in tables]
    total = None if None in hours else sum(hours)
    return {
        "gpu_mem_gib": gpu_mem_gib, "device": device, "backward_factor": BACKWARD_FACTOR,
        "state_bytes_per_param": STATE_BYTES_PER_PARAM,
        "tables": [{"table": t.table, "pflops": t.pflops, "gpu_hours": t.gpu_hours,
                    "node_hours": None if t.gpu_hours is None else t.gpu_hours / node_gpus,
                    "too_big_for_gpu_mem": t.too_big, "failed": t.failed, "rows": [asdict(r) for r in t.rows]}
                   for t in tables],
        "total": {"pflops": sum(t.pflops for t in tables), "gpu_hours": total, "node_gpus": node_gpus,
                  "node_hours": None if total is None else total / node_gpus},
    }


def write_outputs(tables: Sequence[TableCost], csv_path: Path | None, json_path: Path | None, gpu_mem_gib: float,
                  device: str, node_gpus: int) -> list[Path]:
    written = []
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(csv_text(tables))
        written.append(csv_path)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(json_payload(tables, gpu_mem_gib, device, node_gpus), indent=2) + "\n")
        written.append(json_path)
    return written
