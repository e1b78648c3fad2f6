"""``segexp-table run``: run a table's rows (x seeds) as ONE Hydra multirun of segexp-train per stage, then
its eval-only rows as one multirun of segexp-eval, then the model-size/speed measurements.

Stages: rows that start from another row's ``last.ckpt`` (``init_from``: COCO pretraining -> VOC fine-tuning
-> the second stage of DeepLabv3 Sec. 4.3) run in a later multirun than that row, planned once its
checkpoint exists; a table without ``init_from`` is one stage.

Each row is a generated config ``<profile dir>/.table_rows/table_row/<row>/seed<k>.yaml`` (its final
overrides as a ``# @package _global_`` file) put on Hydra's search path, so one command line covers
every row: ``python -m segexp.cli.train -m +table_row=a/seed0,b/seed0 hydra.sweep.subdir=<choice>`` (the commands,
their logs and the reading of a failed job are :mod:`segexp.tables.launch`).
Hydra's basic launcher runs every job and raises at the end when one failed, so a failing row does not
stop the others. Each job's outcome is read from its folder: ``metrics.json`` when it finished, else the
``job_status.json`` that Hydra's job callback (:mod:`segexp.cli.job_status`) wrote with the job's error.
Before launching, a row whose folder holds a ``metrics.json`` written under the same config hash
(``table_row.json``) is skipped, so a re-run after an interruption runs only what is missing (and resumes
a killed row from its ``last.ckpt``). Distributed rows run as their own process (see
:func:`segexp.tables.plan.needs_own_process`), except under a submitit launcher, where each row's sweep
asks for one task per DDP rank (see :func:`sweep_groups`).

Targets: the spec's and profile's overrides are checked when they are loaded and each row's composed config when
it is planned (:func:`segexp.tables.plan.plan_train_job`); a refused ``_target_`` refuses the whole table, naming
the spec file and row. ``--trust-targets`` (``SEGEXP_TRUST_TARGETS=1``) lifts that, here and in the segexp-train /
segexp-eval processes started, which inherit the environment.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexp import atomic
from segexp.tables.launch import (
    Launch,
    failure_reason,
    job_launcher_overrides,
    run_logged,
    single_command,
    sweep_command,
    sweep_groups,
    sweep_log_name,
)
from segexp.tables.lock import table_lock
from segexp.tables.paths import display_path
from segexp.tables.plan import (
    EVAL,
    TRAIN,
    Job,
    NotRunUnderProfile,
    last_checkpoint,
    plan_eval_job,
    plan_train_job,
    row_file_text,
    split_hydra,
)
from segexp.tables.pruning import prune_checkpoints, prune_policy
from segexp.tables.spec import Profile, Row, TableSpec, with_extra_settings
from segexp.tables.store import (
    ERROR_FILE,
    JOB_STATUS_FILE,
    METRICS_FILE,
    NOT_RUN_FILE,
    TABLE_ROW_FILE,
    profile_dir,
    read_json,
)
from segexp.tables.yaml_reader import SpecError
from segexp.targets import UntrustedTargetError, check_override_targets
from segexp.training.checkpoints import checkpoint_candidates
from segexp.training.run_files import set_aside

RESUMABLE_ERRORS = ("KeyboardInterrupt", "Preempted")
"""error.json errors after which a row resumes from last.ckpt instead of starting over."""




@dataclass
class RunResult:
    """What one ``segexp-table run`` did, by job label ``<row>/seed<k>``."""

    table: str
    profile: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    measured: list[str] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def job_record(job: Job) -> dict[str, Any]:
    return read_json(job.run_dir / TABLE_ROW_FILE) or {}


def same_config(job: Job) -> bool:
    """The run folder's record was written for this job's config: its identity hash, or the whole-config hash of a
    row finished before identities (:func:`segexp.tables.plan.legacy_config_hash`)."""
    recorded = job_record(job).get("config_hash")
    return recorded is not None and recorded in (job.config_hash, job.legacy_hash)


def is_done(job: Job) -> bool:
    """metrics.json exists and was produced under this job's config."""
    return (job.run_dir / METRICS_FILE).is_file() and same_config(job)


def can_resume(job: Job) -> bool:
    """A killed or pre-empted training row of the same config with a checkpoint continues from the newest
    intact one (``ckpt_path=last``, :func:`segexp.training.checkpoints.newest_intact_checkpoint`)."""
    if job.kind != TRAIN or not same_config(job):
        return False
    error = (read_json(job.run_dir / ERROR_FILE) or {}).get("error")
    return bool(checkpoint_candidates(job.run_dir)) and (error is None or error.startswith(RESUMABLE_ERRORS))


def prepare(job: Job, spec: TableSpec, profile: Profile, rows_dir: Path, prune: list[str]) -> None:
    """Set old results aside (never deleted) and write the row config and ``table_row.json``."""
    resume = can_resume(job)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    set_aside(job.run_dir, [METRICS_FILE, ERROR_FILE, JOB_STATUS_FILE])
    values: dict[str, Any] = {"seed": job.seed}
    if resume:
        values["ckpt_path"] = "last"
    row_file = rows_dir / "table_row" / job.row.name / f"seed{job.seed}.yaml"
    row_file.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(row_file, row_file_text(job.overrides, values))
    atomic.write_json(job.run_dir / TABLE_ROW_FILE, {
        "table": spec.id, "profile": profile.name, "row": job.row.name, "seed": job.seed, "kind": job.kind,
        "config_hash": job.config_hash, "overrides": list(job.overrides), "extra": list(profile.extra),
        "resumed": resume,
        "warnings": list(job.warnings), "prune": prune,
        "source": str(job.source_dir) if job.source_dir else None,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })














def collect(jobs: Sequence[Job], code: int, log: Path, result: RunResult) -> None:
    """Sort launched jobs into ``ran`` and ``failed`` (with :func:`failure_reason` and the launch's log)."""
    for job in jobs:
        if is_done(job):
            result.ran.append(job.label)
        else:
            result.failed[job.label] = f"{failure_reason(job.run_dir, code)} (log: {display_path(log)})"








def launch(kind: str, jobs: Sequence[Job], how: Launch, result: RunResult) -> None:
    """The sweep(s) of the in-process jobs (one per launcher resource group), then each own-process job."""
    for resources, group in sweep_groups([j for j in jobs if not j.own_process], how.hydra_extra):
        log = how.log(sweep_log_name(kind, resources))
        command = sweep_command(kind, group, how.base_dir, how.rows_dir, how.launcher, [*resources, *how.hydra_extra])
        collect(group, run_logged(command, log, how.quiet), log, result)
    for job in (j for j in jobs if j.own_process):
        log = how.log(f"{kind}-{job.row.name}-seed{job.seed}")
        collect([job], run_logged(single_command(job, how.rows_dir, how.hydra_extra), log, how.quiet), log, result)


def select_rows(spec: TableSpec, names: Sequence[str] | None) -> list[Row]:
    """The requested rows (all by default) plus the rows whose checkpoints they need, transitively."""
    wanted = {r.name for r in ([spec.row(n) for n in names] if names else spec.rows)}
    pending = list(wanted)
    while pending:
        row = spec.row(pending.pop())
        if row.runnable and row.source is not None and row.source not in wanted:
            wanted.add(row.source)
            pending.append(row.source)
    return [r for r in spec.rows if r.name in wanted]


def training_stages(rows: Sequence[Row]) -> list[list[Row]]:
    """Runnable training rows in launch order: stage 0 needs no checkpoint, stage k+1 starts from a row of
    stage k (``init_from``); each stage is one multirun."""
    trainable = [r for r in rows if r.runnable and not r.is_eval]
    stages: list[list[Row]] = []
    placed: set[str] = set()
    while len(placed) < len(trainable):
        stage = [r for r in trainable if r.name not in placed and (r.init_from is None or r.init_from in placed)]
        if not stage:  # unreachable for validated specs (no cycles, sources selected)
            raise SpecError(f"rows {[r.name for r in trainable if r.name not in placed]}: init_from cannot be ordered")
        stages.append(stage)
        placed.update(r.name for r in stage)
    return stages


Trained = dict[tuple[str, int], Job]


def plan_stage(spec: TableSpec, rows: Sequence[Row], profile: Profile, seeds: int, base_dir: Path,
               extra: Sequence[str], launcher: str | None, trained: Trained, result: RunResult,
               planned: Trained | None = None) -> Trained:
    """Plan one stage's training jobs; a row that cannot run is recorded (not run / failed), the others go on.
    A job in ``planned`` of a row without ``init_from`` is reused: nothing its hash covers has changed since."""
    jobs = {}
    for row in rows:
        for seed in range(seeds):
            label = f"{row.name}/seed{seed}"
            if row.init_from is None and (row.name, seed) in (planned or {}):
                jobs[row.name, seed] = planned[row.name, seed]
                continue
            source = trained.get((row.init_from, seed)) if row.init_from else None
            if row.init_from and source is None:
                result.failed[label] = f"its init_from row {row.init_from} could not be planned"
                continue
            try:
                jobs[row.name, seed] = plan_train_job(spec, row, profile, seed, base_dir, extra, launcher, source)
            except NotRunUnderProfile as why:
                result.not_run[row.name] = f"under profile {profile.name}: {why}"
            except SpecError:  # a row naming code it may not: the table is refused, not this row recorded
                raise
            except Exception as err:  # compose/validation errors: record the row, keep the others
                result.failed[label] = f"config error: {type(err).__name__}: {err}"
    return jobs


def plan_evals(spec: TableSpec, rows: Sequence[Row], profile: Profile, seeds: int, base_dir: Path, trained: Trained,
               launcher: str | None = None) -> list[Job]:
    return [plan_eval_job(spec, row, profile, seed, base_dir, trained[row.eval_of, seed], launcher)
            for row in rows if row.is_eval and row.runnable for seed in range(seeds) if (row.eval_of, seed) in trained]


def plan_all(spec: TableSpec, stages: Sequence[Sequence[Row]], rows: Sequence[Row], profile: Profile, seeds: int,
             base_dir: Path, extra: Sequence[str], launcher: str | None,
             result: RunResult) -> tuple[Trained, list[Job]]:
    """Every training and eval job as things stand now (a later stage's hash changes once its source reruns)."""
    trained: Trained = {}
    for stage in stages:
        trained.update(plan_stage(spec, stage, profile, seeds, base_dir, extra, launcher, trained, result))
    return trained, plan_evals(spec, rows, profile, seeds, base_dir, trained, launcher)


def sources_to_rerun(trained: Trained, evals: Sequence[Job]) -> set[Path]:
    """Finished runs that must train again because a job still to run needs their pruned ``last.ckpt``
    (transitively: retraining a row whose own source checkpoint is gone retrains that source too)."""
    by_dir = {job.run_dir: job for job in trained.values()}
    rerun: set[Path] = set()
    for job in [*evals, *reversed(list(trained.values()))]:  # dependents before their sources
        if job.source_dir is None or (is_done(job) and job.run_dir not in rerun):
            continue
        if not last_checkpoint(job.source_dir).is_file() and job.source_dir in by_dir:
            rerun.add(job.source_dir)
    return rerun


def jobs_to_run(jobs: Sequence[Job], rerun: set[Path]) -> set[Path]:
    """The run folders of ``jobs`` (sources before their dependents) that a run would start: those not done, those
    in ``rerun``, and every job whose source runs (its source's new checkpoint changes what it starts from)."""
    running: set[Path] = set()
    for job in jobs:
        if not is_done(job) or job.run_dir in rerun or job.source_dir in running:
            running.add(job.run_dir)
    return running


def print_plan(jobs: Sequence[Job], kind: str, running: set[Path], hydra_extra: Sequence[str] = ()) -> None:
    """--dry-run: per job what would happen (``running``: :func:`jobs_to_run`)."""
    for job in jobs:
        done = job.run_dir not in running
        state = "done (skip)" if done else "resume from last.ckpt" if can_resume(job) else "run"
        if not done and is_done(job) and job.source_dir in running:
            state = "run (source reruns)"
        where = "own process" if job.own_process else f"{kind} sweep"
        print(f"  {job.label:<28} {state:<22} {where:<12} {display_path(job.run_dir)}")
        if resources := job_launcher_overrides(job, hydra_extra):
            print(f"      launcher: {' '.join(resources)}")
        if job.source_dir is not None:
            print(f"      from: {display_path(last_checkpoint(job.source_dir))}")
        for warning in job.warnings:
            print(f"      warning: {warning}")


def print_unrunnable(result: RunResult) -> None:
    for label, error in result.failed.items():
        print(f"  {label:<28} cannot run: {error}")
    for row, note in result.not_run.items():
        print(f"  {row:<28} not run: {note}")


def warn_protocol(jobs: Sequence[Job], result: RunResult) -> None:
    for job in jobs:
        if job.warnings:
            result.warnings[job.label] = list(job.warnings)
            for warning in job.warnings:
                print(f"segexp-table: warning: {job.label}: {warning}", file=sys.stderr)


def check_cards(jobs: Sequence[Job], allow_deviations: bool) -> None:
    """Refuse a run (or with ``allow_deviations`` warn) whose rows compose a carded setting other than their
    protocol card says (:mod:`segexp.tables.card`; profiles with ``check_protocol``, i.e. ``full``)."""
    problems = [f"{job.label}: {problem}" for job in jobs for problem in job.card_problems]
    if not problems:
        return
    if not allow_deviations:
        raise SpecError("rows that would not measure what the protocol card says (fix the override, state the "
                        "deviation in the card, or pass --allow-deviations):\n  " + "\n  ".join(problems))
    for problem in problems:
        print(f"segexp-table: warning: {problem}", file=sys.stderr)


@dataclass
class TablePlan:
    """Every job a run of a table would start, as things stand on disk now."""

    how: Launch
    selected: list[Row]
    stages: list[list[Row]]
    trained: Trained
    evals: list[Job]
    rerun: set[Path]
    planning: RunResult


def plan_table(spec: TableSpec, profile: Profile, seeds: int = 1, rows: Sequence[str] | None = None,
               launcher: str | None = None, extra: Sequence[str] = (), base_dir: Path | None = None,
               quiet: bool = False) -> TablePlan:
    """Compose and check every row of ``spec`` under ``profile`` without running anything."""
    if not spec.ready:
        raise SpecError(spec.pending_message())
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    for override in extra:
        try:
            check_override_targets(override, f"the override '{override}' after --")
        except UntrustedTargetError as err:
            raise SpecError(str(err)) from None
    config_extra, hydra_extra = split_hydra(extra)
    profile = with_extra_settings(profile, config_extra)
    how = Launch(base_dir or profile_dir(spec.id, profile.name), launcher, tuple(hydra_extra), quiet)
    selected = select_rows(spec, rows)
    stages = training_stages(selected)
    planning = RunResult(table=spec.id, profile=profile.name)
    planning.not_run = {r.name: str(r.notes) for r in selected if not r.runnable}
    trained, evals = plan_all(spec, stages, selected, profile, seeds, how.base_dir, config_extra, launcher, planning)
    return TablePlan(how, selected, stages, trained, evals, sources_to_rerun(trained, evals), planning)


def run_table(spec: TableSpec, profile: Profile, seeds: int = 1, rows: Sequence[str] | None = None,
              launcher: str | None = None, extra: Sequence[str] = (), dry_run: bool = False,
              base_dir: Path | None = None, quiet: bool = False, allow_deviations: bool = False) -> RunResult:
    """Run what is missing of ``spec`` under ``profile``; see the module docstring."""
    profile = with_extra_settings(profile, split_hydra(extra)[0])
    plan = plan_table(spec, profile, seeds, rows, launcher, extra, base_dir, quiet)
    how, planning, trained = plan.how, plan.planning, plan.trained
    warn_protocol(list(trained.values()), planning)
    check_cards([*trained.values(), *plan.evals], allow_deviations or dry_run)
    if dry_run:
        print(f"{spec.id} [{profile.name}] -> {display_path(how.base_dir)}")
        running = jobs_to_run([*trained.values(), *plan.evals], plan.rerun)
        print_plan(list(trained.values()), TRAIN, running, how.hydra_extra)
        print_plan(plan.evals, EVAL, running, how.hydra_extra)
        print_unrunnable(planning)
        return planning
    result = RunResult(table=spec.id, profile=profile.name, not_run=dict(planning.not_run),
                       warnings=planning.warnings)
    config_extra, _ = split_hydra(extra)
    with table_lock(how.base_dir):
        record_not_run(how.base_dir, plan.selected, planning.not_run)
        trained = run_stages(spec, plan.stages, profile, seeds, config_extra, how, plan.rerun, result, trained)
        evals = run_evals(spec, profile, plan.selected, seeds, trained, how, result)
        if profile.checkpoints == "none":
            prune_used_sources([*trained.values(), *evals])
        measure_rows(list(trained.values()), result)
    return result


def record_not_run(base_dir: Path, rows: Sequence[Row], reasons: dict[str, str]) -> None:
    """``<row>/not_run.json`` for the rows this profile cannot run (the report shows why); removed otherwise."""
    for row in rows:
        path = base_dir / row.name / NOT_RUN_FILE
        if row.runnable and row.name in reasons:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, {"reason": reasons[row.name]})
        else:
            path.unlink(missing_ok=True)


def run_stages(spec: TableSpec, stages: Sequence[Sequence[Row]], profile: Profile, seeds: int,
               extra: Sequence[str], how: Launch, rerun: set[Path], result: RunResult, planned: Trained) -> Trained:
    """Each stage as one launch; rows built on another (``init_from``) are planned again once the stage
    before has run, since relaunching their source changes their hash."""
    dependents = {(r.source, s) for stage in stages for r in stage if r.source for s in range(seeds)}
    dependents |= {(r.eval_of, s) for r in spec.rows if r.is_eval for s in range(seeds)}
    trained: Trained = {}
    for stage in stages:
        jobs = plan_stage(spec, stage, profile, seeds, how.base_dir, extra, how.launcher, trained, result, planned)
        todo = [j for j in jobs.values() if not is_done(j) or j.run_dir in rerun]
        result.skipped += [j.label for j in jobs.values() if j not in todo]
        runnable = []
        for job in todo:
            if job.source_dir is not None and not last_checkpoint(job.source_dir).is_file():
                result.failed[job.label] = f"no checkpoint of {display_path(job.source_dir)} (its row did not finish)"
                continue
            prune = prune_policy(job, profile, (job.row.name, job.seed) in dependents)
            prepare(job, spec, profile, how.rows_dir, prune)
            runnable.append(job)
        if runnable:
            launch(TRAIN, runnable, how, result)
        trained.update(jobs)
    return trained


def run_evals(spec: TableSpec, profile: Profile, rows: Sequence[Row], seeds: int, trained: Trained,
              how: Launch, result: RunResult) -> list[Job]:
    """Plan the eval-only rows now that checkpoints exist and run those not done."""
    evals = plan_evals(spec, rows, profile, seeds, how.base_dir, trained, how.launcher)
    runnable = []
    for job in evals:
        if is_done(job):
            result.skipped.append(job.label)
        elif not last_checkpoint(job.source_dir).is_file():
            result.failed[job.label] = f"no checkpoint of {display_path(job.source_dir)} (its row did not finish)"
        else:
            runnable.append(job)
    for job in runnable:
        prepare(job, spec, profile, how.rows_dir, prune=[])
    if runnable:
        launch(EVAL, runnable, how, result)
    return evals


def prune_used_sources(jobs: Sequence[Job]) -> None:
    """Checkpoint policy ``none``: delete the checkpoints of runs whose dependents have all finished."""
    dependents: dict[Path, list[Job]] = {}
    for job in jobs:
        if job.source_dir is not None:
            dependents.setdefault(job.source_dir, []).append(job)
    for source, users in dependents.items():
        if all(is_done(j) for j in users):
            prune_checkpoints(source, ["best", "last"])


def measure_rows(jobs: Sequence[Job], result: RunResult) -> None:
    """Add size_mb / test_time_s to metrics.json of finished rows that ask for them and lack them."""
    from segexp.tables.measure import add_measurements

    for job in jobs:
        if job.row.measure and is_done(job):
            try:
                if add_measurements(job):
                    result.measured.append(job.label)
            except Exception as err:  # a measurement failure is recorded, not fatal to the table
                result.failed[job.label] = f"measurement failed: {type(err).__name__}: {err}"
