"""Fixtures every test folder shares (target checks on by default, composing the tiny run, one OpenMP thread for
training subprocesses) and the markers the layout gives: every test under ``tests/end_to_end/`` is ``slow``
(``make test-slow``), every test under ``tests/gpu/`` is ``gpu`` (``make test-gpu``). Plain helpers live in
``tests/helpers/``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from segexp.config import compose_config
from segexp.targets import TRUST_TARGETS_ENV
from tests.helpers.runs import FAST_RUN

TESTS_DIR = Path(__file__).resolve().parent
FOLDER_MARKERS = {"end_to_end": "slow", "gpu": "gpu"}
"""The folders whose every test carries a marker, so that where a test lives says when it runs."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of ``tests/end_to_end/`` slow and those of ``tests/gpu/`` gpu, before ``-m`` selects."""
    for item in items:
        folder = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])


@pytest.fixture(autouse=True)
def untrusted_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with the target checks on (whatever the shell has), and what a test switches on
    (``--trust-targets`` sets the variable in this process) is undone after it."""
    monkeypatch.setenv(TRUST_TARGETS_ENV, "")


@pytest.fixture
def trusted_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as with ``--trust-targets``: for tests that plug their own classes in (``_target_=tests....``)."""
    monkeypatch.setenv(TRUST_TARGETS_ENV, "1")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with FAST_RUN + ``overrides``, writing into a fresh tmp folder."""

    def make(*overrides: str, base: Sequence[str] = FAST_RUN, config_name: str = "train") -> DictConfig:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        return compose_config([*base, f"output_dir={out}", *overrides], config_name=config_name)

    return make


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training subprocesses use one OpenMP thread: on a busy 2-core machine, 2 threads contending with
    other processes make these tiny runs ~10x slower (spinning OpenMP barriers)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
