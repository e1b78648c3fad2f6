"""Every paper's heaviest kind of row dry-runs at its real crop on the CPU (segexp.tables.dryrun, slow): the record
names the row's crop, eval image, batch and precision, and the cost planner reads it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from segexp.tables import cost, dryrun
from segexp.tables.runner import plan_table
from segexp.tables.spec import load_profile, load_table

DRY_RUN_ROWS = [("deeplabv3.t1", "os256"), ("prb.t1", "d256"), ("msattn.t3", "ours"), ("pacbal.t3", "bal"),
                ("fcrn.t3", "train16_test4")]
"""One row per paper: OS 256 on 513 crops; the pyramid residual block; the two-scale attention on ADE20K's
150 classes (its 0.5x stream); the boundary-aware loss on 513x513 labels (ASPP image pooling: batch 2); FCRN's
four shifted passes at test time (an eval-only row)."""


@pytest.mark.slow
@pytest.mark.parametrize(("table", "row"), DRY_RUN_ROWS)
def test_one_row_per_paper_dry_runs_at_its_real_crop_on_the_cpu(table: str, row: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "outputs"))
    spec = load_table(table)
    [outcome] = [o for o in dryrun.dry_run_table(spec, [row], batch=1) if o.row == row]
    record = outcome.record
    assert outcome.ok, dryrun.outcome_line(outcome)
    full = plan_table(spec, load_profile("full"), rows=[row])
    job = next(j for j in [*full.trained.values(), *full.evals] if j.row.name == row)
    trained = full.trained[(job.row.eval_of or row, 0)].cfg
    assert record["crop"] == list(trained.data.crop_size)  # the row's real crop
    assert record["eval_image"] == list(cost.dataset_shape(trained).image_size)
    trained_batch = 2 if row == "bal" else 1  # ASPP's image-level BatchNorm needs two values
    assert record["batch"] == (trained_batch if job.kind == "train" else trained.data.batch_size)
    assert record["precision"] == "32-true"
    assert record["eval_peak_bytes"] > 0 and record["eval_gflops_per_image"] > 0 and len(record["eval_batch_s"]) == 2
    if job.kind == "train":
        assert record["train_peak_bytes"] > 0 and len(record["train_step_s"]) == 2
    assert cost.read_record(table, row, "cpu") == record
