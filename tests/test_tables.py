"""Paper-table specs, profiles, the segexp-table runner and its reports (segexp.tables)."""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from segexp.cli import table as cli
from segexp.config import REPO_ROOT, compose_config
from segexp.models.backbones.resnet import ResNet
from segexp.tables import runner
from segexp.tables.measure import add_measurements
from segexp.tables.paths import EXPERIMENTS_DIR, RESULTS_DIR
from segexp.tables.plan import (
    NotRunUnderProfile,
    compose,
    config_hash,
    drop_overrides,
    effective_batch,
    eval_overrides,
    merge_overrides,
    needs_own_process,
    plan_eval_job,
    plan_train_job,
    protocol_warnings,
    row_file_text,
    train_overrides,
)
from segexp.tables.report import (
    OPPOSITE,
    REPRODUCED,
    SINGLE_SEED,
    VERDICT_RULE,
    WITHIN_NOISE,
    NoRuns,
    build_report,
    chart,
    verdict,
    write_report,
)
from segexp.tables.runner import (
    Launch,
    RunResult,
    can_resume,
    launch,
    prepare,
    run_table,
    select_rows,
    single_command,
    sweep_command,
    table_lock,
    training_stages,
)
from segexp.tables.spec import (
    Protocol,
    Row,
    load_all,
    load_profile,
    load_spec,
    load_table,
    profile_names,
    with_extra_settings,
)
from segexp.tables.yaml_reader import SpecError
from tests.specs import assert_spec_error, write_spec

CATALOG = REPO_ROOT.parent / "shared" / "papers" / "README.md"
PROFILES = profile_names()


# ----------------------------------------------------------------------------- specs and schema


def test_every_catalog_table_has_a_spec_and_every_spec_loads() -> None:
    specs = load_all()
    ids = {s.id for s in specs}
    assert len(ids) == len(specs) == 31
    if CATALOG.is_file():
        assert ids == set(re.findall(r"`([a-z0-9]+\.t\d+)`", CATALOG.read_text()))
    fcrn = {s.id: s for s in specs if s.paper == "fcrn"}
    assert len(fcrn["fcrn.t1"].rows) == 21 and len(fcrn["fcrn.t2"].rows) == 23
    for spec in specs:
        assert spec.ready or spec.pending_reason, spec.id
        sources = {row.source for row in spec.rows}
        assert all(row.paper or row.name in sources for row in spec.rows), spec.id  # {}: a pipeline stage
    assert {s.id for s in specs if s.ready} >= {f"deeplabv3.t{n}" for n in (1, 2, 3, 4, 5, 6, 8, 9, 10)}


def test_paper_values_are_filled_in() -> None:
    t5 = load_table("deeplabv3.t5")
    assert [r.paper["mIoU"] for r in t5.rows] == [75.36, 75.93, 76.58, 76.46, 77.21]
    assert load_table("fcrn.t1").row("r101_os8_k5_d12").paper == {"pixel_acc": 93.87, "mean_acc": 81.87,
                                                                   "mIoU": 73.41}
    assert load_table("prb.t5").row("three").paper == {"size_mb": 202.74, "test_time_s": 1.348, "mIoU": 75.38}


def compose_table_rows(profile: str, table_id: str) -> list[str]:
    """Compose (and validate) every runnable row of a table under a profile; the problems found (a row the
    profile does not run on this machine is reported as ``<table> <row> [<profile>]: not run``)."""
    prof, spec, problems = load_profile(profile), load_table(table_id), []
    for row in (r for r in spec.rows if r.runnable):
        try:
            if row.is_eval:
                compose(eval_overrides(row, prof, Path("/x/last.ckpt")), 0, config_name="eval")
            else:
                plan_train_job(spec, row, prof, 0, Path("/x"))
        except NotRunUnderProfile:
            problems.append(f"{table_id} {row.name} [{profile}]: not run")
        except Exception as err:  # collect every failing row, not only the first
            problems.append(f"{table_id} {row.name} [{profile}]: {type(err).__name__}: {err}")
    return problems


@pytest.mark.parametrize("profile", PROFILES)
def test_every_ready_row_composes_under_every_profile(profile: str) -> None:
    """~110 rows per profile: composed in two forked workers (Hydra composition is ~0.1 s per row)."""
    ready = [s.id for s in load_all() if s.ready]
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        problems = [p for found in pool.map(compose_table_rows, [profile] * len(ready), ready) for p in found]
    # DeepLabv3 Table 11: 16 and 32 workers span several nodes (a cluster launcher); on a CPU only 2 processes
    not_run = {"full": ["workers16", "workers32"], "dryrun": ["workers16", "workers32"],
               "gpu_proxy": ["workers2", "workers4", "workers8", "workers16", "workers32"]}.get(
        profile, ["workers4", "workers8", "workers16", "workers32"])
    expected = [f"deeplabv3.t11 {name} [{profile}]: not run" for name in not_run]
    if profile == "gpu_proxy":  # one GPU: the pacbal tables train on 2 devices (its Sec. 4: 2 GPUs x 8 images)
        expected += [f"{s.id} {r.name} [{profile}]: not run" for s in load_all() if s.ready and s.paper == "pacbal"
                     for r in s.rows if r.runnable]
    assert sorted(problems) == sorted(expected)


GOOD = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
baseline: a
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {mIoU: 50.0}
  - name: b
    overrides: [backbone=resnet34]
    paper: {mIoU: 51.0}
"""


@pytest.mark.parametrize(("old", "new", "key", "message"), [
    ("    overrides: [backbone=resnet18]", "    overides: [backbone=resnet18]", "rows[0].overides",
     "did you mean 'overrides'"),
    ("paper: {mIoU: 51.0}", "paper: {mIoU: fifty}", "rows[1].paper.mIoU", "expected a number"),
    ("paper: {mIoU: 51.0}", "paper: {pixel_acc: 51.0}", "rows[1].paper.pixel_acc", "not one of the table's metrics"),
    ("baseline: a", "baseline: z", "baseline", "no row named 'z'"),
    ("id: demo.t1", "id: demo.t2", "id", "must be 'demo.t1'"),
    ("[backbone=resnet34]", "[backbone=resnet34, 'head.rates=[1],[2]']", "rows[1].overrides[1]", "is a sweep"),
    ("[backbone=resnet34]", "[seed=3]", "rows[1].overrides[0]", "set by segexp-table"),
    ("[backbone=resnet34]", "['~head']", "rows[1].overrides[0]", "deletions"),
    ("  - name: b\n", "  - name: B\n", "rows[1].name", "must match"),
    ("metrics: [mIoU]", "metrics: [mIoU, fps]", "metrics[1]", "unknown metric 'fps'"),
    ("metrics: [mIoU]", "metrics: [mIoU]\nstatus: pending", "pending_reason", "must say which components"),
    ("    overrides: [backbone=resnet34]", "    eval_of: a\n    overrides: [backbone=resnet34]", "rows[1].overrides",
     "use eval_overrides"),
])
def test_schema_errors_name_the_file_and_the_key(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    assert old in GOOD
    load_spec(write_spec(tmp_path, GOOD))
    assert_spec_error(write_spec(tmp_path, GOOD.replace(old, new, 1)), key, message)


STAGED = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {}
  - name: b
    init_from: a
    overrides: [schedule.lr=0.001]
    paper: {}
  - name: c
    eval_of: b
    paper: {mIoU: 50.0}
"""


@pytest.mark.parametrize(("old", "new", "key", "message"), [
    ("    init_from: a\n", "    init_from: z\n", "rows[1].init_from", "no row named 'z'"),
    ("    init_from: a\n", "    init_from: b\n", "rows[1].init_from", "starts a cycle back to 'b'"),
    ("    overrides: [backbone=resnet18]", "    init_from: b\n    overrides: [backbone=resnet18]", "rows[0].init_from",
     "starts a cycle back to 'a'"),
    ("    init_from: a\n", "    init_from: c\n", "rows[1].init_from", "'c' is itself eval-only"),
    ("[schedule.lr=0.001]", "[model.init_from=/x.ckpt]", "rows[1].overrides", "set by the runner from init_from"),
    ("    overrides: [backbone=resnet18]", "    notes: private data", "rows[1].init_from", "'a' is not run"),
    ("    eval_of: b\n", "    eval_of: b\n    init_from: a\n", "rows[2].init_from", "cannot also train"),
])
def test_staged_rows_schema(tmp_path: Path, old: str, new: str, key: str, message: str) -> None:
    spec = load_spec(write_spec(tmp_path, STAGED))
    assert [(r.name, r.source) for r in spec.rows] == [("a", None), ("b", "a"), ("c", "b")]
    assert [[r.name for r in stage] for stage in training_stages(spec.rows)] == [["a"], ["b"]]
    assert [r.name for r in select_rows(spec, ["c"])] == ["a", "b", "c"]
    assert old in STAGED
    assert_spec_error(write_spec(tmp_path, STAGED.replace(old, new, 1)), key, message)


def test_profile_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "odd.yaml").write_text("description: x\noverides: [a=1]\n")
    with pytest.raises(SpecError, match=r"odd.yaml: overides: unknown key \(did you mean 'overrides'\?\)"):
        load_profile("odd", root=tmp_path)
    (tmp_path / "many.yaml").write_text("description: x\ndistributed: {max_processes: 0}\n")
    with pytest.raises(SpecError, match=r"many.yaml: distributed.max_processes: must be >= 1, got 0"):
        load_profile("many", root=tmp_path)
    (tmp_path / "many.yaml").write_text("description: x\ndistributed: {overrides: [trainer=ddp_cpu]}\n")
    with pytest.raises(SpecError, match=r"many.yaml: distributed.max_processes: required key is missing"):
        load_profile("many", root=tmp_path)
    (tmp_path / "odd.yaml").write_text("description: x\nevidence: 'yes'\n")
    with pytest.raises(SpecError, match=r"odd.yaml: evidence: expected bool, got 'yes'"):
        load_profile("odd", root=tmp_path)
    with pytest.raises(SpecError, match="unknown profile 'nope'"):
        load_profile("nope", root=tmp_path)
    with pytest.raises(SpecError, match="unknown table id 'deeplabv3.t99'"):
        load_table("deeplabv3.t99")


# ----------------------------------------------------------------------------- overrides and configs


def test_merge_overrides_later_wins_and_reconciles_prefixes() -> None:
    merged = merge_overrides(["a=1", "b.c=[1,2]", "+d=1", "e=1"], ["a=2", "d=2", "++e=3"], ["b.c=[3]"])
    assert merged == ["a=2", "++d=2", "++e=3", "b.c=[3]"]
    assert merge_overrides(["+x=1"], ["+x=2"]) == ["+x=2"]
    assert merge_overrides(["x=1"], ["~x"]) == ["~x"]
    assert drop_overrides(["data=1", "data.crop_size=[1]", "database=2", "dataset=voc", "head.x=1"],
                          ["data", "dataset"]) == ["database=2", "head.x=1"]


def test_profile_replaces_protocol_but_keeps_the_row_model() -> None:
    spec, smoke = load_table("deeplabv3.t8"), load_profile("smoke")
    overrides = train_overrides(spec, spec.row("crop321"), smoke)
    cfg = compose(overrides, seed=0)
    assert cfg.backbone.depth == 101 and list(cfg.backbone.multi_grid) == [1, 2, 4]
    assert cfg.head.image_pooling is True and cfg.model.bn_momentum == pytest.approx(0.0003)
    assert list(cfg.data.crop_size) == [64, 64] and cfg.trainer.max_steps == 2
    assert cfg.dataset._target_.endswith("SyntheticShapes") and cfg.backbone.pretrained is None
    job = plan_train_job(spec, spec.row("crop321"), smoke, 0, Path("/tmp/unused"))
    assert job.warnings == ("profile smoke replaces data.crop_size=[321,321] by data.crop_size=[64,64]",)
    full = compose(train_overrides(spec, spec.row("crop321"), load_profile("full")), seed=0)
    assert list(full.data.crop_size) == [321, 321] and full.trainer.max_steps == 30000
    assert full.backbone.pretrained.endswith("pretrained/resnet101.pth")


def test_row_file_composes_like_the_command_line(tmp_path: Path) -> None:
    spec, smoke = load_table("deeplabv3.t5"), load_profile("smoke")
    overrides = train_overrides(spec, spec.row("mg124_aspp24"), smoke)
    row_file = tmp_path / "table_row" / "mg124_aspp24" / "seed1.yaml"
    row_file.parent.mkdir(parents=True)
    row_file.write_text(row_file_text(overrides, {"seed": 1}))
    via_file = compose_config(["+table_row=mg124_aspp24/seed1", f"hydra.searchpath=[file://{tmp_path}]",
                               "output_dir=/x"])
    direct = compose_config([*overrides, "seed=1", "output_dir=/x"])
    assert OmegaConf.to_container(via_file, resolve=True) == OmegaConf.to_container(direct, resolve=True)


def test_config_hash_ignores_output_paths_logger_and_seed_only() -> None:
    base = ["experiment=synthetic", "logger=csv"]
    reference = config_hash(compose(base, seed=0))
    assert config_hash(compose([*base, "logger=tensorboard"], seed=0)) == reference
    assert config_hash(compose(base, seed=1)) == reference  # the seed folder says which seed it is
    assert config_hash(compose([*base, "head.channels=32"], seed=0)) != reference


def test_protocol_guard_and_own_process_decision() -> None:
    spec, full = load_table("deeplabv3.t9"), load_profile("full")
    batch4 = compose(train_overrides(spec, spec.row("batch4"), full), seed=0)
    assert protocol_warnings(batch4, spec.protocol_of(spec.row("batch4"))) == []
    assert protocol_warnings(batch4, Protocol(effective_batch=16, max_steps=30000)) == [
        "effective batch 4 (data.batch_size=4 x 1 devices x 1 accumulated) != paper 16"]
    accumulated = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {
        "devices": 1, "num_nodes": 1, "accumulate_grad_batches": 2, "max_steps": 1000}})
    assert protocol_warnings(accumulated, Protocol(effective_batch=16, max_steps=30000)) == [
        "trainer.max_steps=1000 != paper 30000 iterations"]
    ddp = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {"devices": 2, "num_nodes": 1,
                                                                   "strategy": "ddp"}})
    single = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {"devices": 1, "strategy": "auto"}})
    nodes = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {"devices": 1, "num_nodes": 4}})
    assert needs_own_process(ddp, None) and needs_own_process(ddp, "basic") and needs_own_process(nodes, None)
    assert not needs_own_process(ddp, "submitit_slurm")  # one SLURM task per device: stays in the sweep
    assert not needs_own_process(single, None)
    job = plan_train_job(load_table("pacbal.t3"), load_table("pacbal.t3").row("deeplabv3"), full, 0, Path("/x"))
    assert job.own_process  # 2 GPUs x 8 images


def test_replica_rows_keep_their_processes_under_a_profile_and_match_the_protocol_in_full() -> None:
    """DeepLabv3 Table 11: workers2 runs as 2 gloo processes under smoke; larger rows are not run there; under
    full every row has the paper's effective batch 16 (workers32: 32, lr x 2, half the steps)."""
    spec, smoke, full = load_table("deeplabv3.t11"), load_profile("smoke"), load_profile("full")
    job = plan_train_job(spec, spec.row("workers2"), smoke, 0, Path("/x"))
    cfg = compose(job.overrides, seed=0)
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.accelerator) == (2, "ddp", "cpu")
    assert cfg.data.batch_size == 2 and job.own_process
    assert job.warnings == ("profile smoke runs its 2 processes as trainer=ddp_cpu data.batch_size=2, "
                            "effective batch 4",)
    single = plan_train_job(spec, spec.row("workers1"), smoke, 0, Path("/x"))
    assert compose(single.overrides, seed=0).trainer.devices == 1 and not single.own_process
    with pytest.raises(NotRunUnderProfile, match="trains on 4 processes; profile smoke runs at most 2"):
        plan_train_job(spec, spec.row("workers4"), smoke, 0, Path("/x"))
    for name, lr in (("workers1", 0.007), ("workers2", 0.007), ("workers4", 0.007), ("workers8", 0.007)):
        job = plan_train_job(spec, spec.row(name), full, 0, Path("/x"))
        cfg = compose(job.overrides, seed=0)
        assert job.warnings == () and effective_batch(cfg) == 16 and cfg.schedule.lr == lr
        assert cfg.trainer.sync_batchnorm == (name != "workers1")
    with pytest.raises(NotRunUnderProfile, match="trainer.num_nodes=4: a several-node row needs a cluster launcher"):
        plan_train_job(spec, spec.row("workers32"), full, 0, Path("/x"))
    job = plan_train_job(spec, spec.row("workers32"), full, 0, Path("/x"), launcher="submitit_slurm")
    cfg = compose(job.overrides, seed=0)
    assert job.warnings == () and effective_batch(cfg) == 32 and cfg.schedule.lr == pytest.approx(0.014)
    assert cfg.trainer.max_steps == 15000


def test_eval_rows_lose_the_data_settings_a_profile_drops() -> None:
    row = load_table("deeplabv3.t7").row("deeplabv3")
    smoke = eval_overrides(row, load_profile("smoke"), Path("/r/last.ckpt"))
    assert "data.val_split=test" not in smoke and "save_predictions=true" in smoke
    assert "data.val_split=test" in eval_overrides(row, load_profile("full"), Path("/r/last.ckpt"))


def test_a_table_runs_once_at_a_time(tmp_path: Path) -> None:
    busy = pytest.raises(SpecError, match=r"\.lock: a run of this table and profile is in progress")
    with table_lock(tmp_path), busy:
        run_table(load_table("deeplabv3.t5"), load_profile("smoke"), rows=["mg111"], base_dir=tmp_path)
    (tmp_path / ".lock").write_text("999999999")  # a killed run's lock is taken over
    with table_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_killed_row_resumes_from_last_ckpt_and_old_results_are_kept(tmp_path: Path) -> None:
    spec, smoke = load_table("deeplabv3.t5"), load_profile("smoke")
    job = plan_train_job(spec, spec.row("mg111"), smoke, 0, tmp_path)
    (job.run_dir / "checkpoints").mkdir(parents=True)
    (job.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (job.run_dir / "table_row.json").write_text(json.dumps({"config_hash": job.config_hash}))
    rows_dir = tmp_path / ".table_rows"
    row_file = rows_dir / "table_row" / "mg111" / "seed0.yaml"
    for error, resumes in ((None, True), ("KeyboardInterrupt: ", True), ("RuntimeError: boom", False)):
        if error:
            (job.run_dir / "error.json").write_text(json.dumps({"error": error}))
        assert can_resume(job) is resumes
        prepare(job, spec, smoke, rows_dir, prune=[])
        assert ("ckpt_path: last" in row_file.read_text()) is resumes
        assert json.loads((job.run_dir / "table_row.json").read_text())["resumed"] is resumes
    assert json.loads((job.run_dir / "error.prev.json").read_text())["error"] == "RuntimeError: boom"
    (job.run_dir / "metrics.json").write_text("{}")  # a finished run under an older config is set aside
    stale = dataclasses.replace(job, config_hash="other")
    prepare(stale, spec, smoke, rows_dir, prune=[])
    assert (job.run_dir / "metrics.prev.json").is_file() and not (job.run_dir / "metrics.json").exists()


def test_launch_commands_one_sweep_or_one_process_per_row(tmp_path: Path) -> None:
    spec, smoke = load_table("deeplabv3.t5"), load_profile("smoke")
    jobs = [plan_train_job(spec, spec.row(n), smoke, 0, tmp_path) for n in ("mg111", "mg121")]
    sweep = sweep_command("train", jobs, tmp_path, tmp_path / ".rows", "submitit_slurm", ["hydra.launcher.partition=x"])
    assert sweep[1:5] == ["-m", "segexp.cli.train", "-m", "+table_row=mg111/seed0,mg121/seed0"]
    assert "hydra.sweep.subdir=${hydra:runtime.choices.table_row}" in sweep and "hydra/launcher=submitit_slurm" in sweep
    assert sweep[-1] == "hydra.launcher.partition=x" and f"hydra.sweep.dir={tmp_path}" in sweep
    single = single_command(jobs[0], tmp_path / ".rows", [])
    assert "-m" not in single[3:] and f"hydra.run.dir={tmp_path}/mg111/seed0" in single
    assert "+table_row=mg111/seed0" in single


def test_submitit_rows_ask_for_one_task_per_device() -> None:
    """DeepLabv3 Table 11 under submitit: each DDP rank is one task, tasks_per_node = devices, nodes = num_nodes,
    and a GPU row asks for its GPUs; a CPU (gloo) row asks for none; other launchers get nothing."""
    spec, full, smoke = load_table("deeplabv3.t11"), load_profile("full"), load_profile("smoke")

    def resources(name: str, profile: Any, launcher: str | None) -> tuple[str, ...]:
        job = plan_train_job(spec, spec.row(name), profile, 0, Path("/x"), launcher=launcher)
        assert job.own_process == (launcher in (None, "basic") and name != "workers1")  # submitit: in the sweep
        return tuple(o.removeprefix("hydra.launcher.") for o in job.launcher_overrides)

    assert resources("workers1", full, "submitit_slurm") == ("nodes=1", "tasks_per_node=1", "gpus_per_node=1")
    assert resources("workers8", full, "submitit_slurm") == ("nodes=1", "tasks_per_node=8", "gpus_per_node=8")
    assert resources("workers16", full, "submitit_slurm") == ("nodes=2", "tasks_per_node=8", "gpus_per_node=8")
    assert resources("workers32", full, "submitit_slurm") == ("nodes=4", "tasks_per_node=8", "gpus_per_node=8")
    assert resources("workers2", smoke, "submitit_local") == ("nodes=1", "tasks_per_node=2")  # gloo on the CPU
    assert resources("workers2", smoke, None) == resources("workers2", smoke, "basic") == ()
    with pytest.raises(NotRunUnderProfile, match="num_nodes=2: .*launcher submitit_local starts one node"):
        plan_train_job(spec, spec.row("workers16"), full, 0, Path("/x"), launcher="submitit_local")
    t7 = load_table("deeplabv3.t7")
    source = plan_train_job(t7, t7.row("trainval_os8"), full, 0, Path("/x"), launcher="submitit_slurm")
    evaluation = plan_eval_job(t7, t7.row("deeplabv3"), full, 0, Path("/x"), source, launcher="submitit_slurm")
    # the eval-only row runs on the GPU kind of the row it evaluates, so its slot asks for one GPU
    assert evaluation.launcher_overrides == ("hydra.launcher.nodes=1", "hydra.launcher.tasks_per_node=1",
                                             "hydra.launcher.gpus_per_node=1")


def test_submitit_sweeps_group_rows_of_equal_resources_and_user_settings_win(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One sweep per resource set (Hydra configures its launcher once per multirun), nothing launched here."""
    spec, full = load_table("deeplabv3.t11"), load_profile("full")
    jobs = [plan_train_job(spec, spec.row(name), full, seed, tmp_path, launcher="submitit_slurm")
            for name, seed in (("workers1", 0), ("workers16", 0), ("workers1", 1), ("workers32", 0), ("workers16", 1))]
    launched: list[tuple[list[str], str]] = []

    def record(command: list[str], log: Path, quiet: bool) -> int:
        launched.append((command, log.name))
        return 0

    monkeypatch.setattr(runner, "run_logged", record)
    user = ("hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=8")
    result = RunResult(table=spec.id, profile=full.name)
    launch("train", jobs, Launch(tmp_path, "submitit_slurm", user), result)
    rows = [next(a for a in command if a.startswith("+table_row=")) for command, _ in launched]
    assert rows == ["+table_row=workers1/seed0,workers1/seed1", "+table_row=workers16/seed0,workers16/seed1",
                    "+table_row=workers32/seed0"]
    launchers = [[a for a in command if a.startswith("hydra.launcher.")] for command, _ in launched]
    assert launchers == [["hydra.launcher.nodes=1", "hydra.launcher.tasks_per_node=1", *user],
                         ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=8", *user],
                         ["hydra.launcher.nodes=4", "hydra.launcher.tasks_per_node=8", *user]]
    assert all("hydra/launcher=submitit_slurm" in command for command, _ in launched)
    assert [name.rsplit("-", 2)[0] for _, name in launched] == [
        "train-nodes1-tasks_per_node1", "train-nodes2-tasks_per_node8", "train-nodes4-tasks_per_node8"]
    assert sorted(result.failed) == sorted(job.label for job in jobs)  # no metrics.json: every row is recorded


# ----------------------------------------------------------------------------- verdicts and reports


@pytest.mark.parametrize(("paper_delta", "row", "base", "expected"), [
    # Welch's t-test since the 2 x SE rule went (worked cases in tests/test_verdicts.py); every answer here held
    # under both rules
    (+0.6, [2.0, 2.2, 1.8], [1.0, 1.1, 0.9], REPRODUCED),   # d = 1.0, SE = 0.129, df = 2.94: CI [+0.58, +1.42]
    (-0.6, [2.0, 2.2, 1.8], [1.0, 1.1, 0.9], OPPOSITE),
    (0.0, [2.0, 2.2, 1.8], [1.0, 1.1, 0.9], OPPOSITE),
    (+0.6, [1.0, 2.0], [1.2, 1.8], WITHIN_NOISE),           # d = 0
    (+0.6, [1.0, 3.0], [0.0, 0.0], WITHIN_NOISE),           # d = 2.0, SE = 1, df = 1: CI 2 -+ 12.7
    (+0.6, [1.0, 3.1], [0.0, 0.0], WITHIN_NOISE),           # d = 2.05, SE = 1.05, df = 1: CI 2.05 -+ 13.3
    (+0.6, [2.0, 2.0], [0.0, 0.0], REPRODUCED),             # no spread at all (SE = 0): any difference counts
    (+0.6, [5.0], [1.0, 1.1], SINGLE_SEED),
    (+0.6, [5.0, 5.1], [1.0], SINGLE_SEED),
])
def test_verdict_rule_known_answers(paper_delta: float, row: list[float], base: list[float], expected: str) -> None:
    assert verdict(paper_delta, row, base) == expected


def fabricate(base_dir: Path, row: str, seed: int, values: dict[str, Any], config_hash_: str = "h") -> Path:
    run_dir = base_dir / row / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {"pixel_acc": 0.9, "mean_acc": 0.8, "per_class_iou": {}, "steps": 2, "wall_s": 10.0,
               "effective_batch": 2, "device": "cpu", "git_commit": "abc1234", "run_dir": str(run_dir), **values}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "table_row.json").write_text(json.dumps({"config_hash": config_hash_, "warnings": [],
                                                        "written_at": "2026-01-01T00:00:00"}))
    return run_dir


def test_report_from_fabricated_runs(tmp_path: Path) -> None:
    spec, smoke = load_table("deeplabv3.t5"), load_profile("smoke")
    base_dir = tmp_path / "runs"
    for seed, (a, b) in enumerate(((0.70, 0.75), (0.72, 0.76), (0.71, 0.77))):
        fabricate(base_dir, "mg111", seed, {"mIoU": a})
        fabricate(base_dir, "mg121", seed, {"mIoU": b})
    fabricate(base_dir, "mg124", 0, {"mIoU": 0.5})
    failed = base_dir / "mg124_aspp24" / "seed0"
    failed.mkdir(parents=True)
    (failed / "error.json").write_text(json.dumps({"error": "RuntimeError: boom", "step": 1, "traceback": ""}))
    paths = write_report(spec, smoke, base_dir=base_dir, results_dir=tmp_path / "results")
    assert {p.name for p in paths.values()} == {f"deeplabv3.t5.smoke.{s}" for s in ("md", "csv", "png")}
    md = paths["md"].read_text()
    assert "| `mg111` MG(1,1,1) ASPP(6,12,18) | 75.36 | 71.00 ± 1.00 (n=3) | -4.36 |" in md
    # d = 76 - 71 = 5, s = 1 a side: SE = sqrt(1/3 + 1/3) = 0.816, Welch df = (2/3)^2 / (2 x (1/3)^2 / 2) = 4,
    # t_{0.975, 4} = 2.776: CI 5 -+ 2.267 = [+2.73, +7.27]. Seeds needed at the pooled s = 1 for the paper's
    # +0.57: t_{2n-2} x sqrt(2/n) is 0.581 at n = 24, 0.569 at n = 25
    assert "| `mg121` MG(1,2,1) ASPP(6,12,18) | 75.93 | 76.00 ± 1.00 (n=3) | +0.07 | mg111 | +0.57 | +5.00 | " \
           "[+2.73, +7.27] df 4.0 | reproduced | 25 |" in md
    # one seed: no interval, but the baseline's 3 seeds measure the noise (s = 1): t_{2n-2} x sqrt(2/n) < 1.22 from
    # n = 7 (t_{12} x sqrt(2/7) = 2.179 x 0.535 = 1.165; n = 6: t_{10} x sqrt(1/3) = 2.228 x 0.577 = 1.286)
    assert "| 76.58 | 50.00 | -26.58 | mg111 | +1.22 | -21.00 | — | single seed | 7 |" in md
    assert "failed: seed0: RuntimeError: boom" in md and "| 77.21 | missing |" in md
    assert VERDICT_RULE in md
    assert md.count(f"`{base_dir}/mg111/seed0`, `{base_dir}/mg111/seed1`, `{base_dir}/mg111/seed2` |") == 1
    assert md.count(f"| `{base_dir}/mg124/seed0` |") == 1 and md.count(f"| `{base_dir}/mg124_aspp24/seed0` |") == 1
    never_ran = next(line for line in md.splitlines() if line.startswith("| `mg124_pool`"))
    # no run dir (nor interval, verdict, seeds needed)
    assert never_ran.endswith("| 77.21 | missing | — | mg124 | +0.63 | — | — | — |  |  |  |")
    rows = {r["row"]: r for r in csv.DictReader(paths["csv"].open())}
    assert rows["mg111"]["run_dir"] == f"{base_dir}/mg111/seed0; {base_dir}/mg111/seed1; {base_dir}/mg111/seed2"
    assert rows["mg124_pool"]["run_dir"] == ""
    assert float(rows["mg121"]["measured_delta"]) == pytest.approx(5.0)
    assert rows["mg121"]["verdict"] == REPRODUCED and rows["mg124_aspp24"]["status"] == "failed"
    assert (float(rows["mg121"]["ci_low"]), float(rows["mg121"]["ci_high"]), float(rows["mg121"]["df"])) == \
        pytest.approx((2.733, 7.267, 4.0), abs=1e-3)
    assert rows["mg121"]["seeds_needed"] == "25" and rows["mg124"]["seeds_needed"] == "7"
    assert rows["mg124"]["ci_low"] == rows["mg124"]["df"] == rows["mg124_pool"]["seeds_needed"] == ""
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "results").glob("*.tmp"))


def test_report_of_a_delta_table_and_stale_seeds(tmp_path: Path) -> None:
    spec, smoke = load_table("pacbal.t2"), load_profile("smoke")
    base_dir = tmp_path / "runs"
    fabricate(base_dir, "deeplabv3", 0, {"mIoU": 0.70})
    fabricate(base_dir, "pac_1_3_5_7_9_sum", 0, {"mIoU": 0.705})
    old = fabricate(base_dir, "pac_1_3_5_7_9_sum", 1, {"mIoU": 0.9}, config_hash_="old")
    (old / "table_row.json").write_text(json.dumps({"config_hash": "old", "written_at": "2025-01-01T00:00:00"}))
    md = write_report(spec, smoke, base_dir=base_dir, results_dir=tmp_path)["md"].read_text()
    assert "| `pac_1_3_5_7_9_sum` 5 rates (1,3,5,7,9), sum | +0.29 | +0.50 | +0.21 | deeplabv3 | +0.29 | +0.50 |" in md
    assert "ignored seeds run under an older config: [1]" in md
    assert "status: **ready**" in md and "| `pac_1_3_5_concat` 3 rates (1,3,5), concat | +0.14 | missing |" in md


def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file under ``root``: (relative path, size, mtime in ns)."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def test_smoke_reports_are_scratch_output_and_evidence_reports_are_tracked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "out"))
    assert [load_profile(p).evidence for p in ("smoke", "proxy", "full")] == [False, True, True]
    results_before = tree(RESULTS_DIR)
    spec, smoke = load_table("deeplabv3.t5"), load_profile("smoke")
    fabricate(tmp_path / "out" / "tables" / "deeplabv3.t5" / "smoke", "mg111", 0, {"mIoU": 0.5})
    paths = write_report(spec, smoke)
    reports = tmp_path / "out" / "tables" / "reports"
    assert paths == {s: reports / f"deeplabv3.t5.smoke.{s}" for s in ("md", "csv", "png")}
    assert all(p.is_file() for p in paths.values())
    assert tree(RESULTS_DIR) == results_before


def test_a_profile_without_runs_says_so_instead_of_a_table_of_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path))
    message = (f"no runs of deeplabv3.t5 under profile smoke yet (nothing in {tmp_path}/tables/deeplabv3.t5/smoke): "
               "run `segexp-table run deeplabv3.t5 --profile smoke`")
    with pytest.raises(NoRuns) as err:
        write_report(load_table("deeplabv3.t5"), load_profile("smoke"), results_dir=tmp_path / "results")
    assert str(err.value) == message
    assert cli.main(["report", "deeplabv3.t5", "--profile", "smoke"]) == 1
    assert capsys.readouterr().out == f"deeplabv3.t5 [smoke]: {message}\n"
    assert list(tmp_path.iterdir()) == []  # no report files, no folders


@pytest.mark.parametrize(("table_id", "labels"), [
    ("deeplabv3.t5", ["mIoU (%)"]),
    ("pacbal.t2", ["mIoU Δ (%)"]),                            # the paper reports deltas
    ("deeplabv3.t11", ["mIoU (%)", "relative_time (x baseline)"]),
])
def test_chart_legend_is_outside_the_bars_and_values_are_in_percent(tmp_path: Path, table_id: str,
                                                                    labels: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    spec = load_table(table_id)
    for index, row in enumerate(spec.rows):
        fabricate(tmp_path, row.name, 0, {"mIoU": 0.5 + 0.01 * index})
    fig = chart(build_report(spec, load_profile("smoke"), base_dir=tmp_path))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert [ax.get_ylabel() for ax in fig.axes] == labels
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    legend = fig.legends[0].get_window_extent(renderer)
    figure = fig.bbox
    assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1 and figure.y0 <= legend.y0  # drawn inside the image
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent(renderer)), (legend, ax.get_window_extent(renderer))


def test_relative_time_is_wall_time_over_the_baselines(tmp_path: Path) -> None:
    spec, full = load_table("deeplabv3.t11"), load_profile("full")
    fabricate(tmp_path, "workers1", 0, {"mIoU": 0.77, "wall_s": 100.0})
    fabricate(tmp_path, "workers2", 0, {"mIoU": 0.77, "wall_s": 50.0})
    rows = {(r["row"], r["metric"]): r for r in csv.DictReader(
        write_report(spec, full, base_dir=tmp_path, results_dir=tmp_path)["csv"].open())}
    assert float(rows["workers1", "relative_time"]["measured"]) == 1.0
    assert float(rows["workers2", "relative_time"]["measured"]) == 0.5
    assert float(rows["workers2", "relative_time"]["delta_vs_paper"]) == 0.0


def test_size_and_speed_are_added_to_metrics_json(tmp_path: Path) -> None:
    text = GOOD.replace("paper: {mIoU: 50.0}", "measure: [size_mb, test_time_s]\n    paper: {mIoU: 50.0}")
    text = text.replace("[backbone=resnet18]", "[backbone=resnet18, head=fcn]")
    path = write_spec(tmp_path, text.replace("metrics: [mIoU]", "metrics: [mIoU, size_mb, test_time_s]"))
    spec = load_spec(path)
    job = plan_train_job(spec, spec.row("a"), load_profile("smoke"), 0, tmp_path)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "metrics.json").write_text(json.dumps({"mIoU": 0.5}))
    assert add_measurements(job)
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    params = sum(p.numel() for p in ResNet(depth=18).parameters()) + 512 * 6 + 6  # + the 1x1 classifier
    assert metrics["size_mb"] == round(params * 4 / 2**20, 2) and metrics["test_time_s"] > 0
    assert metrics["test_image_size"] == [64, 64] and metrics["mIoU"] == 0.5
    assert not add_measurements(job)  # already there: nothing recomputed


def test_list_shows_every_table_with_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for spec in load_all():
        assert re.search(rf"^{re.escape(spec.id)}\s+{spec.status}\s+{len(spec.rows)}\s", out, re.M), spec.id
    # a committed report is marked in its profile's column (the runs behind it are not in this checkout)
    header = out.splitlines()[0].split()
    for report in RESULTS_DIR.glob("*.md"):
        table, profile = report.name.removesuffix(".md").rsplit(".", 1)
        line = next(line for line in out.splitlines() if line.startswith(table + " "))
        assert line.split()[header.index(profile)].endswith("*"), (table, profile)


PENDING = GOOD.replace("metrics: [mIoU]", "metrics: [mIoU]\nstatus: pending\npending_reason: needs a flux capacitor")


def test_a_named_pending_table_is_refused_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", PENDING))
    monkeypatch.setattr(cli, "load_table", lambda name: spec)
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "out"))
    assert cli.main(["run", "demo.t1", "--profile", "smoke"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"segexp-table: demo.t1 is pending, not run ({spec.path}): needs a flux capacitor\n"
    assert not (tmp_path / "out").exists()  # nothing was started


def test_run_all_skips_the_pending_tables_and_lists_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[str] = []

    def fake_run_table(spec: Any, profile: Any, **_: Any) -> RunResult:
        ran.append(spec.id)
        return RunResult(table=spec.id, profile=profile.name)

    pending = load_spec(write_spec(tmp_path, PENDING))
    specs = [*load_all(), pending]
    monkeypatch.setattr(cli, "load_all", lambda: specs)
    monkeypatch.setattr(runner, "run_table", fake_run_table)
    assert cli.main(["run", "all", "--profile", "smoke", "--dry-run"]) == 0
    assert ran == [s.id for s in specs if s.ready] and "demo.t1" not in ran
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped ")]
    assert skipped == [f"skipped {pending.pending_message()}"]


def test_every_catalog_table_is_ready() -> None:
    assert [s.id for s in load_all() if not s.ready] == []
    assert len(load_all()) == 31


def test_sizes_and_times_are_reported_relative_to_the_baseline_next_to_the_papers_ratio(tmp_path: Path) -> None:
    spec = load_table("prb.t5")
    fabricate(tmp_path, "baseline", 0, {"mIoU": 0.7, "size_mb": 160.0, "test_time_s": 0.5})
    fabricate(tmp_path, "one", 0, {"mIoU": 0.7, "size_mb": 172.0, "test_time_s": 0.6})
    written = write_report(spec, load_profile("smoke"), base_dir=tmp_path, results_dir=tmp_path)
    rows = {(r["row"], r["metric"]): r for r in csv.DictReader(written["csv"].open())}
    assert float(rows["one", "test_time_s"]["paper_ratio"]) == round(1.288 / 1.252, 4)
    assert float(rows["one", "test_time_s"]["measured_ratio"]) == 1.2
    assert float(rows["one", "size_mb"]["measured_ratio"]) == round(172 / 160, 4)
    assert rows["two", "size_mb"]["measured_ratio"] == ""  # not run
    text = written["md"].read_text()
    assert "| `one` one PRB (res5c) | 1.029 | 1.200 |" in text


# ----------------------------------------------------------------------------- the runner end to end


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training subprocesses use one OpenMP thread: on a busy 2-core machine, 2 threads contending with
    other processes make these tiny runs ~10x slower (spinning OpenMP barriers)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.usefixtures("one_thread")
def test_rerun_after_a_kill_runs_only_the_missing_rows(tmp_path: Path) -> None:
    """fcrn.t1's two ResNet-50 rows plus an eval-only row under smoke; then one row's result is lost."""
    spec = load_table("fcrn.t1")
    eval_row = Row(name="os16_at_os8", paper={"mIoU": 0.0}, eval_of="r50_os16_k3_d6",
                   eval_overrides=("inference.flip=true",))
    spec = dataclasses.replace(spec, rows=(spec.row("r50_os16_k3_d6"), spec.row("r50_os8_k3_d6"), eval_row))
    smoke, base_dir = load_profile("smoke"), tmp_path / "table"
    first = run_table(spec, smoke, base_dir=base_dir, quiet=True)
    assert first.ok, first.failed
    assert sorted(first.ran) == ["os16_at_os8/seed0", "r50_os16_k3_d6/seed0", "r50_os8_k3_d6/seed0"]
    kept, lost = base_dir / "r50_os16_k3_d6" / "seed0", base_dir / "r50_os8_k3_d6" / "seed0"
    evaluated = json.loads((base_dir / "os16_at_os8" / "seed0" / "metrics.json").read_text())
    assert evaluated["ckpt"].endswith("r50_os16_k3_d6/seed0/checkpoints/last.ckpt")
    assert not list(kept.glob("checkpoints/*.ckpt"))  # smoke keeps no checkpoints once evaluated
    mtime = (kept / "metrics.json").stat().st_mtime_ns
    (lost / "metrics.json").unlink()  # as if killed before the row finished

    second = run_table(spec, smoke, base_dir=base_dir, quiet=True)
    assert second.ok, second.failed
    assert second.ran == ["r50_os8_k3_d6/seed0"]
    assert sorted(second.skipped) == ["os16_at_os8/seed0", "r50_os16_k3_d6/seed0"]
    assert (kept / "metrics.json").stat().st_mtime_ns == mtime
    assert (lost / "metrics.json").is_file()


@pytest.mark.usefixtures("one_thread")
def test_staged_rows_train_from_their_source_and_rerun_it_when_its_checkpoint_is_gone(tmp_path: Path) -> None:
    """a -> b (init_from a) -> c (eval of b) under smoke: b starts from a's last.ckpt; smoke prunes every
    checkpoint once used, so losing c's result retrains b and, for b's start point, a as well."""
    text = STAGED.replace("metrics: [mIoU]\n", "metrics: [mIoU]\nbase: [backbone=resnet18, head=fcn]\n")
    spec, smoke = load_spec(write_spec(tmp_path, text.replace("[backbone=resnet18]", "[head.dropout=0.0]"))), \
        load_profile("smoke")
    base_dir = tmp_path / "runs"
    first = run_table(spec, smoke, base_dir=base_dir, quiet=True)
    assert first.ok, first.failed
    assert first.ran == ["a/seed0", "b/seed0", "c/seed0"]
    a_ckpt = base_dir / "a" / "seed0" / "checkpoints" / "last.ckpt"
    b_record = json.loads((base_dir / "b" / "seed0" / "table_row.json").read_text())
    assert f"model.init_from={a_ckpt}" in b_record["overrides"] and b_record["source"] == str(a_ckpt.parent.parent)
    b_config = OmegaConf.load(base_dir / "b" / "seed0" / ".hydra" / "config.yaml")
    assert b_config.model.init_from == str(a_ckpt) and b_config.schedule.lr == 0.001
    c_metrics = json.loads((base_dir / "c" / "seed0" / "metrics.json").read_text())
    assert c_metrics["ckpt"] == str(base_dir / "b" / "seed0" / "checkpoints" / "last.ckpt")
    assert not list(base_dir.glob("*/seed0/checkpoints/*.ckpt"))

    again = run_table(spec, smoke, base_dir=base_dir, quiet=True)
    assert again.ran == [] and sorted(again.skipped) == ["a/seed0", "b/seed0", "c/seed0"]
    (base_dir / "c" / "seed0" / "metrics.json").unlink()
    third = run_table(spec, smoke, base_dir=base_dir, quiet=True)
    assert third.ok, third.failed
    assert third.ran == ["a/seed0", "b/seed0", "c/seed0"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_dry_run_says_a_finished_row_reruns_when_its_source_does(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """a -> b (init_from a) -> c (eval of b): a's result lost, b and c finished. The run retrains a, then b and c
    (they start from a's new checkpoint); the dry run must say so, not "done (skip)"."""
    text = STAGED.replace("metrics: [mIoU]\n", "metrics: [mIoU]\nbase: [backbone=resnet18, head=fcn]\n")
    spec = load_spec(write_spec(tmp_path, text.replace("[backbone=resnet18]", "[head.dropout=0.0]")))
    profile = dataclasses.replace(load_profile("smoke"), checkpoints="keep")
    base_dir = tmp_path / "runs"
    assert run_table(spec, profile, base_dir=base_dir, quiet=True).ok
    (base_dir / "a" / "seed0" / "metrics.json").unlink()
    capsys.readouterr()
    run_table(spec, profile, base_dir=base_dir, quiet=True, dry_run=True)
    states = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ") and line.split()[0] in ("a/seed0", "b/seed0", "c/seed0")}
    assert states["b/seed0"].startswith("run (source reruns)") and states["c/seed0"].startswith("run (source reruns)")
    assert not states["a/seed0"].startswith("done")
    real = run_table(spec, profile, base_dir=base_dir, quiet=True)
    assert real.ok, real.failed
    assert real.ran == ["a/seed0", "b/seed0", "c/seed0"]


@pytest.mark.usefixtures("one_thread")
def test_run_ends_by_writing_the_report_under_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`segexp-table run deeplabv3.t5 --rows mg111` (smoke) writes the scratch report, not experiments/results."""
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path))
    results_before = tree(RESULTS_DIR)
    assert cli.main(["run", "deeplabv3.t5", "--profile", "smoke", "--rows", "mg111", "--quiet"]) == 0
    reports = tmp_path / "tables" / "reports"
    assert sorted(p.name for p in reports.iterdir()) == [f"deeplabv3.t5.smoke.{s}" for s in ("csv", "md", "png")]
    assert f"deeplabv3.t5 [smoke] report: {reports}/deeplabv3.t5.smoke.md" in capsys.readouterr().out
    md = (reports / "deeplabv3.t5.smoke.md").read_text()
    assert f"| `{tmp_path}/tables/deeplabv3.t5/smoke/mg111/seed0` |" in md
    assert md.count("| missing |") == 4  # the other rows were not asked for
    assert tree(RESULTS_DIR) == results_before


FAILING_ROW_TABLE = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
base: [backbone=resnet18, head=fcn]
rows:
  - name: single
    paper: {mIoU: 50.0}
  - name: broken
    overrides: ['loss.class_weights=[1.0,2.0]']
    paper: {mIoU: 50.0}
"""


@pytest.mark.usefixtures("one_thread")
def test_a_failing_row_is_reported_from_its_job_status_file(tmp_path: Path) -> None:
    """One multirun, one good and one failing row: the runner reads each job's outcome from the job_status.json
    Hydra's job callback wrote, not from the launcher's output; a job that never started gets the exit code."""
    spec, smoke, runs = load_spec(write_spec(tmp_path, FAILING_ROW_TABLE)), load_profile("smoke"), tmp_path / "runs"
    result = run_table(spec, smoke, base_dir=runs, quiet=True)
    assert result.ran == ["single/seed0"] and list(result.failed) == ["broken/seed0"]
    message = "ValueError: loss.class_weights has 2 entries but the model"
    assert result.failed["broken/seed0"].startswith(message)
    assert re.search(r" \(log: .*_logs/train-\d{8}-\d{6}\.log\)$", result.failed["broken/seed0"])
    status = json.loads((runs / "broken" / "seed0" / "job_status.json").read_text())
    assert status["status"] == "FAILED" and status["error_type"] == "ValueError"
    assert status["error"].startswith(message) and status["overrides"] == ["+table_row=broken/seed0"]
    assert json.loads((runs / "single" / "seed0" / "job_status.json").read_text())["status"] == "COMPLETED"

    job, log = plan_train_job(spec, spec.row("broken"), smoke, 0, runs), tmp_path / "sweep.log"
    (job.run_dir / "error.json").unlink()  # the status file alone names the error
    alone = RunResult(table=spec.id, profile=smoke.name)
    runner.collect([job], 1, log, alone)
    assert alone.failed["broken/seed0"].startswith(message)
    (job.run_dir / "job_status.json").unlink()  # as if the job never started
    never = RunResult(table=spec.id, profile=smoke.name)
    runner.collect([job], 1, log, never)
    assert never.failed["broken/seed0"] == f"exit code 1, no metrics.json (log: {log})"


def test_the_job_status_callback_records_how_each_job_ended(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from segexp.cli.job_status import JobStatusFile

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path / "job")}}})
    path, callback = tmp_path / "job" / "job_status.json", JobStatusFile()
    failed = JobReturn(overrides=["head.rates=[1]"], status=JobStatus.FAILED,
                       _return_value=ValueError("head.rates: too few"))
    callback.on_job_end(config, failed)
    assert json.loads(path.read_text()) == {"status": "FAILED", "overrides": ["head.rates=[1]"],
                                            "error_type": "ValueError", "error": "ValueError: head.rates: too few"}
    callback.on_job_start(config)  # a new job in the same folder: the old status is gone
    assert not path.exists()
    callback.on_job_end(config, JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=0.5))
    assert json.loads(path.read_text()) == {"status": "COMPLETED", "overrides": []}
    assert "Error executing job" not in capsys.readouterr().err  # the exception was read, not re-raised
    assert sorted(p.name for p in path.parent.iterdir()) == ["job_status.json"]


def test_report_points_a_test_server_row_to_its_predictions(tmp_path: Path) -> None:
    spec, full = load_table("deeplabv3.t7"), load_profile("full")
    fabricate(tmp_path, "trainval_os8", 0, {"mIoU": 0.9})
    fabricate(tmp_path, "deeplabv3", 0, {"mIoU": None, "labelled": False, "num_predictions": 1456,
                                         "predictions_dir": str(tmp_path / "deeplabv3" / "seed0" / "predictions")})
    md = write_report(spec, full, base_dir=tmp_path, results_dir=tmp_path)["md"].read_text()
    assert (f"| 85.70 | scored by the evaluation server: submit 1456 PNGs in "
            f"`{tmp_path}/deeplabv3/seed0/predictions` | — |") in md
    assert "| `trainval_os8` stage: VOC trainval" in md and "| — | 90.00 | — |" in md


def test_report_says_why_a_profile_did_not_run_a_row(tmp_path: Path) -> None:
    spec, smoke = load_table("deeplabv3.t11"), load_profile("smoke")
    fabricate(tmp_path, "workers1", 0, {"mIoU": 0.5})
    (tmp_path / "workers4").mkdir()
    (tmp_path / "workers4" / "not_run.json").write_text(json.dumps({"reason": "needs 4 processes"}))
    md = write_report(spec, smoke, base_dir=tmp_path, results_dir=tmp_path)["md"].read_text()
    assert "| 76.79 | not run: needs 4 processes |" in md and "| 77.02 | missing |" in md


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("table_id", [s.id for s in load_all() if s.ready])
def test_every_ready_table_runs_under_smoke(table_id: str, tmp_path: Path) -> None:
    spec, smoke = load_table(table_id), load_profile("smoke")
    result = run_table(spec, smoke, base_dir=tmp_path / "runs", quiet=True)
    assert result.ok, result.failed
    too_big = {name for name, why in result.not_run.items() if "processes; profile smoke runs at most 2" in why}
    assert too_big == ({"workers4", "workers8", "workers16", "workers32"} if table_id == "deeplabv3.t11" else set())
    expected = {f"{r.name}/seed0" for r in spec.rows if r.runnable and r.name not in too_big}
    assert set(result.ran) == expected
    md = write_report(spec, smoke, base_dir=tmp_path / "runs", results_dir=tmp_path)["md"].read_text()
    assert md.count("| missing") == 0 and md.count("| failed") == 0
    assert all(f"`{tmp_path}/runs/{label}`" in md for label in expected)


@pytest.mark.slow
def test_distributed_row_runs_as_its_own_process(tmp_path: Path) -> None:
    """A 2-rank DDP row (gloo on CPU) is launched as one plain process; Lightning starts the second rank."""
    spec = dataclasses.replace(load_table("fcrn.t1"), rows=(load_table("fcrn.t1").row("r50_os16_k3_d6"),))
    extra = ["trainer.strategy=ddp", "trainer.devices=2"]
    result = run_table(spec, load_profile("smoke"), base_dir=tmp_path, extra=extra, quiet=True)
    assert result.ok, result.failed
    metrics = json.loads((tmp_path / "r50_os16_k3_d6" / "seed0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["effective_batch"] == 4
    assert [p.name for p in (tmp_path / "_logs").iterdir()][0].startswith("train-r50_os16_k3_d6-seed0-")


SUBMITIT_TABLE = FAILING_ROW_TABLE.replace("  - name: broken\n", """\
  - name: ranks2
    overrides: [trainer=ddp_cpu, trainer.devices=2]
    paper: {mIoU: 50.0}
  - name: broken
""")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_submitit_local_runs_each_rank_as_a_task_and_reads_every_row_back(tmp_path: Path) -> None:
    """Real submitit processes: a 1-process row and a failing row share one sweep, the 2-rank gloo row is a
    second sweep of one submitit job with 2 tasks (one per DDP rank); the runner reads back metrics.json and,
    for the failing row, error.json."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs pip install -e .[cluster]")
    spec, runs = load_spec(write_spec(tmp_path, SUBMITIT_TABLE)), tmp_path / "runs"
    result = run_table(spec, load_profile("smoke"), base_dir=runs, launcher="submitit_local", quiet=True)
    assert sorted(result.ran) == ["ranks2/seed0", "single/seed0"]
    assert list(result.failed) == ["broken/seed0"]
    assert result.failed["broken/seed0"].startswith("ValueError: loss.class_weights has 2 entries but the model")
    assert json.loads((runs / "broken" / "seed0" / "error.json").read_text())["step"] == 0
    metrics = {row: json.loads((runs / row / "seed0" / "metrics.json").read_text()) for row in ("single", "ranks2")}
    assert [(m["world_size"], m["effective_batch"], m["steps"]) for m in metrics.values()] == [(1, 2, 2), (2, 4, 2)]
    assert metrics["ranks2"]["run_dir"] == str(runs / "ranks2" / "seed0")
    task_logs = sorted(p.name.split("_", 1)[1] for p in (runs / ".submitit").glob("*/*_log.out"))
    assert task_logs == ["0_log.out", "0_log.out", "0_log.out", "1_log.out"]  # 3 jobs, the 2-rank one has 2 tasks
    assert sorted(p.name.rsplit("-", 2)[0] for p in (runs / "_logs").iterdir()) == [
        "train-nodes1-tasks_per_node1", "train-nodes1-tasks_per_node2"]


def test_a_per_class_table_is_reported_with_classes_as_columns(tmp_path: Path) -> None:
    spec, smoke = load_table("fcrn.t6"), load_profile("smoke")
    base_dir = tmp_path / "runs"
    classes = [m.removeprefix("per_class_iou.") for m in spec.metrics if m.startswith("per_class_iou.")]
    ious = {name: 0.5 + i / 100 for i, name in enumerate(classes)}  # road 50.00, sidewalk 51.00, ...
    fabricate(base_dir, "fcrn", 0, {"mIoU": 0.6, "per_class_iou": ious})
    paths = write_report(spec, smoke, base_dir=base_dir, results_dir=tmp_path / "results")
    md = paths["md"].read_text()
    assert "## per-class IoU" in md and "| row | | road | sidewalk | building |" in md
    paper = spec.row("fcrn").paper
    assert f"| paper | {paper['per_class_iou.road']:.2f} | {paper['per_class_iou.sidewalk']:.2f} |" in md
    assert "| | measured | 50.00 | 51.00 | 52.00 |" in md
    bootstrap = md.splitlines()[md.splitlines().index(next(ln for ln in md.splitlines()
                                                             if ln.startswith("| `fcrn_bootstrap`"))) + 1]
    assert bootstrap.startswith("| | measured | missing | missing |")
    assert "## mIoU" in md and "## per_class_iou.road" not in md  # mIoU keeps its detailed table
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_the_seeds_of_a_row_share_its_config_hash_and_all_reach_the_report(tmp_path: Path) -> None:
    spec, proxy = load_table("pacbal.t3"), load_profile("smoke")
    row = spec.row("deeplabv3")
    jobs = [plan_train_job(spec, row, proxy, seed, tmp_path) for seed in (0, 1)]
    assert jobs[0].config_hash == jobs[1].config_hash and jobs[0].run_dir != jobs[1].run_dir
    base_dir = tmp_path / "runs"
    for seed, miou in ((0, 0.70), (1, 0.72)):
        fabricate(base_dir, "deeplabv3", seed, {"mIoU": miou}, config_hash_=jobs[seed].config_hash)
    md = write_report(spec, proxy, base_dir=base_dir, results_dir=tmp_path)["md"].read_text()
    assert "| 76.68 | 71.00 ± 1.41 (n=2) |" in md and "older config" not in md


def test_extra_settings_make_a_profile_of_their_own_and_never_touch_the_evidence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`segexp-table run prb.t3 --profile proxy -- trainer.max_steps=2 backbone=resnet18` is not the proxy
    profile's evidence: its runs go to a folder of their own, every row says so, and its report is scratch."""
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "out"))
    results_before = tree(RESULTS_DIR)
    spec, proxy = load_table("prb.t3"), load_profile("proxy")
    extra = ["trainer.max_steps=2", "backbone=resnet18"]
    custom = with_extra_settings(proxy, extra)
    assert custom.name.startswith("proxy+custom-") and not custom.evidence and custom.base == "proxy"
    assert with_extra_settings(proxy, []) is proxy and with_extra_settings(custom, extra) is custom
    assert with_extra_settings(proxy, ["trainer.max_steps=3"]).name != custom.name

    assert cli.main(["run", "prb.t3", "--profile", "proxy", "--rows", "baseline", "--dry-run", "--", *extra]) == 0
    assert f"prb.t3 [{custom.name}] -> " in capsys.readouterr().out
    plan = runner.plan_table(spec, proxy, rows=["baseline"], extra=extra)
    assert plan.how.base_dir == tmp_path / "out" / "tables" / "prb.t3" / custom.name
    job = plan.trained["baseline", 0]
    assert any("extra settings over profile proxy: trainer.max_steps=2 backbone=resnet18" in w for w in job.warnings)

    run_dir = fabricate(plan.how.base_dir, "baseline", 0, {"mIoU": 0.04})
    record = json.loads((run_dir / "table_row.json").read_text())
    (run_dir / "table_row.json").write_text(json.dumps({**record, "extra": extra, "warnings": list(job.warnings)}))
    paths = write_report(spec, custom)
    assert paths["md"].parent == tmp_path / "out" / "tables" / "reports"
    assert paths["md"].name == f"prb.t3.{custom.name}.md"
    assert "extra settings over profile proxy" in paths["md"].read_text()
    # the same runs reported under the evidence profile itself (e.g. by hand) still stay out of results/
    assert write_report(spec, proxy, base_dir=plan.how.base_dir)["md"].parent == tmp_path / "out" / "tables" / "reports"
    assert tree(RESULTS_DIR) == results_before


def test_a_copied_spec_outside_experiments_runs_under_its_own_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tracked = (EXPERIMENTS_DIR / "deeplabv3" / "t5.yaml").read_text()
    same_name = tmp_path / "t5.yaml"
    same_name.write_text(tracked.replace("id: deeplabv3.t5", "id: deeplabv3.t5"))
    with pytest.raises(SpecError, match=r"'deeplabv3.t5' is a tracked table of experiments/deeplabv3/: give the copy"):
        load_table(str(same_name))
    copy = tmp_path / "t5_mine.yaml"
    copy.write_text(tracked.replace("id: deeplabv3.t5", "id: deeplabv3.t5_mine"))
    spec = load_table(str(copy))
    assert spec.id == "deeplabv3.t5_mine" and spec.protocol == load_table("deeplabv3.t5").protocol  # the paper's card
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "out"))
    assert cli.main(["run", str(copy), "--profile", "smoke", "--rows", "mg111", "--dry-run"]) == 0
    assert f"deeplabv3.t5_mine [smoke] -> {tmp_path}/out/tables/deeplabv3.t5_mine/smoke" in capsys.readouterr().out
    with pytest.raises(SpecError, match=r"nowhere.yaml: no such spec file"):
        load_table(str(tmp_path / "nowhere.yaml"))


def test_a_row_identity_ignores_settings_at_their_declared_default_and_sees_every_other_change() -> None:
    """A key that conf/ gains with the default that keeps the old behaviour changes no finished row's hash; any
    value a row runs with that differs, a default changed in conf/, and a value put back to its default do."""
    import hashlib

    from omegaconf import open_dict

    from segexp.tables.plan import compose, config_hash, legacy_config_hash, recorded_target_names

    spec = load_table("deeplabv3.t5")
    cfg = compose(train_overrides(spec, spec.row("mg111"), load_profile("smoke")), 0)
    without = cfg.copy()
    with open_dict(without):  # as conf/ was before data.val_limit / normalize_on_device were written into it
        del without.data["val_limit"], without.data["normalize_on_device"]
        without.backbone.pop("frozen_bn")  # a constructor parameter left out: its default (False) applies
    assert config_hash(without) == config_hash(cfg)
    changed = {"data.val_limit": 8, "model.bn_momentum": 0.1, "backbone.frozen_bn": True, "head.rates": [1, 2, 3],
               "data.hflip": False, "schedule.lr": 0.5}
    for key, value in changed.items():
        other = cfg.copy()
        OmegaConf.update(other, key, value, force_add=True)
        assert config_hash(other) != config_hash(cfg), key
    # a row recorded under the old whole-config hash, before conf/ held the new keys, still matches
    before = cfg.copy()
    with open_dict(before):
        del before.data["val_limit"], before.data["normalize_on_device"]
    plain = recorded_target_names(OmegaConf.to_container(before, resolve=True))  # callbacks under their old modules
    for key in ("output_dir", "logger", "ckpt_path", "ckpt", "seed", "resume_changes"):
        plain.pop(key, None)
    old_hash = hashlib.sha256(json.dumps([plain], sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert legacy_config_hash(cfg) == old_hash
    assert config_hash(cfg) != old_hash  # rows written from now on carry the identity hash
