"""How a table's jobs are started: the command line of one Hydra multirun over several rows (each row a generated
``+table_row=<row>/seed<k>`` config on Hydra's search path) or of one own-process row, run with its output echoed
and saved to a log; the sweeps split by launcher resources (submitit asks for nodes and tasks once per multirun);
and why a launched job left no ``metrics.json``, read from its ``job_status.json`` or ``error.json``."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segexp.overrides import override_key
from segexp.tables.plan import EVAL, TRAIN, Job
from segexp.tables.pruning import PruneCheckpoints
from segexp.tables.store import ERROR_FILE, JOB_STATUS_FILE, METRICS_FILE, read_json

ROWS_FOLDER = ".table_rows"
"""Where a profile's generated ``table_row/<row>/seed<k>.yaml`` configs live (on Hydra's search path)."""
LOGS_FOLDER = "_logs"
MODULES = {TRAIN: "segexp.cli.train", EVAL: "segexp.cli.evaluate"}


@dataclass(frozen=True)
class Launch:
    """Where and how a table's jobs are launched."""

    base_dir: Path
    launcher: str | None = None
    hydra_extra: tuple[str, ...] = ()
    quiet: bool = False

    @property
    def rows_dir(self) -> Path:
        return self.base_dir / ROWS_FOLDER

    def log(self, name: str) -> Path:
        return self.base_dir / LOGS_FOLDER / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def hydra_quote(value: str) -> str:
    """A path as a Hydra override value (quoted when it holds characters the grammar treats specially)."""
    return value if re.fullmatch(r"[\w/.:+-]+", value) else "'" + value.replace("'", "\\'") + "'"


def hydra_args(rows_dir: Path, launcher: str | None, hydra_extra: Sequence[str]) -> list[str]:
    args = [f"hydra.searchpath=[{hydra_quote('file://' + str(rows_dir))}]",
            f"+hydra.callbacks.segexp_table._target_={PruneCheckpoints.__module__}.{PruneCheckpoints.__name__}"]
    if launcher:
        args.append(f"hydra/launcher={launcher}")
    return [*args, *hydra_extra]


def sweep_command(kind: str, jobs: Sequence[Job], base_dir: Path, rows_dir: Path, launcher: str | None,
                  hydra_extra: Sequence[str]) -> list[str]:
    """One multirun over ``jobs``: each job's output folder is ``<base_dir>/<row>/seed<k>``."""
    return [sys.executable, "-m", MODULES[kind], "-m", f"+table_row={','.join(j.choice for j in jobs)}",
            f"hydra.sweep.dir={hydra_quote(str(base_dir))}", "hydra.sweep.subdir=${hydra:runtime.choices.table_row}",
            *hydra_args(rows_dir, launcher, hydra_extra)]


def single_command(job: Job, rows_dir: Path, hydra_extra: Sequence[str]) -> list[str]:
    """One job as a plain (non-multirun) process: Lightning may then start its DDP workers safely."""
    return [sys.executable, "-m", MODULES[job.kind], f"+table_row={job.choice}",
            f"hydra.run.dir={hydra_quote(str(job.run_dir))}", *hydra_args(rows_dir, None, hydra_extra)]


def run_logged(command: Sequence[str], log_path: Path, quiet: bool) -> int:
    """Run ``command``, echoing (unless ``quiet``) and saving its output; its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log, subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        log.write(" ".join(command) + "\n\n")
        for line in proc.stdout:
            log.write(line)
            if not quiet:
                sys.stdout.write(line)
        return proc.wait()


def failure_reason(run_dir: Path, code: int) -> str:
    """Why a launched job left no metrics.json: the error in its ``job_status.json`` (Hydra's own record of the
    job, :mod:`segexp.cli.job_status`), else the one in its ``error.json`` (a job stopped by Ctrl-C or a kill), else
    the launch's exit code (a job that never started)."""
    status = read_json(run_dir / JOB_STATUS_FILE) or {}
    if status.get("status") == "FAILED" and status.get("error"):
        return str(status["error"])
    recorded = (read_json(run_dir / ERROR_FILE) or {}).get("error")
    if recorded:
        return str(recorded)
    if status.get("status") == "COMPLETED":
        return f"the job completed without writing {METRICS_FILE} (interrupted?)"
    return f"exit code {code}, no {METRICS_FILE}"


def job_launcher_overrides(job: Job, hydra_extra: Sequence[str]) -> tuple[str, ...]:
    """The job's ``hydra.launcher.*`` resources minus the keys the user set after ``--`` (those win)."""
    user = {override_key(o) for o in hydra_extra}
    return tuple(o for o in job.launcher_overrides if override_key(o) not in user)


def sweep_groups(jobs: Sequence[Job], hydra_extra: Sequence[str]) -> list[tuple[tuple[str, ...], list[Job]]]:
    """The in-sweep jobs split by their launcher resources (:func:`job_launcher_overrides`), in first-seen order.

    Hydra configures the launcher once per multirun, so a submitit sweep gives every job the same nodes, tasks
    and GPUs: a 1-GPU row and a 2 x 8-GPU row cannot share one. The simplest correct split is one sweep per
    distinct resource set, run one after the other: rows of equal resources (every 1-device row, every seed
    of a row) still share one sweep (one SLURM job array), and without a submitit launcher there is one
    group, as before. The price: a group starts once the previous group's jobs have finished."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job_launcher_overrides(job, hydra_extra), []).append(job)
    return list(groups.items())


def sweep_log_name(kind: str, resources: Sequence[str]) -> str:
    """``train`` or, for a resource group, ``train-nodes2-tasks_per_node8-gpus_per_node8``."""
    return "-".join([kind, *(o.removeprefix("hydra.launcher.").replace("=", "") for o in resources)])
