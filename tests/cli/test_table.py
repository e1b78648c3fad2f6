"""The ``segexp-table`` command (segexp.cli.table): ``list`` with status, pending tables refused with their reason
or skipped by ``run all``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from segexp.cli import table as cli
from segexp.tables import runner
from segexp.tables.paths import RESULTS_DIR
from segexp.tables.runner import RunResult
from segexp.tables.spec import load_all, load_spec
from tests.helpers.tables import GOOD, write_spec


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
