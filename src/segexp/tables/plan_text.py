"""What ``segexp-table plan`` prints: a table's protocol card, the runs a profile would start (training and
evaluation, device kind, processes, precision, batch, iterations, evaluation geometry) and each row's composed
card, with the settings that deviate from the paper or contradict the card; then what the runs cost (FLOPs,
GPU-hours, peak memory per device: :mod:`segexp.tables.cost`). Nothing is run."""

from __future__ import annotations

from typing import Any

from segexp.tables.card import CardLine, card_table, format_value, is_eval_key, setting_of, statement_lines
from segexp.tables.cost import RowCost, TableCost
from segexp.tables.paths import display_path
from segexp.tables.plan import EVAL, Job, effective_batch, world_size
from segexp.tables.runner import TablePlan
from segexp.tables.spec import Card, Profile, TableSpec


def _values(job: Job) -> dict[str, Any]:
    return {line.key: line.composed for line in job.card}


def devices_text(job: Job) -> str:
    """``gpu x 8 devices x 2 nodes = 16 processes, bf16-mixed`` (the composed trainer)."""
    trainer = job.cfg.trainer if job.cfg is not None else None
    if trainer is None:
        return "trainer unknown"
    world = world_size(job.cfg)
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    processes = "processes known on the GPU machine" if world is None else f"{world} process(es)"
    return (f"{trainer.get('accelerator')} x {devices} device(s) x {nodes} node(s) = {processes}, "
            f"{trainer.get('precision')}")


def eval_text(values: dict[str, Any], trained_stride: Any, shift_passes: Any = None) -> str:
    """How the scores are computed: output stride (a change is the hole algorithm), geometry, scales, flip."""
    stride = values.get("model.eval_output_stride")
    if stride is None:
        stride_text = f"OS {trained_stride}"
    else:
        stride_text = (f"OS {stride} (the OS-{trained_stride} weights; strides removed by the hole algorithm: the "
                       "unit that held the stride keeps its rate, later convs are dilated)")
    pad = values.get("inference.pad_to")
    geometry = values.get("inference.mode", "whole") + (f", padded to {format_value(pad)}" if pad else "")
    if shift_passes not in (None, 1):
        geometry += f", {shift_passes}x2 shifted passes (scores at half the output stride, FCRN Sec. 3.2)"
    return (f"eval {stride_text}, {geometry}, scales {format_value(values.get('inference.scales'))}, "
            f"flip {format_value(values.get('inference.flip'))}")


def job_lines(job: Job) -> list[str]:
    values = _values(job)
    trained_stride = values.get("backbone.output_stride")
    head = f"  {job.label:<24} {job.kind:<5}"
    if job.kind == EVAL:
        head += f" of {job.row.eval_of}"
        shift = job.cfg.inference.get("shift_passes") if job.cfg is not None and job.cfg.get("inference") else None
        lines = [f"{head}: {devices_text(job)}", f"      {eval_text(values, trained_stride, shift)}"]
    else:
        batch = effective_batch(job.cfg) if job.cfg is not None else None
        steps = job.cfg.trainer.max_steps if job.cfg is not None else "?"
        lines = [f"{head}: {devices_text(job)}, effective batch {batch}, {steps} steps, OS {trained_stride}",
                 f"      validation: {eval_text(values, trained_stride)}"]
    lines.append(f"      -> {display_path(job.run_dir)}")
    return lines


def row_card_lines(lines: tuple[CardLine, ...], table_card: Card) -> list[str]:
    """The keys of a row's composed card that are not simply the card's value (:meth:`CardLine.status`); a
    deviation the table's card states already (listed above the runs) is not repeated per row."""
    return [f"      {line.setting:<22} {line.key:<28} {format_value(line.composed):<16} {line.status()}"
            for line in lines if line.status() is not None
            and not (line.entry is not None and line.entry.deviates and table_card.get(line.key) == line.entry)]


def plan_text(spec: TableSpec, profile: Profile, plan: TablePlan) -> list[str]:
    jobs = [*plan.trained.values(), *plan.evals]
    card = spec.protocol.card
    text = [f"{spec.id} [{profile.name}]: {spec.title}", f"profile {profile.name}: {profile.description}", "",
            f"Protocol card ({display_path(spec.path)} over {spec.paper}/card.yaml; `full` composes these values):"]
    text += [f"  {line}" for line in card_table(card)] if card else ["  (no card: this table states no protocol)"]
    text += [f"  {line}" if line else "" for line in statement_lines(spec.protocol.statements)]
    deviations = [(k, e) for k, e in card.items() if e.deviates]
    text += ["", f"Differs from the paper ({len(deviations)} stated choices):"]
    text += [f"  {setting_of(k)} ({k}): {format_value(e.value)}, paper {format_value(e.paper)}: {e.source}"
             for k, e in deviations] or ["  nothing"]
    trains = sum(job.kind != EVAL for job in jobs)
    text += ["", f"Runs ({trains} training, {len(jobs) - trains} evaluation):"]
    for job in jobs:
        text += job_lines(job)
        own = [line for line in job.card if job.kind != EVAL or is_eval_key(line.key)]  # the rest: its source's
        text += row_card_lines(tuple(own), card)
        row_statements = spec.protocol_of(job.row).statements
        text += [f"      stated: {name}: {said}" for name, said in row_statements.items()
                 if spec.protocol.statements.get(name) != said]
    for label, error in plan.planning.failed.items():
        text.append(f"  {label:<24} cannot run: {error}")
    for row, note in plan.planning.not_run.items():
        text.append(f"  {row:<24} not run: {note}")
    problems = [f"  {job.label}: {p}" for job in jobs for p in job.card_problems]
    verdict = "refuses" if profile.check_protocol else "would not check (check_protocol: false)"
    text += ["", f"Contradictions of the card ({len(problems)}; `run` {verdict} them):", *(problems or ["  none"])]
    return text


# ------------------------------------------------------------------------------------------- cost
def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fit(row: RowCost) -> str:
    if row.fits is None:
        return "not measured"
    if row.fits:
        return "fits"
    return "DOES NOT FIT" + (f" (max batch {row.max_batch})" if row.max_batch is not None else "")


COST_HEADER = (f"  {'row':<24} {'kind':<5} {'seeds':>5} {'procs':>5} {'b/dev':>5} {'batch':>5} {'steps':>6} "
               f"{'GF/train im':>11} {'GF/eval im':>10} {'eval ims':>9} {'PFLOP':>9} {'GPU-h':>8} {'peak GiB':>8}"
               "  memory")
"""b/dev: images per device; batch: the effective batch; GF: GFLOPs; peak GiB: per device (dry run)."""


def cost_row_line(row: RowCost) -> str:
    batch = "-" if row.effective_batch is None else str(row.effective_batch)
    per_device = "-" if row.per_device_batch is None else str(row.per_device_batch)
    train = "-" if row.kind == EVAL else f"{row.train_gflops_per_image:,.1f}"
    return (f"  {row.row:<24} {row.kind:<5} {row.seeds:>5} {row.processes or '?':>5} {per_device:>5} {batch:>5} "
            f"{row.steps:>6} "
            f"{train:>11} {row.eval_gflops_per_image:>10,.1f} {row.eval_images:>9,} {row.pflops:>9,.1f} "
            f"{_number(row.gpu_hours, 2):>8} {_number(row.peak_gib):>8}  {_fit(row)}")


def rate_lines(rows: list[RowCost]) -> list[str]:
    """Where each row's throughput and memory come from (grouped: one line per source)."""
    sources: dict[str, list[str]] = {}
    for row in rows:
        sources.setdefault(row.rate_source, []).append(row.row)
    lines = [f"  throughput: {source}" + ("" if len(sources) == 1 else f" ({', '.join(names)})")
             for source, names in sources.items()]
    lines += [f"  memory of {row.row}: {row.memory_source}" for row in rows if row.peak_gib is not None]
    lines += [f"  note {row.row}: {note}" for row in rows for note in row.notes]
    return lines


def cost_text(table: TableCost, gpu_mem_gib: float, node_gpus: int) -> list[str]:
    """The cost section of ``segexp-table plan``: per row FLOPs, runs, GPU-hours and peak memory, then the total."""
    rule = (f"training: 3 x forward FLOPs (forward + backward) x effective batch x steps, + validations x val images "
            f"x FLOPs per evaluated image; all seeds; memory per device against --gpu-mem {gpu_mem_gib:g} GiB")
    text = ["", f"Cost ({rule}):", COST_HEADER, *(cost_row_line(r) for r in table.rows)]
    text += [f"  {label:<24} cost unknown: {error}" for label, error in table.failed.items()]
    text += rate_lines(table.rows)
    text.append(total_line(table.table, table.pflops, table.gpu_hours, node_gpus, table.too_big))
    return text


def total_line(name: str, pflops: float, gpu_hours: float | None, node_gpus: int, too_big: list[str]) -> str:
    hours = ("GPU-hours unknown (no rate for some rows: give --tflops)" if gpu_hours is None else
             f"{gpu_hours:,.1f} GPU-hours = {gpu_hours / node_gpus:,.1f} h on one {node_gpus}-GPU node")
    memory = f"; over --gpu-mem: {', '.join(too_big)}" if too_big else ""
    return f"  total {name}: {pflops:,.1f} PFLOP, {hours}{memory}"


def all_cost_text(tables: list[TableCost], gpu_mem_gib: float, node_gpus: int) -> list[str]:
    """``segexp-table plan all``: one line per table, the rows that do not fit, and the grand total."""
    text = [f"{'table':<16} {'rows':>4} {'PFLOP':>10} {'GPU-h':>9} {f'{node_gpus}-GPU node h':>14}  "
            f"over {gpu_mem_gib:g} GiB"]
    for table in tables:
        hours = table.gpu_hours
        node = None if hours is None else hours / node_gpus
        measured = sum(r.fits is not None for r in table.rows)
        memory = ", ".join(table.too_big) or (f"none of {measured}/{len(table.rows)} rows measured" if measured
                                              else "not measured")
        failed = f"  ({len(table.failed)} rows not costed)" if table.failed else ""
        text.append(f"{table.table:<16} {len(table.rows):>4} {table.pflops:>10,.1f} {_number(hours):>9} "
                    f"{_number(node):>14}  {memory}{failed}")
    hours = [t.gpu_hours for t in tables]
    total = None if None in hours else sum(hours)
    text.append(total_line("all", sum(t.pflops for t in tables), total, node_gpus,
                           [f"{t.table}:{r}" for t in tables for r in t.too_big]))
    sources = sorted({r.rate_source for t in tables for r in t.rows})
    text += [f"  throughput: {source}" for source in sources]
    return text
