"""Model size and speed rows (segexp.tables.measure, prb Table V): the measurements are added to metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from segexp.models.backbones.resnet import ResNet
from segexp.tables.measure import add_measurements
from segexp.tables.plan import plan_train_job
from segexp.tables.spec import load_profile, load_spec
from tests.helpers.tables import GOOD, write_spec


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
