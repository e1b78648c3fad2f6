"""``segexp-table``: list the paper tables, run one (or every ready one) under a profile, write its report.

    segexp-table list
    segexp-table plan deeplabv3.t4 [--profile full] [--row ms_flip]  # the protocol card, the runs and their cost
    segexp-table plan all --tflops 395.6 --gpu-mem 80 --csv cost.csv    # FLOPs, GPU-hours, memory of every table
    segexp-table run deeplabv3.t5 --profile smoke [--rows mg111,mg124] [--seeds 3] [--dry-run]
    segexp-table run deeplabv3.t5 --profile full --launcher submitit_slurm -- hydra.launcher.partition=gpu
    segexp-table run all --profile smoke                  # every ready table; pending ones are listed as skipped
    segexp-table report deeplabv3.t5 --profile smoke      # rewrite the report from the runs on disk

``run`` ends by writing the table's report: ``experiments/results/<id>.<profile>.{md,csv,png}`` for a profile
with ``evidence: true`` (proxy, full), ``outputs/tables/reports/`` for the others (smoke: scratch output).
A pending table (``status: pending``) is never run: naming one is refused with its reason (exit code 2).
Overrides after ``--`` apply to every training row (``hydra.*`` ones go to the Hydra command line).
Under a profile that checks the protocol (``full``), a row whose composed value of a carded setting contradicts
its protocol card (:mod:`segexp.tables.card`) is refused (exit code 2) unless ``--allow-deviations`` is given.
A spec, profile or config file naming a ``_target_`` outside the allowed packages is refused (exit code 2) unless
``--trust-targets`` is given; the segexp-train / segexp-eval processes a run starts are then trusted too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from segexp.tables.cost import DRYRUN_PROFILE
from segexp.tables.paths import EXPERIMENTS_DIR, RESULTS_DIR, display_path
from segexp.tables.plan import split_hydra
from segexp.tables.report import NoRuns, write_report
from segexp.tables.spec import (
    Profile,
    TableSpec,
    load_all,
    load_profile,
    load_table,
    profile_names,
    with_extra_settings,
)
from segexp.tables.store import profile_dir, rows_with_results
from segexp.tables.yaml_reader import SpecError
from segexp.targets import TRUST_TARGETS_ENV, TRUST_TARGETS_FLAG, TRUSTED_TARGET_PREFIXES, trust_targets

if TYPE_CHECKING:  # the runner imports torch and Lightning: only `run` needs it
    from segexp.tables.cost import Rate, TableCost
    from segexp.tables.runner import RunResult, TablePlan

ALL = "all"
DEFAULT_PROFILE = "smoke"


TRUST_HELP = (f"allow _target_ values outside the allowed packages ({', '.join(TRUSTED_TARGET_PREFIXES)}; classes "
              "only) in specs, profiles and the config files they select, here and in the training and evaluation "
              f"processes a run starts (as {TRUST_TARGETS_ENV}=1 does); only for specs you trust")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segexp-table", description=__doc__.split("\n\n")[0].strip("`: "))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(TRUST_TARGETS_FLAG, action="store_true", help=TRUST_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common],
                   help="every table with its status and how many rows have results per profile")
    run = sub.add_parser("run", parents=[common],
                         help="run a table's missing rows as one Hydra multirun, then write its report")
    run.add_argument("table", help=f"table id (e.g. deeplabv3.t5), or '{ALL}' for every ready table")
    run.add_argument("--profile", default=DEFAULT_PROFILE)
    run.add_argument("--rows", help="comma-separated row names (default: all rows)")
    run.add_argument("--seeds", type=int, default=1, help="repeat each row with seeds 0..N-1")
    run.add_argument("--launcher", help="Hydra launcher plugin (hydra/launcher=NAME), e.g. submitit_slurm")
    run.add_argument("--dry-run", action="store_true", help="print what would run, write nothing")
    run.add_argument("--batch", type=int, help=f"--profile {DRYRUN_PROFILE} only: images per device instead of the "
                                              "row's (e.g. 1 on a CPU)")
    run.add_argument("--quiet", action="store_true", help="do not echo the training output")
    run.add_argument("--allow-deviations", action="store_true",
                     help="run rows whose composed settings contradict their protocol card (warned about)")
    plan = sub.add_parser("plan", parents=[common],
                          help="print each row's protocol card, the runs it would start and their cost (FLOPs, "
                               "GPU-hours, peak memory per device); runs nothing")
    plan.add_argument("table", help=f"table id (e.g. deeplabv3.t4), or '{ALL}': the cost of every ready table")
    plan.add_argument("--profile", default="full")
    plan.add_argument("--row", help="comma-separated row names (default: all rows)")
    plan.add_argument("--seeds", type=int, default=1)
    plan.add_argument("--launcher", help="Hydra launcher plugin, as for run")
    plan.add_argument("--tflops", type=float,
                      help="sustained TFLOP/s per device for the GPU-hours (default: the rate each row's dry run "
                           "measured on this device, python -m segexp.tables.dryrun)")
    plan.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per device rows must fit (default 80)")
    plan.add_argument("--node-gpus", type=int, default=8, help="GPUs of one node, for node-hours (default 8)")
    plan.add_argument("--device", help="read the dry-run records of this device (default: this machine's)")
    plan.add_argument("--csv", type=Path, help="write the per-row cost as CSV")
    plan.add_argument("--json", type=Path, help="write the per-row cost and the totals as JSON")
    report = sub.add_parser("report", parents=[common],
                            help="write <id>.<profile>.{md,csv,png} (experiments/results or outputs)")
    report.add_argument("table", help=f"table id, or '{ALL}' for every ready table")
    report.add_argument("--profile", default=DEFAULT_PROFILE)
    return p


def tables_for(name: str) -> list[TableSpec]:
    """The named table, or every table (ready and pending) for ``all``."""
    return load_all() if name == ALL else [load_table(name)]


def command_list() -> int:
    """Per table and profile: the rows with results under outputs/, marked ``*`` when a report of that profile is
    committed in experiments/results/ (its runs are not in this checkout's outputs/)."""
    profiles = [name for name in profile_names() if name != DRYRUN_PROFILE]  # dry runs record costs, not results
    print(f"{'table':<16} {'status':<8} {'rows':>4}  " + "  ".join(f"{p:>7}" for p in profiles) + "  title")
    committed = False
    for spec in load_all():
        counts = []
        for name in profiles:
            marker = "*" if (RESULTS_DIR / f"{spec.id}.{name}.md").is_file() else " "
            committed |= marker == "*"
            counts.append(f"{rows_with_results(profile_dir(spec.id, name), spec.row_names())}/{len(spec.rows)}{marker}")
        print(f"{spec.id:<16} {spec.status:<8} {len(spec.rows):>4}  " + "  ".join(f"{c:>7}" for c in counts)
              + f"  {spec.title}")
    if committed:
        print("\nrows with results under outputs/; * a committed report in experiments/results/ (segexp-table "
              "report rewrites it only from runs that all match that profile)")
    return 0


def print_result(result: RunResult, seconds: float) -> None:
    print(f"\n{result.table} [{result.profile}]: ran {len(result.ran)}, skipped {len(result.skipped)} (already done), "
          f"failed {len(result.failed)}, not run {len(result.not_run)}, in {seconds:.0f}s")
    for label, error in result.failed.items():
        print(f"  FAILED {label}: {error}")
    for row, note in result.not_run.items():
        print(f"  not run {row}: {note}")


def report_table(spec: TableSpec, profile: Profile) -> bool:
    """Write the table's report and say where, or say plainly that there are no runs to report on."""
    try:
        paths = write_report(spec, profile)
    except NoRuns as why:
        print(f"{spec.id} [{profile.name}]: {why}")
        return False
    print(f"{spec.id} [{profile.name}] report: " + ", ".join(display_path(p) for p in paths.values()))
    return True


def command_run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.profile == DRYRUN_PROFILE:  # real shapes on synthetic scenes, on this device: its own runner
        from segexp.tables.dryrun import main as dryrun_main

        options = [*(["--rows", args.rows] if args.rows else []), *(["--batch", str(args.batch)] if args.batch else [])]
        return dryrun_main([args.table, *options, *(["--quiet"] if args.quiet else [])])
    specs = tables_for(args.table)
    pending = [s for s in specs if not s.ready]
    if pending and args.table != ALL:
        print(f"segexp-table: {pending[0].pending_message()}", file=sys.stderr)
        return 2
    from segexp.tables.runner import run_table

    profile = with_extra_settings(load_profile(args.profile), split_hydra(extra)[0])  # its own runs and report
    rows = [r for r in args.rows.split(",") if r] if args.rows else None
    failed = 0
    for spec in (s for s in specs if s.ready):
        start = time.perf_counter()
        result = run_table(spec, profile, seeds=args.seeds, rows=rows, launcher=args.launcher, extra=extra,
                           dry_run=args.dry_run, quiet=args.quiet, allow_deviations=args.allow_deviations)
        if not args.dry_run:
            print_result(result, time.perf_counter() - start)
            report_table(spec, profile)
        failed += not result.ok
    for spec in pending:
        print(f"skipped {spec.pending_message()}")
    return 1 if failed else 0


def command_plan(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """The table's card, then per row: the runs (training / eval, device kind, processes, precision, batch,
    steps, eval geometry) and its composed card; rows that contradict the card are marked; then their cost
    (:mod:`segexp.tables.cost`). ``all``: the cost of every ready table, one line each, and the total."""
    from segexp.tables import cost
    from segexp.tables.measure import current_device, device_name
    from segexp.tables.plan_text import all_cost_text, cost_text, plan_text
    from segexp.tables.runner import plan_table

    if args.gpu_mem <= 0 or args.node_gpus < 1:
        raise SpecError(f"--gpu-mem must be > 0 and --node-gpus >= 1, got {args.gpu_mem} and {args.node_gpus}")
    rate = None
    if args.tflops is not None:
        try:
            rate = cost.given_rate(args.tflops)
        except ValueError as err:
            raise SpecError(str(err)) from None
    device = args.device or device_name(current_device())
    specs = tables_for(args.table)
    profile = with_extra_settings(load_profile(args.profile), split_hydra(extra)[0])
    rows = [r for r in args.row.split(",") if r] if args.row else None
    tables = []
    for spec in specs:
        if not spec.ready and args.table == ALL:
            print(f"skipped {spec.pending_message()}", file=sys.stderr)
            continue
        plan = plan_table(spec, profile, seeds=args.seeds, rows=rows, launcher=args.launcher, extra=extra,
                          quiet=True)
        tables.append(cost.table_cost(spec, plan, args.seeds, rate, args.gpu_mem, device))
        add_cluster_rows(tables[-1], spec, profile, plan, args, extra, rate, device)
        if args.table != ALL:
            print("\n".join([*plan_text(spec, profile, plan), *cost_text(tables[-1], args.gpu_mem, args.node_gpus)]))
    if args.table == ALL:
        print(f"{args.profile} profile, {args.seeds} seed(s); training = 3 x forward FLOPs x effective batch x steps "
              "+ validations; dry-run records of: " + device)
        print("\n".join(all_cost_text(tables, args.gpu_mem, args.node_gpus)))
    for path in cost.write_outputs(tables, args.csv, args.json, args.gpu_mem, device, args.node_gpus):
        print(f"cost written to {display_path(path)}")
    return 0


def add_cluster_rows(table: TableCost, spec: TableSpec, profile: Profile, plan: TablePlan, args: argparse.Namespace,
                     extra: Sequence[str], rate: Rate | None, device: str) -> None:
    """Cost the runnable rows this launcher cannot start (several nodes need a cluster launcher) as they would run
    under one, so that a table's cost covers every row; each such row says so."""
    from segexp.tables import cost

    if args.launcher == cost.CLUSTER_LAUNCHER:
        return
    other = cost.cluster_rows_plan(spec, profile, plan, args.seeds, extra)
    if other is None:
        return
    for row in cost.table_cost(spec, other, args.seeds, rate, args.gpu_mem, device).rows:
        if row.row in plan.planning.not_run:
            row.notes.append(f"not run with this launcher ({plan.planning.not_run[row.row]}); costed as under "
                             f"--launcher {cost.CLUSTER_LAUNCHER}")
            table.rows.append(row)


def command_report(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    written = [report_table(spec, profile) for spec in tables_for(args.table) if spec.ready or args.table != ALL]
    return 0 if all(written) or args.table == ALL else 1


def require_experiments() -> None:
    """The table specs, profiles and tracked results live in the repository's experiments/, which a wheel does
    not carry: segexp-table runs from a source checkout."""
    if not EXPERIMENTS_DIR.is_dir():
        raise SpecError(f"no table specs at {EXPERIMENTS_DIR}: segexp-table reads experiments/ of a source "
                        "checkout; run it from a clone installed with `pip install -e .` (or `make install`)")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    extra = args_list[args_list.index("--") + 1:] if "--" in args_list else []
    args = parser().parse_args(args_list[: args_list.index("--")] if "--" in args_list else args_list)
    if args.trust_targets:
        trust_targets()  # for this process and the segexp-train / segexp-eval processes it starts
    try:
        require_experiments()
        if args.command == "list":
            return command_list()
        if args.command == "run":
            return command_run(args, extra)
        if args.command == "plan":
            return command_plan(args, extra)
        return command_report(args)
    except SpecError as err:
        print(f"segexp-table: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `segexp-table list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
