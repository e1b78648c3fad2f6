"""Bad table specs and profiles: every field error and every unusable file names the file and the full key
(segexp.tables.yaml_reader, segexp.tables.spec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segexp.tables.spec import load_profile, load_spec
from tests.helpers.tables import assert_spec_error, write_spec

SPEC = """\
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
base: [data.batch_size=4]
protocol: {effective_batch: 4, max_steps: 100}
baseline: a
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {mIoU: 50.0}
    measure: [size_mb]
  - name: b
    label: the second row
    overrides: [backbone=resnet34]
    paper: {mIoU: 51.0}
"""


ROW_B = "  - name: b\n"


ROWS = SPEC[SPEC.index("rows:\n"):]


SPEC_CASES = [
    # top level: types
    ("id: demo.t1", "id: 5", "id", "expected str, got 5"),
    ("title: demo", "title: [demo]", "title", "expected str, got ['demo']"),
    ("title: demo", "title: ''", "title", "must not be empty"),
    ("paper: demo", "paper: {name: demo}", "paper", "expected str, got {'name': 'demo'}"),
    ("dataset: synthetic\n", "", "dataset", "required key is missing"),
    ("dataset: synthetic", "dataset: 3.5", "dataset", "expected str, got 3.5"),
    ("metrics: [mIoU]", "metrics: mIoU", "metrics", "expected list, got 'mIoU'"),
    ("metrics: [mIoU]", "metrics: {mIoU: 1}", "metrics", "expected list, got {'mIoU': 1}"),
    ("metrics: [mIoU]", "metrics: []", "metrics", "list at least one metric"),
    ("metrics: [mIoU]", "metrics: [mIoU, 3]", "metrics[1]", "expected a string, got 3"),
    ("metrics: [mIoU]", "metrics: [mIoU, mIoU]", "metrics[1]", "'mIoU' is listed twice (also metrics[0])"),
    ("title: demo", "title: demo\nstatus: done", "status", "must be one of ready, pending, got 'done'"),
    ("title: demo", "title: demo\nstatus: 1", "status", "expected str, got 1"),
    ("title: demo", "title: demo\nstatus: pending\npending_reason: [x]", "pending_reason", "expected str"),
    ("title: demo", "title: demo\nnotes: 3", "notes", "expected str, got 3"),
    ("base: [data.batch_size=4]", "base: data.batch_size=4", "base", "expected list, got 'data.batch_size=4'"),
    ("base: [data.batch_size=4]", "base: [4]", "base[0]", "expected a string, got 4"),
    ("base: [data.batch_size=4]", "base: [data.batch_size]", "base[0]", "is not an override (expected key=value)"),
    ("base: [data.batch_size=4]", "base: ['data.batch_size=[4']", "base[0]", "does not parse as a Hydra override"),
    ("base: [data.batch_size=4]", "base: [data.batch_size=4, data.batch_size=8]", "base[1]",
     "sets data.batch_size again (already set by base[0])"),
    ("protocol: {effective_batch: 4, max_steps: 100}", "protocol: [4, 100]", "protocol",
     "expected a mapping, got a list"),
    ("protocol: {effective_batch: 4, max_steps: 100}", "protocol: {batch: 4}", "protocol.batch",
     "unknown key; allowed keys: effective_batch, max_steps"),
    ("effective_batch: 4", "effective_batch: four", "protocol.effective_batch", "expected int, got 'four'"),
    ("effective_batch: 4", "effective_batch: 4.5", "protocol.effective_batch", "expected int, got 4.5"),
    ("max_steps: 100", "max_steps: 0", "protocol.max_steps", "must be >= 1, got 0"),
    ("baseline: a", "baseline: [a]", "baseline", "expected str, got ['a']"),
    ("title: demo", "title: demo\npaper_values: relative", "paper_values", "must be one of absolute, delta"),
    ("baseline: a", "paper_values: delta", "baseline", "paper_values: delta needs the baseline row"),
    ("title: demo", "titel: demo", "titel", "unknown key (did you mean 'title'?)"),
    # rows
    (ROWS, "rows: {name: a}\n", "rows", "expected list, got {'name': 'a'}"),
    (f"baseline: a\n{ROWS}", "rows: []\n", "rows", "list at least one row"),
    (f"baseline: a\n{ROWS}", "", "rows", "required key is missing"),
    ("  - name: a\n", "  - a\n  - name: x\n", "rows[0]", "expected a mapping, got a string"),
    ("  - name: a\n", "  -\n  - name: x\n", "rows[0]", "expected a mapping, got null"),
    (f"{ROW_B}    label: the second row\n", "  - label: the second row\n", "rows[1].name",
     "required key is missing"),
    (ROW_B, "  - name: 7\n", "rows[1].name", "expected str, got 7"),
    (ROW_B, "  - name: a\n", "rows[1].name", "duplicate row name 'a' (also rows[0].name)"),
    ("    label: the second row", "    label: 2", "rows[1].label", "expected str, got 2"),
    ("    overrides: [backbone=resnet34]", "    overrides: backbone=resnet34", "rows[1].overrides",
     "expected list, got 'backbone=resnet34'"),
    ("    overrides: [backbone=resnet34]", "    overrides: {backbone: resnet34}", "rows[1].overrides",
     "expected list, got {'backbone': 'resnet34'}"),
    ("[backbone=resnet34]", "[34]", "rows[1].overrides[0]", "expected a string, got 34"),
    ("[backbone=resnet34]", "[backbone=resnet34, backbone=resnet50]", "rows[1].overrides[1]",
     "'backbone=resnet50' sets backbone again (already set by rows[1].overrides[0]); keep one"),
    ("    paper: {mIoU: 51.0}\n", "", "rows[1].paper", "required key is missing"),
    ("paper: {mIoU: 51.0}", "paper: [51.0]", "rows[1].paper", "expected dict, got [51.0]"),
    ("paper: {mIoU: 51.0}", "paper: 51.0", "rows[1].paper", "expected dict, got 51.0"),
    ("paper: {mIoU: 51.0}", "paper: {mIoU: true}", "rows[1].paper.mIoU", "expected a number, got True"),
    ("paper: {mIoU: 51.0}", "paper: {mIoU: .nan}", "rows[1].paper.mIoU", "expected a finite number, got nan"),
    ("    label: the second row", "    notes: 3", "rows[1].notes", "expected str, got 3"),
    ("    label: the second row", "    notes: '  '", "rows[1].notes", "must not be empty"),
    ("    overrides: [backbone=resnet34]", "    eval_of: z", "rows[1].eval_of", "no row named 'z' in this table"),
    ("    overrides: [backbone=resnet34]", "    eval_of: [a]", "rows[1].eval_of", "expected str, got ['a']"),
    ("    overrides: [backbone=resnet34]", "    eval_of: b", "rows[1].eval_of", "a row cannot evaluate itself"),
    ("    label: the second row", "    eval_overrides: [data.val_batch_size=2]", "rows[1].eval_overrides",
     "only eval-only rows (with eval_of) take eval_overrides"),
    ("    overrides: [backbone=resnet34]", "    eval_of: a\n    eval_overrides: data.val_batch_size=2",
     "rows[1].eval_overrides", "expected list, got 'data.val_batch_size=2'"),
    ("    overrides: [backbone=resnet34]", "    eval_of: a\n    eval_overrides: [data.val_batch_size]",
     "rows[1].eval_overrides[0]", "is not an override"),
    ("    label: the second row", "    init_from: 3", "rows[1].init_from", "expected str, got 3"),
    ("    label: the second row", "    init_from: b", "rows[1].init_from", "starts a cycle back to 'b'"),
    ("    measure: [size_mb]", "    measure: [fps]", "rows[0].measure[0]", "'fps' is not measurable"),
    ("    measure: [size_mb]", "    measure: size_mb", "rows[0].measure", "expected list, got 'size_mb'"),
    ("    measure: [size_mb]", "    measure: [size_mb, size_mb]", "rows[0].measure[1]",
     "'size_mb' is listed twice (also rows[0].measure[0])"),
    ("    overrides: [backbone=resnet18]", "    eval_of: b", "rows[0].measure",
     "size and speed are measured on trained rows"),
    ("    label: the second row", "    baseline: z", "rows[1].baseline", "no row named 'z' in this table"),
    ("    label: the second row", "    protocol: 16", "rows[1].protocol", "expected a mapping, got an integer"),
    ("    label: the second row", "    protocol: {steps: 5}", "rows[1].protocol.steps",
     "unknown key (did you mean 'max_steps'?); allowed keys: effective_batch, max_steps"),
    ("    label: the second row", "    protocol: {max_steps: -5}", "rows[1].protocol.max_steps", "must be >= 1"),
    ("    label: the second row", "    labels: x", "rows[1].labels", "unknown key (did you mean 'label'?)"),
    # the file itself
    ("title: demo", "title: [demo", "<yaml>",
     "not valid YAML: line 3, column 6: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2, "
     "column 8)"),
    ("title: demo", "title: demo\ntitle: other", "title", "written twice (lines 2 and 3)"),
    ("    label: the second row", "    overrides: [x=1]", "rows[1].overrides", "written twice (lines 15 and 16)"),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), SPEC_CASES)
def test_spec_field_errors_name_the_file_and_the_key(tmp_path: Path, old: str, new: str, key: str,
                                                     message: str) -> None:
    spec = load_spec(write_spec(tmp_path, SPEC))
    assert [row.name for row in spec.rows] == ["a", "b"] and spec.protocol.max_steps == 100
    assert SPEC.count(old) == 1
    path = write_spec(tmp_path, SPEC.replace(old, new))
    assert_spec_error(path, key, message)


@pytest.mark.parametrize(("text", "key", "message"), [
    ("", "<top level>", "the file is empty; expected a mapping with the keys id, title, paper"),
    ("# nothing but a comment\n", "<top level>", "the file is empty"),
    ("- id: demo.t1\n- title: demo\n", "<top level>", "expected a mapping, got a list"),
    ("demo.t1\n", "<top level>", "expected a mapping, got a string"),
    ("id: demo.t1\n  title: demo\n", "<yaml>", "not valid YAML: line 2, column 8: mapping values are not allowed"),
    ("id: [demo.t1\n", "<yaml>", "not valid YAML"),
    (b"id: \xff\xfe\n", "<file>", "cannot read the file"),
])
def test_unusable_spec_files_name_the_file(tmp_path: Path, text: str | bytes, key: str, message: str) -> None:
    path = write_spec(tmp_path, "")
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_spec_error(path, key, message)


PROFILE = """\
description: a test profile
drop: [dataset, data.crop_size]
overrides: [dataset=synthetic]
eval_overrides: [data.val_batch_size=2]
check_protocol: false
checkpoints: last
evidence: false
distributed:
  max_processes: 2
  overrides: [trainer=ddp_cpu]
"""


PROFILE_CASES = [
    ("description: a test profile\n", "", "description", "required key is missing"),
    ("description: a test profile", "description: 3", "description", "expected str, got 3"),
    ("description: a test profile", "description: ''", "description", "must not be empty"),
    ("description: a test profile", "descripton: a test profile", "descripton",
     "unknown key (did you mean 'description'?)"),
    ("drop: [dataset, data.crop_size]", "drop: dataset", "drop", "expected list, got 'dataset'"),
    ("drop: [dataset, data.crop_size]", "drop: [dataset, 3]", "drop[1]", "expected a string, got 3"),
    ("drop: [dataset, data.crop_size]", "drop: [dataset, dataset]", "drop[1]", "'dataset' is listed twice"),
    ("drop: [dataset, data.crop_size]", "drop: [dataset=voc]", "drop[0]", "'dataset=voc' is not a config group"),
    ("drop: [dataset, data.crop_size]", "drop: ['']", "drop[0]", "'' is not a config group or key"),
    ("overrides: [dataset=synthetic]", "overrides: {dataset: synthetic}", "overrides",
     "expected list, got {'dataset': 'synthetic'}"),
    ("overrides: [dataset=synthetic]", "overrides: [dataset]", "overrides[0]", "is not an override"),
    ("overrides: [dataset=synthetic]", "overrides: [output_dir=/x]", "overrides[0]", "set by segexp-table"),
    ("overrides: [dataset=synthetic]", "overrides: [dataset=synthetic, dataset=voc]", "overrides[1]",
     "sets dataset again"),
    ("eval_overrides: [data.val_batch_size=2]", "eval_overrides: data.val_batch_size=2", "eval_overrides",
     "expected list"),
    ("eval_overrides: [data.val_batch_size=2]", "eval_overrides: ['data.val_batch_size=1,2']", "eval_overrides[0]",
     "is a sweep"),
    ("check_protocol: false", "check_protocol: 'no'", "check_protocol", "expected bool, got 'no'"),
    ("checkpoints: last", "checkpoints: all", "checkpoints", "must be one of keep, last, none, got 'all'"),
    ("checkpoints: last", "checkpoints: [last]", "checkpoints", "expected str, got ['last']"),
    ("evidence: false", "evidence: 1", "evidence", "expected bool, got 1"),
    ("distributed:\n  max_processes: 2\n  overrides: [trainer=ddp_cpu]\n", "distributed: [2]\n", "distributed",
     "expected a mapping, got a list"),
    ("  max_processes: 2", "  processes: 2", "distributed.processes", "unknown key (did you mean 'max_processes'?)"),
    ("  max_processes: 2", "  max_processes: two", "distributed.max_processes", "expected int, got 'two'"),
    ("  max_processes: 2", "  max_processes: true", "distributed.max_processes", "expected int, got True"),
    ("  overrides: [trainer=ddp_cpu]", "  overrides: trainer=ddp_cpu", "distributed.overrides", "expected list"),
    ("  overrides: [trainer=ddp_cpu]", "  overrides: [~trainer]", "distributed.overrides[0]", "deletions"),
    ("evidence: false", "evidence: false\nevidence: true", "evidence", "written twice (lines 7 and 8)"),
    ("checkpoints: last", "checkpoints: [last", "<yaml>", "not valid YAML"),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), PROFILE_CASES)
def test_profile_field_errors_name_the_file_and_the_key(tmp_path: Path, old: str, new: str, key: str,
                                                        message: str) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(PROFILE)
    profile = load_profile("demo", root=tmp_path)
    assert profile.distributed is not None and profile.distributed.max_processes == 2
    assert PROFILE.count(old) == 1
    path.write_text(PROFILE.replace(old, new))
    assert_spec_error(path, key, message, lambda: load_profile("demo", root=tmp_path))


@pytest.mark.parametrize(("text", "key", "message"), [
    ("", "<top level>", "the file is empty; expected a mapping with the keys description, overrides"),
    ("- description: x\n", "<top level>", "expected a mapping, got a list"),
])
def test_unusable_profile_files_name_the_file(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    assert_spec_error(path, key, message, lambda: load_profile("demo", root=tmp_path))
