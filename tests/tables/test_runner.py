"""``segexp-table run`` (segexp.tables.runner): one run per table at a time, resuming killed rows, launch commands
(one sweep, one process per row, submitit), staged rows, failing rows, seeds, extra settings and copied specs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from segexp.cli import table as cli
from segexp.tables import runner
from segexp.tables.launch import Launch, single_command, sweep_command
from segexp.tables.lock import table_lock
from segexp.tables.paths import EXPERIMENTS_DIR, RESULTS_DIR
from segexp.tables.plan import NotRunUnderProfile, plan_eval_job, plan_train_job
from segexp.tables.report import write_report
from segexp.tables.runner import RunResult, can_resume, launch, prepare, run_table
from segexp.tables.spec import Row, load_profile, load_spec, load_table, with_extra_settings
from segexp.tables.yaml_reader import SpecError
from tests.helpers.tables import FAILING_ROW_TABLE, STAGED, fabricate, tree, write_spec


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
