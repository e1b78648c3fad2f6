"""The wheel: conf/ is built in as ``segexp/conf``, every subpackage is there, and a non-editable install trains
from a directory outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers.runs import FAST_RUN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """segexp's wheel, built from a copy of the sources (building in the checkout would leave build/ there)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("src", "conf"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / file, source / file)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    [built] = (root / "dist").glob("segexp-*.whl")
    return built


def test_the_wheel_carries_conf_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "segexp/conf/train.yaml" in names and "segexp/conf/logger/csv.yaml" in names
    conf = {f"segexp/{p.relative_to(REPO)}" for p in (REPO / "conf").rglob("*.yaml")}
    assert {n for n in names if n.startswith("segexp/conf/")} == conf
    # pyproject.toml lists the packages by hand (conf/ is mapped in from outside src/): none may be missing
    modules = {str(p.relative_to(REPO / "src")) for p in (REPO / "src" / "segexp").rglob("*.py")}
    assert modules <= names, f"not in the wheel (add the package to pyproject.toml): {sorted(modules - names)}"


def fresh_venv(root: Path) -> Path:
    """A new venv whose own site-packages comes first and that finds the third-party packages of this one
    through a plain path line (so this venv's .pth files, among them the editable segexp finder, never run)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "segexp_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_a_non_editable_install_trains_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SEGEXP_OUTPUT_DIR", "SEGEXP_DATA_DIR", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import segexp.config as c; print(c.__file__, c.CONF_DIR, c.SOURCE_CHECKOUT)"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert where == [str(venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
                         / "segexp" / "config.py"), str(Path(where[0]).parent / "conf"), "False"]

    overrides = [o for o in FAST_RUN if not o.startswith(("logger=", "trainer.max_steps", "trainer.val_check"))]
    run = subprocess.run([venv / "bin" / "segexp-train", *overrides, "logger=csv", "trainer.max_steps=2",
                          "trainer.val_check_interval=2"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [metrics_file] = (elsewhere / "outputs").rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["steps"] == 2 and metrics["git_commit"] is None
    [hparams] = (metrics_file.parent / "csv").rglob("hparams.yaml")  # the resolved config, as logged
    assert yaml.safe_load(hparams.read_text())["data_dir"] == str(elsewhere / "data")
    assert (metrics_file.parent / "checkpoints" / "last.ckpt").is_file()

    table = subprocess.run([venv / "bin" / "segexp-table", "list"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120)
    assert table.returncode == 2 and "segexp-table reads experiments/ of a source checkout" in table.stderr
