"""``segexp-table report``: a table's measured values next to the paper's, as markdown, CSV and a PNG chart.

Per row and metric (in the paper's units, e.g. mIoU x 100): the paper value, the measured mean +- sample
std over seeds, measured - paper, and against the baseline row the paper's delta, the measured delta with
its 95 % confidence interval (Welch's t-test, :func:`welch_test`), a verdict on whether the measured seeds
reproduce the paper's delta (:func:`verdict`) and how many seeds per side would resolve it at the measured
noise (:func:`seeds_needed`), plus the run's protocol warnings and its seed folders. Files are written
atomically (:mod:`segexp.atomic`).

Where: a profile with ``evidence: true`` (proxy, full) writes ``experiments/results/<id>.<profile>.*``,
tracked evidence; any other (smoke) writes scratch output to ``outputs/tables/reports/`` (under
``$SEGEXP_OUTPUT_DIR``). A table with no runs under the profile gets no report: :class:`NoRuns` says so.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segexp import atomic
from segexp.tables.card import card_table, statement_lines
from segexp.tables.paths import RESULTS_DIR, display_path, is_tracked_spec
from segexp.tables.spec import DELTA, Profile, Row, TableSpec
from segexp.tables.store import RowResults, load_row, profile_dir, scratch_reports_dir
from segexp.tables.units import MEASURABLE, PER_CLASS_PREFIX, metric_scale, metric_unit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPRODUCED, OPPOSITE, WITHIN_NOISE, SINGLE_SEED = "reproduced", "opposite", "within noise", "single seed"
CONFIDENCE = 0.95
"""Two-sided confidence level of the interval of a measured delta (Welch's t-test)."""
MAX_SEEDS_NEEDED = 1000
"""``seeds needed`` searches n = 2 .. this many seeds per side; beyond, the report says ``>1000``."""
BEYOND_MAX_SEEDS = MAX_SEEDS_NEEDED + 1
"""What :func:`seeds_needed` returns when even :data:`MAX_SEEDS_NEEDED` seeds per side would not do."""
VERDICT_RULE = (
    f"Verdict on each paper delta against the baseline row, from the measured seeds (Welch's t-test): with n_r "
    f"and n_b seeds of the row and the baseline, sample stds s_r and s_b, measured delta d = mean_r - mean_b, "
    f"its standard error SE = sqrt(s_r^2/n_r + s_b^2/n_b) and Welch-Satterthwaite degrees of freedom "
    f"df = SE^4 / ((s_r^2/n_r)^2/(n_r-1) + (s_b^2/n_b)^2/(n_b-1)), the {CONFIDENCE:.0%} confidence interval "
    f"of d is d +- t_{{{(1 + CONFIDENCE) / 2:g}, df}} x SE (with 2 seeds a side df is between 1 and 2 and t "
    f"between 12.7 and 4.3, not 2). **{REPRODUCED}**: the interval excludes 0 and d has the paper delta's sign; "
    f"**{OPPOSITE}**: it excludes 0 and d has the other sign (or the paper's delta is 0); **{WITHIN_NOISE}**: "
    f"it includes 0; **{SINGLE_SEED}**: fewer than 2 seeds of the row or of the baseline (run with "
    f"`--seeds N`). Seeds with no spread at all on both sides (SE = 0) give no df and an interval that is the "
    f"point d: any d != 0 is decided, d = 0 is within noise. **seeds needed**: the smallest n seeds per side "
    f"with t_{{{(1 + CONFIDENCE) / 2:g}, 2n-2}} x s x sqrt(2/n) < |paper delta|, s the per-seed std pooled "
    f"over the row's and the baseline's seeds measured so far (needs 3 seeds in all; blank when the paper's "
    f"delta is 0 or unknown; >{MAX_SEEDS_NEEDED} past {MAX_SEEDS_NEEDED}): with that many seeds at that noise, "
    f"a measured delta as large as the paper's would have an interval that excludes 0."
)
OK, NOT_RUN, FAILED, MISSING, PENDING_ROW = "ok", "not run", "failed", "missing", "pending"
RAW_KEYS = {"relative_time": "wall_s"}
"""Metrics derived from another metrics.json key (relative_time = wall_s / the baseline's)."""


class NoRuns(LookupError):
    """A table has nothing under a profile's run folder yet: there is nothing to report."""


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (possibly fractional) degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class DeltaTest:
    """Welch's t-test of a measured delta ``mean(row) - mean(base)``: its standard error, Welch-Satterthwaite
    degrees of freedom and two-sided :data:`CONFIDENCE` interval. With no spread on either side (``se`` 0)
    ``df`` is None and the interval is the point ``delta``."""

    delta: float
    se: float
    df: float | None
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_test(row: Sequence[float], base: Sequence[float]) -> DeltaTest | None:
    """:class:`DeltaTest` of ``row`` minus ``base``; None with fewer than 2 values on either side."""
    if len(row) < 2 or len(base) < 2:
        return None
    delta = statistics.fmean(row) - statistics.fmean(base)
    v_row, v_base = statistics.variance(row) / len(row), statistics.variance(base) / len(base)
    se = math.sqrt(v_row + v_base)
    if se == 0:
        return DeltaTest(delta=delta, se=0.0, df=None, low=delta, high=delta)
    df = (v_row + v_base) ** 2 / (v_row ** 2 / (len(row) - 1) + v_base ** 2 / (len(base) - 1))
    half = t_quantile((1 + CONFIDENCE) / 2, df) * se
    return DeltaTest(delta=delta, se=se, df=df, low=delta - half, high=delta + half)


def verdict(paper_delta: float, row: Sequence[float], base: Sequence[float]) -> str:
    """Does the measured delta (seeds of ``row`` minus seeds of ``base``) reproduce ``paper_delta``? Welch's
    t-test (:func:`welch_test`; the rule in :data:`VERDICT_RULE`)."""
    test = welch_test(row, base)
    if test is None:
        return SINGLE_SEED
    if not test.excludes_zero:
        return WITHIN_NOISE
    return REPRODUCED if paper_delta != 0 and (test.delta > 0) == (paper_delta > 0) else OPPOSITE


def pooled_std(row: Sequence[float], base: Sequence[float]) -> float | None:
    """The per-seed std pooled over both sides (``n_r + n_b - 2`` degrees of freedom); None below 3 values."""
    dof = len(row) + len(base) - 2
    if dof < 1:
        return None
    squares = sum((v - statistics.fmean(side)) ** 2 for side in (row, base) if side for v in side)
    return math.sqrt(squares / dof)


@functools.cache
def critical_values() -> list[float]:
    """``t_{(1 + CONFIDENCE) / 2, 2n - 2}`` for n = 2 .. :data:`MAX_SEEDS_NEEDED` (index n - 2)."""
    from scipy.stats import t

    return [float(v) for v in t.ppf((1 + CONFIDENCE) / 2, [2 * n - 2 for n in range(2, MAX_SEEDS_NEEDED + 1)])]


def seeds_needed(paper_delta: float | None, row: Sequence[float], base: Sequence[float]) -> int | None:
    """The fewest seeds per side (n >= 2) whose :data:`CONFIDENCE` interval of a delta, at the pooled per-seed
    std measured so far (:func:`pooled_std`), is narrower than ``|paper_delta|`` on each side of it:
    ``t_{2n-2} * s * sqrt(2/n) < |paper_delta|``. :data:`BEYOND_MAX_SEEDS` when no n up to
    :data:`MAX_SEEDS_NEEDED` does; None when the paper's delta is 0 or unknown or the std is not measured."""
    s = pooled_std(row, base)
    if paper_delta is None or paper_delta == 0 or s is None:
        return None
    return next((n for n, t in enumerate(critical_values(), start=2)
                 if t * s * math.sqrt(2 / n) < abs(paper_delta)), BEYOND_MAX_SEEDS)


def metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    """A metric from metrics.json in the paper's units (None when absent)."""
    if metric.startswith(PER_CLASS_PREFIX):
        value = (metrics.get("per_class_iou") or {}).get(metric[len(PER_CLASS_PREFIX):])
    else:
        value = metrics.get(RAW_KEYS.get(metric, metric))
    if value is None:
        return None
    return float(value) * (1.0 if metric in RAW_KEYS else metric_scale(metric))


@dataclass
class Cell:
    """One row x metric of the report."""

    row: Row
    metric: str
    status: str
    paper: float | None = None
    values: list[float] = field(default_factory=list)
    measured: float | None = None
    std: float | None = None
    vs_paper: float | None = None
    baseline: str | None = None
    paper_delta: float | None = None
    measured_delta: float | None = None
    se_delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    df: float | None = None
    paper_ratio: float | None = None
    measured_ratio: float | None = None
    verdict: str = ""
    seeds_needed: int | None = None
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)


@dataclass
class TableReport:
    spec: TableSpec
    profile: Profile
    base_dir: Path
    cells: list[Cell]
    results: dict[str, RowResults]

    def cells_of(self, metric: str) -> list[Cell]:
        return [c for c in self.cells if c.metric == metric]

    def cell(self, row: str, metric: str) -> Cell:
        return next(c for c in self.cells if c.row.name == row and c.metric == metric)

    @property
    def has_runs(self) -> bool:
        return any(not r.empty for r in self.results.values())

    def facts(self) -> str:
        runs = [m for r in self.results.values() for m in r.seeds.values()]
        devices = sorted({str(m.get("device")) for m in runs if m.get("device")})
        commits = sorted({str(m.get("git_commit"))[:10] for m in runs if m.get("git_commit")})
        seeds = sorted({len(r.seeds) for r in self.results.values() if r.seeds})
        return (f"{len(runs)} finished run(s); seeds per row: {', '.join(map(str, seeds)) or '-'}; "
                f"device: {', '.join(devices) or '-'}; git: {', '.join(commits) or '-'}")

    def environments(self) -> list[str]:
        """The package versions the runs ran with (metrics.json ``environment``), one line per distinct set."""
        runs = [m for r in self.results.values() for m in r.seeds.values()]
        found = {tuple(sorted((k, str(v)) for k, v in (m.get("environment") or {}).items()
                              if v is not None and k != "segexp_commit"))  # the commit: in the runs line
                 for m in runs}
        return sorted(", ".join(f"{k} {v}" for k, v in facts) for facts in found if facts)


def raw_values(metric: str, results: RowResults) -> list[float]:
    values = [metric_value(m, metric) for _, m in sorted(results.seeds.items())]
    return [v for v in values if v is not None]


def server_submission(results: RowResults) -> str | None:
    """Where an evaluation of a split without labels (a test server's) left its prediction PNGs."""
    unscored = [m for _, m in sorted(results.seeds.items()) if m.get("labelled") is False]
    if not unscored:
        return None
    where = "; ".join(f"{m.get('num_predictions', '?')} PNGs in `{display_path(str(m.get('predictions_dir')))}`"
                      for m in unscored)
    return f"scored by the evaluation server: submit {where}"


def row_status(spec: TableSpec, row: Row, results: RowResults) -> tuple[str, str]:
    if results.seeds:
        return OK, ""
    if not row.runnable:
        return NOT_RUN, str(row.notes)
    if results.not_run:
        return NOT_RUN, results.not_run
    if not spec.ready:
        return PENDING_ROW, str(spec.pending_reason)
    if results.errors:
        return FAILED, "; ".join(f"seed{s}: {e}" for s, e in sorted(results.errors.items()))
    return MISSING, ""


def run_history_warnings(results: RowResults) -> list[str]:
    """What a reader must know about how a row's seeds were run: resumed (from which step, with which changes;
    ``wall_s`` then sums every session) or scored on part of the val split (``val_images`` < ``val_split_size``)."""
    warnings = []
    for seed, metrics in sorted(results.seeds.items()):
        for resume in metrics.get("resumes") or []:
            changed = ", ".join(resume.get("changed") or {}) or "no setting changed"
            warnings.append(f"seed{seed} resumed at step {resume.get('step')} ({changed})")
        scored, size = metrics.get("val_images"), metrics.get("val_split_size")
        if isinstance(scored, int) and isinstance(size, int) and scored < size:
            warnings.append(f"seed{seed} scored on {scored} of the {size} images of its split")
    return warnings


def build_cell(spec: TableSpec, row: Row, metric: str, results: dict[str, RowResults]) -> Cell:
    status, detail = row_status(spec, row, results[row.name])
    baseline = spec.baseline_of(row)
    cell = Cell(row=row, metric=metric, status=status, detail=detail, paper=row.paper.get(metric),
                baseline=baseline, warnings=results[row.name].warnings(),
                run_dirs=[display_path(p) for p in results[row.name].run_dirs()])
    if results[row.name].stale:
        cell.warnings.append(f"ignored seeds run under an older config: {results[row.name].stale}")
    cell.warnings += run_history_warnings(results[row.name])
    values = raw_values(metric, results[row.name])
    base_values = raw_values(metric, results[baseline]) if baseline else []
    reference = spec.baseline or baseline
    if metric in RAW_KEYS and reference and (ref := raw_values(metric, results[reference])):
        scale = statistics.fmean(ref)
        values, base_values = [v / scale for v in values], [v / scale for v in base_values]
    cell.values = values
    cell.measured, cell.std = mean_std(values)
    if cell.measured is None and (submission := server_submission(results[row.name])):
        cell.detail = submission
    base_mean, _ = mean_std(base_values)
    base_paper = spec.row(baseline).paper.get(metric) if baseline else None
    if cell.measured is not None and base_mean is not None:
        cell.measured_delta = cell.measured - base_mean
        if test := welch_test(values, base_values):
            cell.se_delta, cell.ci_low, cell.ci_high, cell.df = test.se, test.low, test.high, test.df
    if spec.paper_values == DELTA:  # the paper reports deltas: compare measured deltas with them
        cell.measured = cell.measured_delta if baseline else (0.0 if cell.measured is not None else None)
        cell.std = cell.se_delta if baseline else None
    if cell.paper is not None and base_paper is not None:
        cell.paper_delta = cell.paper - base_paper
        if values and base_values:
            cell.verdict = verdict(cell.paper_delta, values, base_values)
            cell.seeds_needed = seeds_needed(cell.paper_delta, values, base_values)
    if cell.paper is not None and cell.measured is not None:
        cell.vs_paper = cell.measured - cell.paper
    if metric in MEASURABLE and spec.baseline:
        base_measured, _ = mean_std(raw_values(metric, results[spec.baseline]))
        set_ratios(cell, spec.row(spec.baseline).paper.get(metric), base_measured)
    return cell


def set_ratios(cell: Cell, base_paper: float | None, base_measured: float | None) -> None:
    """A measured size or time (prb Table V) relative to the table's baseline row, and the paper's ratio: the
    absolute values depend on the device, their ratios much less."""
    if cell.paper is not None and base_paper:
        cell.paper_ratio = cell.paper / base_paper
    if cell.measured is not None and base_measured:
        cell.measured_ratio = cell.measured / base_measured


def ratio_table(cells: Sequence[Cell], baseline: str) -> list[str]:
    """Each row's value divided by the baseline row's, the paper's and the measured one."""
    lines = [f"Relative to `{baseline}` (device-independent):", "",
             "| row | paper ratio | measured ratio |", "|---|---:|---:|"]
    for c in cells:
        name = f"`{c.row.name}`" + (f" {c.row.label}" if c.row.label else "")
        lines.append("| " + " | ".join(md_escape(x) for x in (
            name, fmt_ratio(c.paper_ratio), fmt_ratio(c.measured_ratio))) + " |")
    return lines


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def build_report(spec: TableSpec, profile: Profile, base_dir: Path | None = None) -> TableReport:
    base_dir = base_dir or profile_dir(spec.id, profile.name)
    results = {row.name: load_row(base_dir / row.name) for row in spec.rows}
    cells = [build_cell(spec, row, metric, results) for metric in spec.metrics for row in spec.rows]
    return TableReport(spec=spec, profile=profile, base_dir=base_dir, cells=cells, results=results)


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def measured_text(cell: Cell, signed: bool) -> str:
    """``mean ± std (n=k)``, or the row's status and why."""
    if cell.status != OK:
        return f"{cell.status}: {cell.detail}" if cell.detail else cell.status
    if cell.measured is None:
        return cell.detail or "— (not in metrics.json)"
    spread = f" ± {cell.std:.2f}" if cell.std is not None else ""
    seeds = f" (n={len(cell.values)})" if len(cell.values) > 1 else ""
    return f"{fmt(cell.measured, signed)}{spread}{seeds}"


def interval_text(cell: Cell) -> str:
    """``[low, high] df k`` of the measured delta (``df —`` when neither side has any spread)."""
    if cell.ci_low is None or cell.ci_high is None:
        return "—"
    df = "—" if cell.df is None else f"{cell.df:.1f}"
    return f"[{fmt(cell.ci_low, signed=True)}, {fmt(cell.ci_high, signed=True)}] df {df}"


def seeds_text(n: int | None) -> str:
    """``seeds needed``: the count, ``>1000`` past :data:`MAX_SEEDS_NEEDED`, blank when not computable."""
    if n is None:
        return ""
    return f">{MAX_SEEDS_NEEDED}" if n > MAX_SEEDS_NEEDED else str(n)


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(cells: Sequence[Cell], deltas: bool) -> list[str]:
    lines = ["| row | paper | measured | Δ vs paper | baseline | paper Δ | measured Δ | "
             f"{CONFIDENCE:.0%} CI of Δ | verdict | seeds needed | warnings | run dir |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|---|"]
    for c in cells:
        name = f"`{c.row.name}`" + (f" {c.row.label}" if c.row.label else "")
        lines.append("| " + " | ".join(md_escape(x) for x in (
            name, fmt(c.paper, deltas), measured_text(c, deltas), fmt(c.vs_paper, signed=True), c.baseline or "—",
            fmt(c.paper_delta, signed=True), fmt(c.measured_delta, signed=True), interval_text(c), c.verdict or "—",
            seeds_text(c.seeds_needed), "; ".join(c.warnings) or "", ", ".join(f"`{d}`" for d in c.run_dirs))) + " |")
    return lines


MIN_PER_CLASS_METRICS = 2
"""A table with at least this many per-class metrics is reported class by class (classes as columns)."""


def per_class_metrics(spec: TableSpec) -> list[str]:
    """The spec's ``per_class_iou.<class>`` metrics when it has several (a per-class table), else none."""
    metrics = [m for m in spec.metrics if m.startswith(PER_CLASS_PREFIX)]
    return metrics if len(metrics) >= MIN_PER_CLASS_METRICS else []


def per_class_table(report: TableReport, metrics: Sequence[str]) -> list[str]:
    """Classes as columns; per table row a ``paper`` line and a ``measured`` line (mean over seeds, or the
    row's status), as the papers print their per-class tables."""
    classes = [m[len(PER_CLASS_PREFIX):] for m in metrics]
    lines = ["| row | | " + " | ".join(md_escape(c) for c in classes) + " |",
             "|---|---|" + "---:|" * len(classes)]
    for row in report.spec.rows:
        cells = [report.cell(row.name, metric) for metric in metrics]
        name = md_escape(f"`{row.name}`" + (f" {row.label}" if row.label else ""))
        lines.append(f"| {name} | paper | " + " | ".join(fmt(c.paper) for c in cells) + " |")
        measured = [fmt(c.measured) if c.status == OK else c.status for c in cells]
        lines.append("| | measured | " + " | ".join(md_escape(m) for m in measured) + " |")
    return lines


def render_markdown(report: TableReport) -> str:
    spec, profile = report.spec, report.profile
    lines = [f"# {spec.id}: {spec.title}", "",
             f"- paper `{spec.paper}`; paper's dataset: {spec.dataset}; status: **{spec.status}**"
             + (f" ({spec.pending_reason})" if not spec.ready else ""),
             f"- profile **{profile.name}**: {profile.description.strip()}",
             f"- runs: {report.facts()}; folder `{display_path(report.base_dir)}`",
             "- values in the paper's units (mIoU, accuracies and per-class IoU in %)"
             + ("; the paper reports deltas to the baseline row, so measured values are deltas too"
                if spec.paper_values == DELTA else "")]
    lines += [f"- environment: {env}" for env in report.environments()] or ["- environment: not recorded"]
    if spec.notes:
        lines.append(f"- note: {spec.notes.strip()}")
    lines += ["", "## protocol card", "", *protocol_card_text(spec, profile)]
    per_class = per_class_metrics(spec)
    if per_class:
        lines += ["", "## per-class IoU", "", *per_class_table(report, per_class)]
    for metric in spec.metrics:
        if metric in per_class:
            continue
        lines += ["", f"## {metric}", "", *markdown_table(report.cells_of(metric), spec.paper_values == DELTA)]
        if metric in MEASURABLE and spec.baseline:
            lines += ["", *ratio_table(report.cells_of(metric), spec.baseline)]
    lines += ["", "---", "", VERDICT_RULE, "",
              f"Δ vs paper = measured − paper. paper Δ / measured Δ = row − baseline row; {CONFIDENCE:.0%} CI of "
              "Δ: the interval of the measured Δ and its Welch df. A warning next to a row "
              "says where its run differs from the paper's protocol (batch, iterations) or where the profile "
              "replaced one of the row's own settings.", "",
              f"Written on {time.strftime('%Y-%m-%d %H:%M')}; regenerate with "
              f"`segexp-table report {spec.id} --profile {profile.name}`."]
    return "\n".join(lines) + "\n"


def row_statement_lines(spec: TableSpec) -> list[str]:
    """The statements a row makes for itself (its ``protocol.statements``), under the row's name."""
    lines = [f"- **{row.name}** / **{name}**: {text}" for row in spec.rows
             for name, text in (row.protocol.statements if row.protocol else {}).items()]
    return ["", "Stated by single rows:", *lines] if lines else []


def protocol_card_text(spec: TableSpec, profile: Profile) -> list[str]:
    """The table's protocol card (:mod:`segexp.tables.card`): what the ``full`` profile composes, with the source
    of each value, and under another profile what that profile replaces."""
    if not spec.protocol.card:
        return ["This table states no protocol card."]
    lines = ["The paper's protocol as the `full` profile composes it: each value is the paper's (section) or a "
             "stated choice (`chosen:`); *paper* gives the paper's value where the choice deviates from it. "
             f"Per row: `segexp-table plan {spec.id}`.", "", *card_table(spec.protocol.card),
             *statement_lines(spec.protocol.statements), *row_statement_lines(spec)]
    if profile.overrides or profile.drop:
        replaced = ", ".join(f"`{o}`" for o in profile.overrides) or "nothing"
        dropped = ", ".join(f"`{d}`" for d in profile.drop) or "nothing"
        lines += ["", f"Profile **{profile.name}** is not this protocol: it drops the rows' settings of {dropped} and "
                      f"sets {replaced}."]
    return lines


CSV_FIELDS = ("table", "profile", "row", "label", "metric", "status", "paper", "measured", "std", "n_seeds",
              "delta_vs_paper", "baseline", "paper_delta", "measured_delta", "se_delta", "ci_low", "ci_high", "df",
              "paper_ratio", "measured_ratio", "verdict", "seeds_needed", "warnings", "run_dir", "detail")


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def render_csv(report: TableReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for c in report.cells:
        writer.writerow({
            "table": report.spec.id, "profile": report.profile.name, "row": c.row.name, "label": c.row.label,
            "metric": c.metric, "status": c.status, "paper": c.paper, "measured": rounded(c.measured),
            "std": rounded(c.std), "n_seeds": len(c.values), "delta_vs_paper": rounded(c.vs_paper),
            "baseline": c.baseline or "", "paper_delta": rounded(c.paper_delta),
            "measured_delta": rounded(c.measured_delta), "se_delta": rounded(c.se_delta),
            "ci_low": rounded(c.ci_low), "ci_high": rounded(c.ci_high), "df": rounded(c.df),
            "paper_ratio": rounded(c.paper_ratio), "measured_ratio": rounded(c.measured_ratio),
            "verdict": c.verdict, "seeds_needed": seeds_text(c.seeds_needed), "warnings": "; ".join(c.warnings),
            "run_dir": "; ".join(c.run_dirs),
            "detail": c.detail,
        })
    return out.getvalue()


MAX_CHART_METRICS = 3


def value_label(metric: str, deltas: bool) -> str:
    """The value axis of a metric's panel, in the paper's units: ``mIoU (%)``, ``mIoU Δ (%)``."""
    return f"{metric}{' Δ' if deltas else ''} ({metric_unit(metric)})"


def chart(report: TableReport) -> Figure:
    """Grouped bars, paper vs measured (error bar: std over seeds), one panel per metric (first three), or for
    a per-class table one panel per row with a bar pair per class. One legend for the figure, below the
    panels, so it never covers a bar."""
    from matplotlib.figure import Figure

    if per_class_metrics(report.spec):
        return per_class_chart(report)

    metrics = report.spec.metrics[:MAX_CHART_METRICS]
    names = [row.name for row in report.spec.rows]
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 3.2 * len(metrics) + 0.5), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    nan = float("nan")
    for ax, metric in zip(axes, metrics):
        cells = report.cells_of(metric)
        xs = range(len(cells))
        ax.bar([x - 0.2 for x in xs], [c.paper if c.paper is not None else nan for c in cells], 0.4,
               label="paper", color="0.6")
        ax.bar([x + 0.2 for x in xs], [c.measured if c.measured is not None else nan for c in cells], 0.4,
               yerr=[c.std or 0.0 for c in cells], label=f"measured ({report.profile.name})", color="tab:blue")
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(value_label(metric, report.spec.paper_values == DELTA))
    axes[0].set_title(f"{report.spec.id}: paper vs measured ({report.profile.name} profile)", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    return fig


def per_class_chart(report: TableReport) -> Figure:
    """One panel per table row: per class, the paper's IoU and the measured one (error bar: std over seeds)."""
    from matplotlib.figure import Figure

    metrics = per_class_metrics(report.spec)
    classes = [m[len(PER_CLASS_PREFIX):] for m in metrics]
    rows = report.spec.rows
    fig = Figure(figsize=(max(6.0, 0.4 * len(classes) + 2), 2.8 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    nan = float("nan")
    xs = range(len(classes))
    for ax, row in zip(axes, rows):
        cells = [report.cell(row.name, metric) for metric in metrics]
        ax.bar([x - 0.2 for x in xs], [c.paper if c.paper is not None else nan for c in cells], 0.4,
               label="paper", color="0.6")
        ax.bar([x + 0.2 for x in xs], [c.measured if c.measured is not None else nan for c in cells], 0.4,
               yerr=[c.std or 0.0 for c in cells], label=f"measured ({report.profile.name})", color="tab:blue")
        ax.set_xticks(list(xs), classes, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("IoU (%)")
        ax.set_title(f"{row.name}" + (f": {row.label}" if row.label else ""), fontsize=8)
    fig.suptitle(f"{report.spec.id}: per-class IoU, paper vs measured ({report.profile.name} profile)", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    return fig


def render_png(report: TableReport, path: Path) -> None:
    figure = chart(report)
    atomic.write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def runs_with_extra_settings(report: TableReport) -> list[str]:
    """The runs of ``report`` recorded with command-line settings over their profile (``table_row.json`` extra)."""
    return [f"{row}/seed{seed}" for row, results in report.results.items()
            for seed, record in sorted(results.records.items()) if record.get("extra")]


def report_dir(profile: Profile, report: TableReport | None = None) -> Path:
    """``experiments/results`` for a tracked table under an evidence profile whose runs all match it, else
    ``outputs/tables/reports`` (scratch): a run with extra settings, or a copy of a spec outside experiments/, is
    not the tracked table's evidence, so its report never replaces it."""
    evidence = profile.evidence and not (report is not None and (runs_with_extra_settings(report)
                                                                  or not is_tracked_spec(report.spec.path)))
    return RESULTS_DIR if evidence else scratch_reports_dir()


def no_runs_message(spec: TableSpec, profile: Profile, base_dir: Path) -> str:
    return (f"no runs of {spec.id} under profile {profile.name} yet (nothing in {display_path(base_dir)}): "
            f"run `segexp-table run {spec.id} --profile {profile.name}`")


def write_report(spec: TableSpec, profile: Profile, base_dir: Path | None = None,
                 results_dir: Path | None = None) -> dict[str, Path]:
    """``<results_dir>/<id>.<profile>.{md,csv,png}`` (default: :func:`report_dir`); returns the paths by
    suffix. Raises :class:`NoRuns` when the profile has no runs of the table, and writes nothing then."""
    report = build_report(spec, profile, base_dir)
    if not report.has_runs:
        raise NoRuns(no_runs_message(spec, profile, report.base_dir))
    results_dir = results_dir or report_dir(profile, report)
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {suffix: results_dir / f"{spec.id}.{profile.name}.{suffix}" for suffix in ("md", "csv", "png")}
    atomic.write_text(paths["md"], render_markdown(report))
    atomic.write_text(paths["csv"], render_csv(report))
    render_png(report, paths["png"])
    return paths
