#!/usr/bin/env python3
"""The stages of ``scripts/device_check.sh`` on a lent GPU machine, ordered by the value of their evidence,
each under its own timeout, all under one time budget (README, "GPU machines").

    setup  when hydra, omegaconf or albumentations is missing: the carried wheels (.whl/) into a private folder
    env    environment facts: nvidia-smi, torch / CUDA / cuDNN, versions and where they load from, /dev/shm
    tests  the fast CUDA tests (pytest -m "gpu and not slow"), verbose, short tracebacks, a per-test timeout
    proxy  one gpu_proxy row of DeepLabv3 Table 5 on CamVid; its metrics.json copied to OUT as soon as it exists
    bench  the training benchmark at OS 16: segexp vs a bare loop, channels_last vs contiguous, MFU
    slow   the slow CUDA tests (model.compile, the full profile row)

A stage starts only while the budget has at least its minimum left, and runs under a timeout of its own budget
or what is left, whichever is less, so a later stage is skipped rather than the budget overrun; a stage that
fails or is cut does not stop the next. At most 8 files go to OUT, each written as its stage goes:
summary.txt (a line as each stage ends, then a table of what ran, passed, failed or was cut), env.txt,
tests.log, proxy.log, metrics.json, bench.log, bench.json, slow.log.

Without CUDA (the rehearsal on a CPU machine) the CUDA stages check what they can and say that they skipped:
pytest collects the CUDA tests (each skips with its reason), the proxy's command runs with --dry-run and the
benchmark prints its plan. Nothing here waits for a network (OFFLINE_ENV). Standard library only: this file
runs before the carried wheels are installed.

    python3 scripts/device_stages.py [OUT_DIR] [--budget S] [--stage-budget NAME=S ...] [STAGE ...]
    python3 scripts/device_stages.py --plan          # the stage budgets and the estimated device time
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OFFLINE_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations asks PyPI for a newer release on every import
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PIP_NO_INDEX": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "MPLBACKEND": "Agg",
    "PYTHONUNBUFFERED": "1",
}
"""Set for every stage (and by scripts/device_check.sh): nothing on the device waits for a network."""


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: int
    """Its timeout (when that much is left)."""
    min_s: int
    """It starts only when at least this much of the budget is left."""
    expect_s: int
    """What it is expected to take on an H200 (estimated from the work it does; README)."""
    what: str
    needs_cuda: bool = True


STAGES = (
    Stage("env", 45, 10, 10, "environment facts", needs_cuda=False),
    Stage("tests", 120, 45, 75, "fast CUDA tests"),
    Stage("proxy", 170, 100, 110, "one gpu_proxy row on CamVid"),
    Stage("bench", 90, 40, 60, "training benchmark at OS 16"),
    Stage("slow", 150, 50, 110, "slow CUDA tests"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
SETUP = Stage("setup", 40, 0, 15, "carried wheels", needs_cuda=False)
DEFAULT_BUDGET_S = 420
"""The whole script, setup included: with a machine's start and the transfers, about 9 minutes of device time."""
MACHINE_START_S = 90
TRANSFER_S = 20
WRAP_UP_S = 10
"""Kept back from every stage's timeout: the grace between SIGTERM and SIGKILL, and the summary."""
KILL_GRACE_S = 8
MAX_OUT_FILES = 8
OUT_FILES = ("summary.txt", "env.txt", "tests.log", "proxy.log", "metrics.json", "bench.log", "bench.json",
             "slow.log")
NEEDED_MODULES = ("hydra", "omegaconf", "albumentations")
TABLE, PROFILE = "deeplabv3.t5", "gpu_proxy"
PER_TEST_TIMEOUT_S = {"tests": 90, "slow": 150}


def estimated_call_s(budget_s: float) -> float:
    """Device time of one call of the script with this budget: the machine's start, the transfers, the script."""
    return MACHINE_START_S + TRANSFER_S + budget_s


def stage_timeout(stage_budget_s: float, stage_min_s: float, budget_s: float, elapsed_s: float) -> float | None:
    """The stage's timeout: its own budget or what the whole budget has left (less the wrap-up reserve),
    whichever is less; None when less than the stage's minimum is left (the stage is cut)."""
    left = budget_s - elapsed_s - WRAP_UP_S
    if left < max(stage_min_s, 1):
        return None
    return min(stage_budget_s, left)


def pytest_counts(log: str) -> dict[str, int]:
    """The counts of pytest's last summary line ('== 5 passed, 1 skipped in 3.2s =='), by outcome."""
    lines = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", line)
             and re.search(r" in [\d.]+s", line)]
    if not lines:
        return {}
    return {outcome: int(count) for count, outcome in re.findall(r"(\d+) ([a-z]+)", lines[-1])}


@dataclass
class Result:
    stage: str
    status: str
    """passed, failed, cut, skipped (no CUDA), not run or not asked."""
    seconds: float = 0.0
    budget_s: float = 0.0
    detail: str = ""


@dataclass
class Runner:
    out: Path
    budget_s: float
    budgets: dict[str, int]
    asked: Sequence[str]
    python: str = sys.executable
    wheels: Path = REPO / ".whl"
    site: Path = Path("/tmp/segexp-site")
    runs: Path = Path("/tmp/segexp-runs")
    row: str = "mg111"
    seeds: int = 1
    started: float = field(default_factory=time.monotonic)
    results: list[Result] = field(default_factory=list)
    cuda: bool | None = None
    setup_failed: bool = False

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUT_FILES:
            (self.out / name).unlink(missing_ok=True)
        path = [str(REPO / "src"), str(REPO), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")]
        self.env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": os.pathsep.join(p for p in path if p),
                    "SEGEXP_OUTPUT_DIR": str(self.runs)}
        self.say(f"device check: budget {self.budget_s:.0f} s (estimated device time of this call "
                 f"{estimated_call_s(self.budget_s) / 60:.1f} min with the machine's start and the transfers); "
                 f"stages {' '.join(self.asked)}; results in {self.out}")

    # ------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, line: str) -> None:
        text = f"[{time.strftime('%H:%M:%S')} +{self.elapsed():4.0f} s] {line}"
        print(text, flush=True)
        with (self.out / "summary.txt").open("a") as summary:
            summary.write(text + "\n")

    def record(self, result: Result) -> Result:
        self.results.append(result)
        spent = f" ({result.seconds:.0f} s of {result.budget_s:.0f})" if result.budget_s else ""
        self.say(f"{result.stage:5s} {result.status}{spent}{': ' + result.detail if result.detail else ''}")
        return result

    # ------------------------------------------------------------------ running commands
    def run(self, command: Sequence[str], log: Path, timeout_s: float, append: bool = False,
            poll: Callable[[], None] | None = None) -> tuple[int | None, bool]:
        """``command`` in its own session with stdout and stderr to ``log``; past ``timeout_s`` its whole
        process group gets SIGTERM, then SIGKILL. Returns (exit status, timed out)."""
        with log.open("a" if append else "w") as stream:
            stream.write(f"$ {shlex.join(command)}\n")
            stream.flush()
            process = subprocess.Popen(list(command), stdout=stream, stderr=subprocess.STDOUT, cwd=REPO,
                                       env=self.env, start_new_session=True)
            deadline = time.monotonic() + timeout_s
            timed_out = False
            while True:
                try:
                    code = process.wait(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if poll:
                        poll()
                    if time.monotonic() >= deadline:
                        timed_out = True
                        code = self.stop(process)
                        stream.write(f"\n[device check: cut after {timeout_s:.0f} s]\n")
                        break
        if poll:
            poll()
        return code, timed_out

    @staticmethod
    def stop(process: subprocess.Popen) -> int | None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                return process.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                continue
        return process.poll()

    # ------------------------------------------------------------------ setup: the carried wheels
    def missing_modules(self) -> list[str]:
        probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
        done = subprocess.run([self.python, "-c", probe, *NEEDED_MODULES], capture_output=True, text=True,
                              env=self.env, cwd=REPO, timeout=60)
        return done.stdout.split()

    def setup(self) -> Result:
        start = time.monotonic()

        def result(status: str, detail: str) -> Result:
            self.setup_failed = status != "passed"
            return self.record(Result("setup", status, time.monotonic() - start, SETUP.budget_s, detail))

        missing = self.missing_modules()
        if not missing:
            return result("passed", f"{', '.join(NEEDED_MODULES)} importable: no wheels installed")
        wheels = sorted(self.wheels.glob("*.whl"))
        if not wheels:
            return result("failed", f"cannot import {', '.join(missing)} and {self.wheels} holds no wheels: run "
                                    "scripts/device_prepare.sh where pip reaches PyPI, and name .whl in carry")
        install = [self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--upgrade", "--target", str(self.site), *map(str, wheels)]
        try:
            done = subprocess.run(install, capture_output=True, text=True, env=self.env, cwd=REPO,
                                  timeout=SETUP.budget_s)
        except subprocess.TimeoutExpired:
            return result("cut", f"installing {len(wheels)} wheels took over {SETUP.budget_s} s")
        if done.returncode != 0:
            return result("failed", f"pip could not install the wheels of {self.wheels}: "
                                    f"{(done.stderr or done.stdout).strip()[-1500:]}")
        self.env["PYTHONPATH"] = os.pathsep.join([str(self.site), self.env["PYTHONPATH"]])
        still = self.missing_modules()
        if still:
            return result("failed", f"installed {len(wheels)} wheels into {self.site}, yet {', '.join(still)} "
                                    "cannot be imported: check scripts/device_prepare.sh's package list")
        return result("passed", f"installed {len(wheels)} wheels from {self.wheels} into {self.site}")

    # ------------------------------------------------------------------ stages
    def stage(self, stage: Stage) -> Result:
        budget = self.budgets.get(stage.name, stage.budget_s)
        if stage.name not in self.asked:
            return Result(stage.name, "not asked", budget_s=0)
        if self.setup_failed and stage.name != "env":
            return self.record(Result(stage.name, "not run", detail="setup failed (see above)"))
        timeout = stage_timeout(budget, min(stage.min_s, budget), self.budget_s, self.elapsed())
        left = self.budget_s - self.elapsed() - WRAP_UP_S
        if timeout is None:
            return self.record(Result(stage.name, "cut", detail=f"budget: {max(left, 0):.0f} s left, the stage "
                                                                f"needs at least {min(stage.min_s, budget)} s"))
        if stage.needs_cuda and self.cuda is None:  # the env stage did not say
            self.cuda = self.probe_cuda()
        self.say(f"{stage.name:5s} started: {stage.what} (timeout {timeout:.0f} s)")
        start = time.monotonic()
        status, detail = getattr(self, f"stage_{stage.name}")(timeout)
        return self.record(Result(stage.name, status, time.monotonic() - start, timeout, detail))

    def outcome(self, code: int | None, timed_out: bool, timeout: float, needs_cuda: bool,
                detail: str) -> tuple[str, str]:
        if timed_out:
            return "cut", f"timed out after {timeout:.0f} s; {detail}".rstrip("; ")
        if code != 0:
            return "failed", f"exit status {code}; {detail}".rstrip("; ")
        if needs_cuda and not self.cuda:
            return "skipped (no CUDA)", detail
        return "passed", detail

    def stage_env(self, timeout: float) -> tuple[str, str]:
        log = self.out / "env.txt"
        code, timed_out = self.run([self.python, str(Path(__file__).resolve()), "--env-facts"], log, timeout)
        text = log.read_text(errors="replace")
        found = re.findall(r"^cuda_available=(True|False)$", text, flags=re.M)
        self.cuda = found[-1] == "True" if found else self.probe_cuda()
        summary = re.findall(r"^summary: (.*)$", text, flags=re.M)
        return self.outcome(code, timed_out, timeout, False, summary[-1] if summary else "")

    def probe_cuda(self) -> bool:
        try:
            done = subprocess.run([self.python, "-c", "import torch; print(torch.cuda.is_available())"],
                                  capture_output=True, text=True, env=self.env, cwd=REPO, timeout=60)
        except subprocess.TimeoutExpired:
            return False
        return done.stdout.strip().endswith("True")

    def pytest_stage(self, name: str, marker: str, timeout: float) -> tuple[str, str]:
        log = self.out / f"{name}.log"
        per_test = min(PER_TEST_TIMEOUT_S[name], max(1, int(timeout) - 5))
        command = [self.python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-m", marker, "-v",
                   "--tb=short", "-rs", "--durations=10", "-p", "pytest_test_timeout",
                   f"--per-test-timeout={per_test}", "tests/gpu/"]
        code, timed_out = self.run(command, log, timeout)
        counts = pytest_counts(log.read_text(errors="replace"))
        detail = ", ".join(f"{count} {outcome}" for outcome, count in counts.items())
        if not self.cuda and not timed_out and code == 0:
            detail = f"pytest collected the CUDA tests and each skipped with its reason: {detail}"
        return self.outcome(code, timed_out, timeout, True, detail)

    def stage_tests(self, timeout: float) -> tuple[str, str]:
        return self.pytest_stage("tests", "gpu and not slow", timeout)

    def stage_slow(self, timeout: float) -> tuple[str, str]:
        return self.pytest_stage("slow", "gpu and slow", timeout)

    def camvid_data_dir(self) -> str | None:
        """``$SEGEXP_DATA_DIR`` when set, else a folder whose ``camvid`` is the carried ``.camvid/``."""
        if os.environ.get("SEGEXP_DATA_DIR"):
            return os.environ["SEGEXP_DATA_DIR"]
        if not (REPO / ".camvid").is_dir():
            return None
        data = self.runs / "data"
        data.mkdir(parents=True, exist_ok=True)
        link = data / "camvid"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(REPO / ".camvid")
        return str(data)

    def stage_proxy(self, timeout: float) -> tuple[str, str]:
        log, copied = self.out / "proxy.log", self.out / "metrics.json"
        data_dir = self.camvid_data_dir()
        if data_dir is None and self.cuda:
            return "not run", "no CamVid: carry .camvid/ (scripts/device_prepare.sh) or set SEGEXP_DATA_DIR"
        if data_dir:
            self.env["SEGEXP_DATA_DIR"] = data_dir
        command = [self.python, "-m", "segexp.cli.table", "run", TABLE, "--profile", PROFILE, "--rows", self.row,
                   "--seeds", str(self.seeds)]
        if not self.cuda:
            command.append("--dry-run")
        # segexp.tables.store's layout: <SEGEXP_OUTPUT_DIR>/tables/<table>/<profile>/<row>/seed<k>/metrics.json
        row_dir = self.runs / "tables" / TABLE / PROFILE / self.row / "seed0"

        def copy_metrics() -> None:
            source = row_dir / "metrics.json"
            if source.is_file() and not copied.exists():
                try:
                    json.loads(source.read_text())
                except (OSError, ValueError):
                    return  # being written: the next look copies it
                shutil.copyfile(source, copied)

        started = time.time()
        code, timed_out = self.run(command, log, timeout, poll=copy_metrics)
        with log.open("a") as stream:
            for extra in (REPO / "experiments" / "results" / f"{TABLE}.{PROFILE}.md", row_dir / "error.json"):
                if extra.is_file() and extra.stat().st_mtime >= started:
                    stream.write(f"\n----- {extra}\n{extra.read_text(errors='replace')}")
        detail = "dry run of the row's command" if not self.cuda else ""
        if copied.exists():
            metrics = json.loads(copied.read_text())
            detail = (f"{self.row}: mIoU {metrics.get('mIoU')}, {metrics.get('steps')} steps, {metrics.get('wall_s')} "
                      f"s, {metrics.get('device')}, {metrics.get('precision')}")
        elif self.cuda and not timed_out and code == 0:
            code, detail = 1, f"the run ended without {row_dir / 'metrics.json'}"
        return self.outcome(code, timed_out, timeout, True, detail)

    def stage_bench(self, timeout: float) -> tuple[str, str]:
        log, figures = self.out / "bench.log", self.out / "bench.json"
        # the benchmark rewrites its JSON after every measurement (atomically, beside it): written outside OUT
        # and copied in, so that a cut never leaves a temporary file among the results
        written = self.runs / "bench.json"
        command = [self.python, "-m", "segexp.cli.bench", "--parts", "training", "--only-os", "16",
                   "--compare-layouts", "--channels-last=true", "--warmup=10", "--steps=30", "--json", str(written)]
        if (self.wheels / "bench-flops.json").is_file():
            command += ["--flops", str(self.wheels / "bench-flops.json")]
        if not self.cuda:
            command.append("--plan")

        def copy_figures() -> None:
            if written.is_file() and (not figures.exists() or written.stat().st_mtime > figures.stat().st_mtime):
                shutil.copyfile(written, figures)

        self.runs.mkdir(parents=True, exist_ok=True)
        code, timed_out = self.run(command, log, timeout, poll=copy_figures)
        detail = "printed its plan" if not self.cuda else ""
        if figures.is_file():
            detail = bench_detail(json.loads(figures.read_text()))
        return self.outcome(code, timed_out, timeout, True, detail)

    # ------------------------------------------------------------------ the end
    def finish(self) -> int:
        rows = [f"{'stage':6s} {'status':18s} {'seconds':>7s} {'timeout':>7s}  detail"]
        for result in self.results:
            rows.append(f"{result.stage:6s} {result.status:18s} {result.seconds:7.0f} {result.budget_s:7.0f}  "
                        f"{result.detail[:300]}")
        groups = {"ran": [r.stage for r in self.results if r.seconds > 0]}
        for status in ("passed", "failed", "cut", "skipped (no CUDA)", "not run"):
            groups[status] = [r.stage for r in self.results if r.status == status]
        rows.append(" | ".join(f"{status}: {' '.join(names) or '-'}" for status, names in groups.items()))
        rows.append(f"total {self.elapsed():.0f} s of the {self.budget_s:.0f} s budget; files in {self.out}: "
                    f"{', '.join(sorted(p.name for p in self.out.iterdir()))}")
        with (self.out / "summary.txt").open("a") as summary:
            summary.write("\n" + "\n".join(rows) + "\n")
        print("\n".join(rows), flush=True)
        if groups["failed"] or groups["not run"]:
            return 1
        return 3 if groups["cut"] else 0


def bench_detail(report: dict) -> str:
    """One line of the benchmark's figures at OS 16."""
    result = report.get("training", {}).get("os16")
    if not result:
        return f"no training figures yet (complete: {report.get('complete')})"
    parts = [f"segexp {result['segexp']['images_per_s']:.1f} images/s", f"MFU {result['mfu']:.1%} of the measured "
             f"{report.get('bf16_peak_tflops', 0):.0f} TFLOP/s"]
    if result.get("mfu_datasheet"):
        parts.append(f"{result['mfu_datasheet']:.1%} of the datasheet's {report['datasheet_bf16_tflops']:.0f}")
    parts.append(f"segexp/bare {result['segexp_over_bare']:.3f}")
    if "channels_last_speedup" in result:
        parts.append(f"channels_last {result['channels_last_speedup']:.2f}x contiguous")
    return ", ".join(parts)


# ---------------------------------------------------------------------- env facts (runs in the stage's python)
def env_facts() -> int:
    """Print the machine's facts; the last lines are ``summary: ...`` and ``cuda_available=...``."""
    import importlib
    import platform

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')} | host {platform.node()} | {platform.platform()}")
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu"
        for command in (["nvidia-smi"], ["nvidia-smi", f"--query-gpu={query}", "--format=csv"]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            print(done.stdout + done.stderr)
    else:
        print("nvidia-smi: not found")
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    site = os.environ.get("SEGEXP_SITE_DIR", "")
    for name in ("torch", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "albumentations", "albucore",
                 "pydantic", "numpy", "cv2", "PIL", "scipy", "yaml", "wandb"):
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a fact to report, whatever the reason
            print(f"{name:18s} not importable: {type(err).__name__}: {err}")
            continue
        where = getattr(module, "__file__", "") or ""
        carried = " (carried wheel)" if site and where.startswith(site) else ""
        print(f"{name:18s} {getattr(module, '__version__', '?'):12s} {where}{carried}")
    summary = "torch not importable"
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        print(f"torch CUDA {torch.version.cuda} | cuDNN {torch.backends.cudnn.version()} | CUDA available {cuda}")
        summary = f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        if cuda:
            props = torch.cuda.get_device_properties(0)
            print(f"device {props.name} | capability {props.major}.{props.minor} | {props.multi_processor_count} SMs "
                  f"| {props.total_memory / 2**30:.0f} GiB | bf16 {torch.cuda.is_bf16_supported()} | "
                  f"devices {torch.cuda.device_count()}")
            summary = f"{props.name} x{torch.cuda.device_count()}, {summary}"
        else:
            summary = f"no CUDA device, {summary}"
    except Exception as err:  # noqa: BLE001
        print(f"torch: {type(err).__name__}: {err}")
    try:
        import segexp.training.build  # noqa: F401 - everything a run imports

        print("segexp imports: ok")
    except Exception as err:  # noqa: BLE001
        print(f"segexp imports: FAILED: {type(err).__name__}: {err}")
        summary += "; segexp does not import"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpus {os.cpu_count()} (usable {cpus})")
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        print(" | ".join(line for line in meminfo.read_text().splitlines() if line.startswith(("MemTotal",
                                                                                                "MemAvailable"))))
    for folder in ("/dev/shm", "/tmp"):
        if os.path.isdir(folder):
            usage = shutil.disk_usage(folder)
            print(f"{folder}: {usage.total / 2**30:.1f} GiB, {usage.free / 2**30:.1f} GiB free")
    print("offline settings: " + " ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in OFFLINE_ENV))
    print(f"summary: {summary}")
    print(f"cuda_available={cuda}")
    return 0 if summary != "torch not importable" else 1


# ---------------------------------------------------------------------- command line
def parse_stage_budget(text: str) -> tuple[str, int]:
    name, _, seconds = text.partition("=")
    if name not in STAGE_NAMES or not seconds.isdigit():
        raise argparse.ArgumentTypeError(f"--stage-budget {text!r}: expected NAME=SECONDS with NAME one of "
                                         f"{', '.join(STAGE_NAMES)}")
    return name, int(seconds)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", metavar="[OUT_DIR] [STAGE ...]",
                        help=f"the results folder (default $OUT, else outputs/device), then stages out of "
                             f"{' '.join(STAGE_NAMES)} (default: all, always in this order)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole script")
    parser.add_argument("--stage-budget", type=parse_stage_budget, action="append", default=[],
                        metavar="NAME=SECONDS", help="change one stage's budget (its timeout)")
    parser.add_argument("--row", default=os.environ.get("ROWS", "mg111"), help="the proxy's row of deeplabv3.t5")
    parser.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", "1")))
    parser.add_argument("--plan", action="store_true", help="print the stage budgets and the estimate, run nothing")
    parser.add_argument("--env-facts", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    words = list(args.words)
    args.out = Path(words.pop(0)) if words and words[0] not in STAGE_NAMES else Path(
        os.environ.get("OUT") or REPO / "outputs" / "device")
    unknown = [word for word in words if word not in STAGE_NAMES]
    if unknown:
        parser.error(f"unknown stage(s) {' '.join(unknown)}: the stages are {' '.join(STAGE_NAMES)}")
    args.stages = [name for name in STAGE_NAMES if name in words] or list(STAGE_NAMES)
    return args


def plan_lines(budget_s: float, budgets: dict[str, int]) -> list[str]:
    lines = [f"{'stage':6s} {'budget':>6s} {'min':>5s} {'expect':>6s}  what"]
    for stage in (SETUP, *STAGES):
        budget = budgets.get(stage.name, stage.budget_s)
        lines.append(f"{stage.name:6s} {budget:6d} {min(stage.min_s, budget):5d} {stage.expect_s:6d}  {stage.what}")
    expected = SETUP.expect_s + sum(stage.expect_s for stage in STAGES)
    lines.append(f"script budget {budget_s:.0f} s (expected {expected} s); estimated device time of one call "
                 f"{estimated_call_s(budget_s):.0f} s = machine start {MACHINE_START_S} + transfers {TRANSFER_S} "
                 f"+ budget")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.env_facts:
        return env_facts()
    budgets = dict(args.stage_budget)
    if args.plan:
        print("\n".join(plan_lines(args.budget, budgets)))
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = Path(os.environ.get("SEGEXP_OUTPUT_DIR") or f"/tmp/segexp-runs/{stamp}")
    runner = Runner(out=args.out.resolve(), budget_s=args.budget, budgets=budgets, asked=args.stages,
                    wheels=Path(os.environ.get("SEGEXP_WHEELS") or REPO / ".whl").resolve(),
                    site=Path(os.environ.get("SEGEXP_SITE") or "/tmp/segexp-site"), runs=runs, row=args.row,
                    seeds=args.seeds)
    runner.env["SEGEXP_SITE_DIR"] = str(runner.site)
    runner.setup()
    for stage in STAGES:
        runner.stage(stage)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
