"""Table specs and profiles (segexp.tables.spec): every catalog table has a spec that loads, its paper values are
filled in, and schema errors name the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segexp.config import REPO_ROOT
from segexp.tables.runner import select_rows, training_stages
from segexp.tables.spec import load_all, load_profile, load_spec, load_table
from segexp.tables.yaml_reader import SpecError
from tests.helpers.tables import GOOD, STAGED, assert_spec_error, write_spec

CATALOG = REPO_ROOT.parent / "shared" / "papers" / "README.md"


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


def test_every_catalog_table_is_ready() -> None:
    assert [s.id for s in load_all() if not s.ready] == []
    assert len(load_all()) == 31
