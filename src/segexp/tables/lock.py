"""One ``segexp-table run`` per table and profile at a time: a pid file in the profile's run folder, taken over
when the process that wrote it is gone (a killed run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segexp.atomic import process_alive
from segexp.tables.paths import display_path
from segexp.tables.yaml_reader import SpecError

LOCK_FILE = ".lock"


@contextmanager
def table_lock(base_dir: Path) -> Iterator[None]:
    """One ``segexp-table run`` per table and profile at a time (``<profile dir>/.lock`` holds its pid)."""
    lock = base_dir / LOCK_FILE
    base_dir.mkdir(parents=True, exist_ok=True)
    acquire_lock(lock)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def acquire_lock(lock: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = lock.read_text().strip()
            if pid.isdigit() and not process_alive(int(pid)):
                lock.unlink(missing_ok=True)  # left behind by a killed run
                continue
            message = f"{display_path(lock)}: a run of this table and profile is in progress (pid {pid})"
            raise SpecError(message) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return
    raise SpecError(f"{display_path(lock)}: could not take the lock")


