"""The tests are laid out like the package (tests/README.md): a folder per package of src/segexp, and the folders
whose place says when they run: every test of ``tests/end_to_end/`` is slow, every test of ``tests/gpu/`` needs
CUDA, so ``make test`` (``-m 'not slow'``) never runs the one and ``make test-gpu`` picks the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from segexp.config import REPO_ROOT

TESTS = Path(__file__).resolve().parent
PACKAGES = ("models", "data", "training", "tables", "cli")


def selected(folder: str, marker: str) -> int:
    """The exit code of collecting ``tests/<folder>/`` with ``-m <marker>``: 5 when it selects nothing."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-o", "addopts=", "-m", marker,
                           str(TESTS / folder)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]
    return done.returncode


def test_every_package_of_segexp_has_its_test_folder() -> None:
    assert all((REPO_ROOT / "src" / "segexp" / name).is_dir() for name in PACKAGES)
    assert all((TESTS / name / "__init__.py").is_file() for name in PACKAGES)


def test_the_end_to_end_folder_is_slow_and_the_gpu_folder_is_gpu() -> None:
    assert list((TESTS / "end_to_end").glob("test_*.py")) and list((TESTS / "gpu").glob("test_*.py"))
    assert selected("end_to_end", "not slow") == 5  # every test there is slow
    assert selected("gpu", "not gpu") == 5


def test_the_readme_layout_table_names_every_module() -> None:
    """README "Layout" names each module of src/segexp and its packages (deeper folders such as ``heads/`` by their
    folder), so the table a newcomer reads matches the tree."""
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme[readme.index("### Layout"):readme.index("### Adding a component")]
    package = REPO_ROOT / "src" / "segexp"
    missing = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        if path.name == "__init__.py":
            continue
        names = (path.name, f"`{path.stem}`") if len(parts) <= 2 else (f"`{parts[1]}/`",)
        if not any(name in layout for name in names):
            missing.append("/".join(parts))
    assert not missing, f"README Layout does not name: {missing}"
