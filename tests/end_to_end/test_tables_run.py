"""Whole tables run for real (slow): every ready table under ``smoke``, a distributed row in its own process,
submitit's local launcher, and the dry run's account of rows whose source reruns."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from segexp.tables.report import write_report
from segexp.tables.runner import run_table
from segexp.tables.spec import load_all, load_profile, load_spec, load_table
from tests.helpers.tables import FAILING_ROW_TABLE, STAGED, write_spec


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
