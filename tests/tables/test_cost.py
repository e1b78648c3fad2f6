"""What a table costs (segexp.tables.cost) and the real-shape dry runs (segexp.tables.dryrun): the planner's
arithmetic on a stated rate and on a dry run's record, the FLOP count against segexp-info's, a failure at the
real size reported with the row and its shapes, and one row per paper dry-run at its real crop (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from segexp.cli import table as cli
from segexp.config import compose_config
from segexp.tables import cost, dryrun
from segexp.tables.runner import plan_table
from segexp.tables.spec import load_profile, load_spec
from segexp.tables.store import read_json
from tests.helpers.tables import write_spec

PLANNED = """\
id: demo.t1
title: cost arithmetic
paper: demo
dataset: VOC 2012 val
metrics: [mIoU]
base:
  - backbone=resnet18
  - head=fcn
  - dataset=voc
  - trainer=ddp
  - trainer.devices=2
  - data.batch_size=8
  - data.crop_size=[65,65]
  - trainer.max_steps=1000
  - trainer.val_check_interval=300
rows:
  - name: trained
    paper: {mIoU: 1.0}
  - name: evaluated
    eval_of: trained
    eval_overrides: [inference.flip=true]
    paper: {mIoU: 1.0}
"""

TRAIN_FLOPS, EVAL_FLOPS, PARAMS = 10**12, 2 * 10**11, 10**6
"""The per-image FLOPs and parameters the arithmetic tests give every row (counting is tested apart)."""


@pytest.fixture
def costs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[object, object]:
    """(spec, plan) of PLANNED under `full`, with every config costing TRAIN_FLOPS / EVAL_FLOPS per image."""
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setattr(cost, "model_cost", lambda cfg: cost.ModelCost(
        TRAIN_FLOPS, EVAL_FLOPS, PARAMS, (65, 65), (375, 500), 16, 16))
    spec = load_spec(write_spec(tmp_path, PLANNED))
    return spec, plan_table(spec, load_profile("full"), seeds=2)


def test_gpu_hours_at_a_stated_rate_are_the_hand_computed_ones(costs: tuple) -> None:
    spec, plan = costs
    table = cost.table_cost(spec, plan, seeds=2, rate=cost.given_rate(100.0), gpu_mem_gib=80, device="cpu")
    trained, evaluated = table.rows
    # effective batch 8 x 2 devices = 16; validations at steps 300, 600, 900 and the final one at 1000: 4 x 1449
    assert (trained.effective_batch, trained.validations, trained.eval_images) == (16, 4, 5796)
    assert trained.train_pflops == pytest.approx(2 * 1e12 * 16 * 1000 / 1e15)  # 32 PFLOP over 2 seeds
    assert trained.eval_pflops == pytest.approx(2 * 2e11 * 5796 / 1e15)  # 2.3184 PFLOP
    assert trained.gpu_hours == pytest.approx((3.2e16 + 2.3184e15) / 100e12 / 3600)  # 0.095329 h
    assert (evaluated.kind, evaluated.eval_images, evaluated.steps) == ("eval", 1449, 0)
    assert evaluated.gpu_hours == pytest.approx(2 * 2e11 * 1449 / 100e12 / 3600)
    assert table.gpu_hours == pytest.approx(trained.gpu_hours + evaluated.gpu_hours)
    assert trained.rate_source == "--tflops 100" and trained.fits is None  # no dry run: memory not measured


def test_rate_and_memory_come_from_the_rows_dry_run_record(costs: tuple) -> None:
    spec, plan = costs
    job = plan.trained["trained", 0]
    gib = cost.GIB
    record = {"ok": True, "device": "cpu", "precision": "32-true", "batch": 2, "memory_kind": "peak RSS growth",
              "shape_key": cost.shape_key(job.cfg), "train_tflops_measured": 50.0, "eval_tflops_measured": 20.0,
              "train_peak_bytes": 12 * PARAMS + 2 * gib, "eval_peak_bytes": gib}
    path = cost.record_path(spec.id, "trained", "cpu")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    table = cost.table_cost(spec, plan, seeds=2, rate=None, gpu_mem_gib=4.5, device="cpu")
    trained = table.rows[0]
    assert trained.gpu_hours == pytest.approx(3.2e16 / 50e12 / 3600 + 2.3184e15 / 20e12 / 3600)
    assert trained.rate_source == "dry run on cpu (32-true, batch 2)"
    # 1 GiB per image above 12 B/parameter of state, measured at batch 2, scaled to the row's 8 per device
    assert trained.peak_gib == pytest.approx((12 * PARAMS + 8 * gib) / gib)
    assert trained.fits is False and trained.max_batch == math.floor((4.5 * gib - 12 * PARAMS) / gib) == 4
    assert "scaled to 8" in trained.memory_source
    assert table.rows[1].gpu_hours is None  # the eval-only row has no record and no --tflops
    record["shape_key"] = "another config"
    path.write_text(json.dumps(record))
    stale = cost.table_cost(spec, plan, seeds=2, rate=None, gpu_mem_gib=4.5, device="cpu").rows[0]
    assert stale.gpu_hours is None and "was made for another config: not used" in stale.notes[0]


def test_memory_rule_and_largest_batch() -> None:
    state = cost.STATE_BYTES_PER_PARAM * 1000
    assert cost.memory_at_batch(state + 300.0, 3, 1000, 3) == state + 300.0  # measured at that batch: as is
    assert cost.memory_at_batch(state + 300.0, 3, 1000, 16) == state + 1600.0  # 100 bytes per image
    assert cost.largest_batch(state + 300.0, 3, 1000, state + 1650.0) == 16


def test_validations_count_the_final_one() -> None:
    cfg = compose_config(["trainer.max_steps=30000", "trainer.val_check_interval=5000"])
    assert cost.validations(cfg) == 6
    cfg = compose_config(["trainer.max_steps=1000", "trainer.val_check_interval=300"])
    assert cost.validations(cfg) == 4
    cfg = compose_config(["trainer.max_steps=1000", "trainer.limit_val_batches=0"])
    assert cost.validations(cfg) == 0


INFO_R101_OS16_513 = 142_122_775_424
"""``segexp-info backbone=resnet101 head=aspp dataset=voc data.crop_size=[513,513]``: 142.123 GFLOPs per crop
(its forward_flops, counted on real CPU tensors; checked against segexp-info itself in the slow test below)."""
R101 = ["backbone=resnet101", "head=aspp", "dataset=voc", "data.crop_size=[513,513]", "backbone.output_stride=16",
        "inference.pad_to=[513,513]"]


def test_flops_of_deeplabv3_r101_os16_at_513_are_segexp_infos() -> None:
    counted = cost.model_cost(compose_config(R101))
    assert counted.eval_flops == INFO_R101_OS16_513  # one padded 513x513 pass; interpolation and softmax: 0
    assert counted.train_flops == 3 * INFO_R101_OS16_513  # forward + backward ~ 3 x forward; CE counts 0
    assert (counted.train_output_stride, counted.eval_output_stride) == (16, 16)


def test_eval_flops_count_scales_flips_and_shifted_passes() -> None:
    small = ["backbone=resnet18", "head=fcn", "dataset=voc", "data.crop_size=[65,65]", "inference.pad_to=[513,513]"]
    plain = cost.model_cost(compose_config(small)).eval_flops
    flipped = cost.model_cost(compose_config([*small, "inference.flip=true"])).eval_flops
    scaled = cost.model_cost(compose_config([*small, "inference.scales=[0.5,1.0]"])).eval_flops
    shifted = cost.model_cost(compose_config([*small, "inference.shift_passes=2"])).eval_flops
    assert flipped == 2 * plain
    assert plain < scaled < 1.3 * plain  # + a quarter-size pass (257x257: a little over a quarter)
    assert shifted > 3.9 * plain  # four passes on 513x513 shifted by half a stride (each a little larger)


@pytest.mark.slow
def test_meta_count_equals_segexp_info_at_513() -> None:
    from segexp.cli.info import model_summary

    summary = model_summary(compose_config(R101))
    assert summary["gflops_per_crop"] == round(INFO_R101_OS16_513 / 1e9, 3)


SHAPE_FAILURE = """\
id: demo.t1
title: a setting that only breaks at the real image size
paper: demo
dataset: VOC 2012 val
metrics: [mIoU]
base:
  - backbone=resnet18
  - backbone.output_stride=32
  - head=fcn
  - dataset=voc
  - trainer=gpu
  - data.crop_size=[64,64]
  - data.batch_size=2
rows:
  - name: padded_too_small
    overrides:
      - inference.pad_to=[321,321]
    paper: {mIoU: 1.0}
"""


def test_a_shape_failure_at_the_real_size_names_the_row_and_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Under smoke (64x64 scenes, pad_to null) this row passes; at VOC's 375x500 its test padding is too small."""
    monkeypatch.setenv("SEGEXP_OUTPUT_DIR", str(tmp_path / "outputs"))
    spec = load_spec(write_spec(tmp_path, SHAPE_FAILURE))
    [outcome] = dryrun.dry_run_table(spec, None, batch=None)
    line = dryrun.outcome_line(outcome)
    assert not outcome.ok
    assert line.startswith("FAILED demo.t1 padded_too_small [train crop 64x64, batch 2 per device, OS 32")
    assert "eval 375x500 padded to 321x321" in line
    assert "ValueError: inference.pad_to=[321, 321] is smaller than a test image of 375x500" in line
    record = read_json(cost.record_path("demo.t1", "padded_too_small", "cpu"))
    assert record["ok"] is False and record["error"] in line
    assert line in capsys.readouterr().out


def test_one_device_gets_two_images_where_image_pooling_batchnorm_needs_them() -> None:
    """DeepLabv3 Table 11's 16-worker row trains 1 image per device (its SyncBN sees 16); one device cannot."""
    pooled = compose_config(["backbone=resnet18", "head=aspp", "head.image_pooling=true", "dataset=voc",
                             "trainer=ddp", "trainer.devices=16", "data.batch_size=1"])
    cfg, notes = dryrun.device_config(pooled, batch=None)
    assert cfg.data.batch_size == 2 and cfg.trainer.devices == 1 and cfg.trainer.sync_batchnorm is False
    assert any("BatchNorm needs two values" in note for note in notes)
    assert any("one of the row's 16 processes" in note for note in notes)
    plain, _ = dryrun.device_config(compose_config(["backbone=resnet18", "head=fcn", "dataset=voc"]), batch=1)
    assert plain.data.batch_size == 1 and plain.trainer.precision == "32-true"  # a CPU: fp32
    evaluated, _ = dryrun.device_config(pooled, batch=1, train=False)
    assert evaluated.data.batch_size == 1  # an eval-only row keeps its settings (the batch is not used)


def test_synthetic_scenes_have_the_datasets_size_and_class_ids() -> None:
    from segexp.data.datasets.ade20k import ADE20K

    scenes = dryrun.scenes_like(ADE20K)(split="val", num_images=2, height=40, width=70)
    image, label = scenes.load_sample(0)
    assert image.shape == (40, 70, 3) and label.shape == (40, 70)
    assert len(scenes.CLASSES) == 150 and set(label.ravel()) <= {0, 30, 60, 89, 119, 149}
    assert list(dryrun.class_ids(np.arange(6, dtype="uint8"), 3)) == [0, 1, 2, 2, 2, 2]


def test_plan_prints_the_cost_and_writes_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "model_cost", lambda cfg: cost.ModelCost(
        TRAIN_FLOPS, EVAL_FLOPS, PARAMS, (513, 513), (375, 500), 16, 16))
    csv_path, json_path = tmp_path / "cost.csv", tmp_path / "cost.json"
    assert cli.main(["plan", "deeplabv3.t4", "--tflops", "100", "--csv", str(csv_path), "--json",
                     str(json_path)]) == 0
    out = capsys.readouterr().out
    # os16 trains 16 x 30000 images and validates 6 x 1449; three eval-only rows score 1449 images each
    expected = (1e12 * 16 * 30000 + 2e11 * 1449 * 9) / 100e12 / 3600
    assert f"{expected:,.1f} GPU-hours = {expected / 8:,.1f} h on one 8-GPU node" in out
    assert "throughput: --tflops 100" in out
    assert csv_path.read_text().splitlines()[0].startswith("table,row,kind,seeds")
    assert json.loads(json_path.read_text())["total"]["gpu_hours"] == pytest.approx(expected)




