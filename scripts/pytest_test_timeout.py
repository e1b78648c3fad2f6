"""pytest plugin: ``--per-test-timeout=SECONDS`` fails a test whose setup, call or teardown runs longer than that,
with the stack where it stood, and the session goes on with the next test.

It uses SIGALRM in the main thread, so a test stuck inside native code that never returns (a hung collective,
say) is left to the timeout of the whole command (scripts/device_stages.py gives every stage one). Loaded with
``-p pytest_test_timeout`` when ``scripts/`` is on ``PYTHONPATH``; stdlib and pytest only, so it works where
pytest-timeout is not installed.
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--per-test-timeout", type=float, default=0.0, metavar="SECONDS",
                     help="fail a test whose setup, call or teardown runs longer (0: no limit)")


@contextmanager
def deadline(item: pytest.Item, phase: str) -> Iterator[None]:
    seconds = float(item.config.getoption("per_test_timeout") or 0)
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        stack = "".join(traceback.format_stack(frame)[-8:]) if frame else ""  # the innermost frames
        pytest.fail(f"{item.nodeid} ({phase}) ran past --per-test-timeout={seconds:g} s; it stood at:\n{stack}",
                    pytrace=False)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with deadline(item, "setup"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with deadline(item, "call"):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    with deadline(item, "teardown"):
        yield
