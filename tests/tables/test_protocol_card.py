"""Protocol cards (segexp.tables.card) and `segexp-table plan`: every setting a `full` row composes is the
card's (the paper's, or a stated choice), the row's own ablated setting, or refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from segexp.cli import table as cli
from segexp.tables.card import CARD_KEYS, EFFECTIVE_BATCH, missing_settings, same_value
from segexp.tables.plan import plan_train_job
from segexp.tables.runner import check_cards
from segexp.tables.spec import CardEntry, load_all, load_profile, load_table
from segexp.tables.yaml_reader import SpecError
from tests.helpers.tables import assert_spec_error, full_jobs, write_spec

READY = [spec.id for spec in load_all() if spec.ready]




@pytest.mark.parametrize("table", READY)
def test_every_ready_table_cards_every_setting(table: str) -> None:
    spec = load_table(table)
    for row in spec.rows:
        assert missing_settings(spec.protocol_of(row).card) == [], f"{table} {row.name}"


@pytest.mark.parametrize("table", READY)
def test_every_full_row_composes_its_card_or_ablates_the_setting(table: str) -> None:
    _, jobs = full_jobs(table)
    problems = [f"{job.label}: {p}" for job in jobs for p in job.card_problems]
    assert problems == []
    for job in jobs:
        assert {line.key for line in job.card} >= set(CARD_KEYS)


def test_same_value_compares_yaml_values() -> None:
    assert same_value(1e-4, 0.0001) and same_value([513, 513], (513, 513)) and same_value(16, 16.0)
    assert not same_value(True, 1) and not same_value([1, 2], [1, 2, 3]) and not same_value("32-true", "bf16-mixed")


CARDED = """\
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
base: [dataset=synthetic, trainer=cpu, data.batch_size=2]
protocol:
  card:
    trainer.precision: {value: 32-true, source: "Sec. 1: fp32"}
    data.crop_size: {value: [64, 64], source: "Sec. 2: crop 64"}
    effective_batch: {value: 2, source: "Sec. 2: batch 2"}
rows:
  - name: base
    overrides: ['data.crop_size=[64,64]']
    paper: {mIoU: 1.0}
  - name: bigger
    overrides: ['data.crop_size=[96,96]']
    paper: {mIoU: 2.0}
  - name: drifted
    overrides: [trainer.precision=bf16-mixed]
    paper: {mIoU: 2.0}
"""


def test_a_row_that_composes_another_value_than_the_card_is_refused_unless_allowed(tmp_path: Path) -> None:
    write_spec(tmp_path, CARDED)
    spec = load_table("demo.t1", root=tmp_path)
    full = dataclasses.replace(load_profile("full"), overrides=(), check_protocol=True)
    base = plan_train_job(spec, spec.row("base"), full, 0, tmp_path, extra=["data.crop_size=[32,32]"])
    assert base.card_problems == ("data.crop_size=[32,32] contradicts the protocol card ([64,64]; Sec. 2: crop 64)",)
    bigger = plan_train_job(spec, spec.row("bigger"), full, 0, tmp_path)
    assert bigger.card_problems == ()  # the row's own ablated setting
    assert {line.key: line.set_by_row for line in bigger.card}["data.crop_size"]
    with pytest.raises(SpecError, match=r"base/seed0: data.crop_size=\[32,32\] contradicts"):
        check_cards([base, bigger], allow_deviations=False)
    check_cards([base, bigger], allow_deviations=True)  # warned, not refused


def test_card_entries_state_their_source_and_deviations_are_choices(tmp_path: Path) -> None:
    path = write_spec(tmp_path, CARDED.replace('source: "Sec. 1: fp32"', 'source: ""'))
    assert_spec_error(path, "protocol.card.trainer.precision.source", "must not be empty")
    path = write_spec(tmp_path, CARDED.replace('{value: 32-true, source: "Sec. 1: fp32"}',
                                               '{value: bf16-mixed, paper: 32-true, source: "Sec. 1"}'))
    assert_spec_error(path, "protocol.card.trainer.precision.source", "start the source with 'chosen:'")
    path = write_spec(tmp_path, CARDED.replace('{value: 32-true, source: "Sec. 1: fp32"}', '{source: "Sec. 1"}'))
    assert_spec_error(path, "protocol.card.trainer.precision.value", "required key is missing")
    path = write_spec(tmp_path, CARDED.replace('{value: 32-true, source: "Sec. 1: fp32"}',
                                               '{value: 1, source: x, papr: 2}'))
    assert_spec_error(path, "protocol.card.trainer.precision.papr", "unknown key (did you mean 'paper'?)")


def test_the_paper_card_is_the_base_of_every_table_and_the_shorthands_set_their_values(tmp_path: Path) -> None:
    write_spec(tmp_path, CARDED.replace("protocol:\n", "protocol:\n  effective_batch: 4\n"))
    (tmp_path / "demo" / "card.yaml").write_text(
        "paper: demo\ncard:\n  trainer.max_steps: {value: 100, source: 'Sec. 3: 100 iterations'}\n"
        "  data.crop_size: {value: [8, 8], source: 'Sec. 9'}\n")
    spec = load_table("demo.t1", root=tmp_path)
    card = spec.protocol_of(spec.row("base")).card
    assert card["trainer.max_steps"] == CardEntry(100, "Sec. 3: 100 iterations")
    assert card["data.crop_size"].source == "Sec. 2: crop 64"  # the table's entry wins
    assert card[EFFECTIVE_BATCH] == CardEntry(4, "Sec. 2: batch 2")  # shorthand value, the entry's source
    (tmp_path / "demo" / "card.yaml").write_text("paper: other\ncard: {}\n")
    assert_spec_error(tmp_path / "demo" / "card.yaml", "paper", "must be 'demo'",
                      load=lambda: load_table("demo.t1", root=tmp_path))


def test_plan_prints_the_card_the_runs_and_the_hole_algorithm(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "deeplabv3.t4", "--profile", "full"]) == 0
    out = capsys.readouterr().out
    assert "Protocol card" in out and "Runs (1 training, 3 evaluation):" in out
    for row in ("os8", "ms", "ms_flip"):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{row}/seed0"))
        assert "eval  of os16: gpu x 1 device(s) x 1 node(s) = 1 process(es), bf16-mixed" in line
    assert out.count("eval OS 8 (the OS-16 weights; strides removed by the hole algorithm") == 3
    assert "Contradictions of the card (0; `run` refuses them):" in out


def test_the_report_prints_the_card_and_the_environment_the_runs_ran_with(tmp_path: Path) -> None:
    from segexp.tables.report import write_report
    from tests.helpers.tables import fabricate

    carded = CARDED.replace("    overrides: ['data.crop_size=[96,96]']\n", "    overrides: ['data.crop_size=[96,96]']\n"
                            "    protocol: {statements: {crop_choice: 'chosen: a larger crop for this row only'}}\n")
    write_spec(tmp_path, carded.replace('source: "Sec. 1: fp32"',
                                        'paper: 32-true, source: "chosen: faster"').replace("value: 32-true",
                                                                                             "value: bf16-mixed"))
    spec = load_table("demo.t1", root=tmp_path)
    env = {"torch": "2.13.0", "numpy": "2.4.6", "cuda": None}
    for row in ("base", "bigger"):
        fabricate(tmp_path / "runs", row, 0, {"mIoU": 0.5, "environment": env})
    md = write_report(spec, load_profile("smoke"), base_dir=tmp_path / "runs", results_dir=tmp_path / "r")["md"]
    text = md.read_text()
    assert "- **bigger** / **crop_choice**: chosen: a larger crop for this row only\n" in text  # a row's statement
    assert "- environment: numpy 2.4.6, torch 2.13.0\n" in text
    assert "## protocol card" in text
    assert "| precision | `trainer.precision` | bf16-mixed | 32-true | chosen: faster |" in text
    assert "| crop | `data.crop_size` | [64,64] |  | Sec. 2: crop 64 |" in text
    assert "| label resolution | `model.downsample_labels` | (not carded) | | |" in text
    assert "Profile **smoke** is not this protocol: it drops the rows' settings of `dataset`" in text
