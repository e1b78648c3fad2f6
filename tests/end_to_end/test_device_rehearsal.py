"""The device check rehearsed end to end on this CPU (slow): scripts/device_check.sh installs the carried wheels into
a venv that lacks them, runs every stage (CUDA stages skip and say so), writes at most the 8 files the device tool
brings back, and a stage cut by its timeout does not stop the next."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from segexp.config import REPO_ROOT
from tests.helpers.scripts import load_script

stages = load_script("device_stages")

# ------------------------------------------------------------------------------ the dry rehearsal
def prepared_packages() -> list[str]:
    """The PACKAGES scripts/device_prepare.sh makes wheels of."""
    [names] = re.findall(r'^PACKAGES="([^"]*)"', (REPO_ROOT / "scripts" / "device_prepare.sh").read_text(), re.M)
    return names.split()


def repack_wheel(name: str, folder: Path) -> Path:
    """The installed distribution ``name`` of this venv as a wheel in ``folder`` (its RECORD's files under its
    WHEEL tag): the rehearsal's stand-in for a wheel downloaded from PyPI."""
    dist = importlib.metadata.distribution(name)
    tag = next(line.split(": ", 1)[1] for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag: "))
    project = re.sub(r"[-.]+", "_", dist.metadata["Name"])
    wheel = folder / f"{project}-{dist.version}-{tag}.whl"
    base = Path(dist.locate_file(""))
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in dist.files or []:
            if file.parts[0] != ".." and "__pycache__" not in file.parts and (base / file).is_file():
                archive.write(base / file, str(file))
    return wheel


def venv_without(folder: Path, absent: Sequence[str]) -> Path:
    """A venv that sees this venv's packages (symbolic links) except the distributions ``absent``; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = folder / "lib" / version / "site-packages"
    source = Path(sysconfig.get_paths()["purelib"])
    skipped = set()
    for name in absent:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        skipped.update(file.parts[0] for file in files if file.parts[0] != "..")
    for entry in source.iterdir():
        if entry.name not in skipped and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    return folder / "bin" / "python"


def summary_line(summary: str, stage: str) -> str:
    """The line summary.txt got when ``stage`` ended."""
    ended = rf"\[[\d:]+ \+\s*\d+ s\] {stage}\s+(passed|failed|cut|skipped|not run)"
    [line] = [line for line in summary.splitlines() if re.match(ended, line)]
    return line


@pytest.mark.slow
def test_rehearsal_runs_the_device_check_end_to_end_on_this_cpu(tmp_path: Path) -> None:
    """The lease's one command, here: the venv lacks what the image lacks (hydra-core, omegaconf, albumentations,
    wandb, ...), so the script installs them from wheels as on the device; CUDA stages skip and say so."""
    carried = prepared_packages()
    python = venv_without(tmp_path / "venv", [*carried, "wandb", "hydra-submitit-launcher", "segexp"])
    lacking = subprocess.run([str(python), "-c", "import hydra"], capture_output=True, text=True)
    assert lacking.returncode != 0 and "No module named 'hydra'" in lacking.stderr
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in carried:
        repack_wheel(name, wheels)
    subprocess.run([sys.executable, "-m", "segexp.cli.bench", "--write-flops", str(wheels / "bench-flops.json")],
                   check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(python), SEGEXP_WHEELS=str(wheels), SEGEXP_SITE=str(tmp_path / "site"),
               SEGEXP_OUTPUT_DIR=str(tmp_path / "runs"))
    start = time.monotonic()
    # the H200's stage budgets are no measure of a busy CPU machine: generous ones here, so none is cut
    generous = [arg for name in stages.STAGE_NAMES for arg in ("--stage-budget", f"{name}=600")]
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "device_check.sh"), str(out), "--budget", "3000",
                           *generous], capture_output=True, text=True, env=env, timeout=3300)
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert set(files) <= set(stages.OUT_FILES) and len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    assert "metrics.json" not in files and "bench.json" not in files  # nothing trained or timed without CUDA
    summary = (out / "summary.txt").read_text()
    assert f"installed {len(carried)} wheels from {wheels}" in summary_line(summary, "setup")
    assert re.search(r"env\s+passed .*no CUDA device, torch " + re.escape(torch.__version__), summary)
    for stage in ("tests", "proxy", "bench", "slow"):
        assert "skipped (no CUDA)" in summary_line(summary, stage), summary
    assert "each skipped with its reason" in summary_line(summary, "tests")
    assert "passed: setup env | failed: - | cut: - | skipped (no CUDA): tests proxy bench slow" in summary
    facts = (out / "env.txt").read_text()
    assert re.search(rf"^hydra .* {re.escape(str(tmp_path / 'site'))}.*\(carried wheel\)$", facts, flags=re.M)
    assert "NO_ALBUMENTATIONS_UPDATE=1" in facts and "cuda_available=False" in facts
    assert "segexp imports: ok" in facts
    tests_log = (out / "tests.log").read_text()
    assert "CUDA-only check: no CUDA device here" in tests_log and " error" not in tests_log.lower()
    assert "--dry-run" in (out / "proxy.log").read_text()
    assert f"(from {wheels / 'bench-flops.json'})" in (out / "bench.log").read_text()
    assert "test_compiled_model_trains_and_keeps_checkpoint_keys SKIPPED" in (out / "slow.log").read_text()
    print(f"rehearsal: device_check.sh took {wall:.0f} s here")


@pytest.mark.slow
def test_a_stage_cut_by_its_timeout_does_not_stop_the_next(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "SEGEXP_OUTPUT_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "device_check.sh"), str(tmp_path / "out"),
                           "--budget", "300", "--stage-budget", "tests=2", "tests", "bench"],
                          capture_output=True, text=True, env=env, timeout=600)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert done.returncode == 3, summary  # cut, none failed
    assert "importable: no wheels installed" in summary_line(summary, "setup")
    assert re.search(r"cut \(\d+ s of 2\): timed out after 2 s", summary_line(summary, "tests"))
    assert "skipped (no CUDA)" in summary_line(summary, "bench")
    assert "| cut: tests |" in summary
    assert "[device check: cut after 2 s]" in (tmp_path / "out" / "tests.log").read_text()
