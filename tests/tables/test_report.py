"""``segexp-table report`` (segexp.tables.report) from fabricated run folders: values next to the paper's,
verdicts, stale seeds, scratch vs evidence reports, charts, relative sizes and times, per-class tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from segexp.cli import table as cli
from segexp.tables.paths import RESULTS_DIR
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
from segexp.tables.spec import load_profile, load_table
from tests.helpers.tables import fabricate, tree


@pytest.mark.parametrize(("paper_delta", "row", "base", "expected"), [
    # Welch's t-test since the 2 x SE rule went (worked cases in tests/tables/test_verdicts.py); every answer here held
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
