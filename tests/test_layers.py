"""The package's layers point down (README "Layout"): the import-linter contract of ``.importlinter`` holds.

``cli -> tables -> training -> models | data -> validation -> targets -> environment -> config -> resolvers ->
atomic | geometry | labels | overrides``:
a module imports only from layers below its own (models and data are independent of each other).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def loggers_kept_enabled() -> Iterator[None]:
    """import-linter configures logging with ``disable_existing_loggers``: every logger that exists then (segexp's
    among them) would stay disabled for the tests that run later in this process."""
    loggers = [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    disabled = {lg.name: lg.disabled for lg in loggers}
    yield
    for lg in loggers:
        lg.disabled = disabled[lg.name]


def test_the_layering_contract_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlinter.cli import lint_imports

    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True, no_logo=True) == 0


def test_the_contract_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same contract over a copy of the package in which a model imports the table runner fails."""
    from importlinter.cli import lint_imports

    package = tmp_path / "segexp"
    shutil.copytree(REPO / "src" / "segexp", package, ignore=shutil.ignore_patterns("__pycache__"))
    losses = package / "models" / "losses" / "cross_entropy.py"
    losses.write_text(losses.read_text() + "\nfrom segexp.tables import runner  # noqa: E402,F401\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ours = [m for m in sys.modules if m == "segexp" or m.startswith("segexp.")]
    for name in ours:
        monkeypatch.delitem(sys.modules, name)  # grimp finds the package through the import system
    try:
        assert lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True, no_logo=True) == 1
    finally:  # modules of the copy imported meanwhile must not serve later tests (monkeypatch restores only ours)
        for name in [m for m in sys.modules if (m == "segexp" or m.startswith("segexp.")) and m not in ours]:
            del sys.modules[name]
