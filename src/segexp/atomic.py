"""Atomic file writes: the one place that writes a file through a temporary file and ``os.replace``.

A reader (a table runner polling ``metrics.json``, a resumed run opening ``last.ckpt``, a report being
regenerated) then sees either the old file or the new one, never a truncated one. The temporary file is a
hidden, uniquely named sibling of the target (``.<name>.<pid>.<random>.tmp``: same folder, so the rename
is atomic and concurrent writers -- DDP ranks, submitit tasks -- never share one) and is removed when the
write fails half-way, leaving the old file as it was. A writer killed outright (SIGKILL, OOM killer) cannot
remove it: the next write of the same file removes such leftovers of dead processes
(:func:`remove_stale_temporaries`).

    with atomic_path(path) as tmp:     # any writer that takes a path
        trainer.save_checkpoint(tmp)
    write_text(path, text)
    write_json(path, payload)          # NaN / +-inf -> null: the file stays valid JSON
    write_png(path, image)             # a PIL image
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for its temporary copy (unique per process and call)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temporaries of ``<folder>/<name>`` (a glob) left by writers whose process is gone (killed
    during a write); a live writer's temporary is left alone. Returns the removed paths."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        pid = tmp.name.removesuffix(".tmp").rsplit(".", 2)[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (so a power cut after the rename cannot leave an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception, the file written
    there replaces ``path`` (optionally fsynced first). On an exception the temporary file is removed and
    ``path`` is left untouched. The block must create the temporary file."""
    target = Path(path)
    if target.parent.is_dir():
        remove_stale_temporaries(target.parent, target.name)
    tmp = temporary_sibling(target)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: str | Path, write: Callable[[Path], object], fsync: bool = False) -> None:
    """``write(tmp)`` writes the content to a temporary path, which then replaces ``path``."""
    with atomic_path(path, fsync) as tmp:
        write(tmp)


def write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    write_with(path, lambda tmp: tmp.write_text(text), fsync)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) in it, at any depth, replaced by None (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path: str | Path, payload: Any, indent: int | None = 2, fsync: bool = False) -> None:
    """Write ``payload`` as JSON (plus a final newline). Non-finite floats (e.g. the NaN mIoU of a split
    without labelled pixels) are written as null: the file stays valid JSON, which has no NaN token. The
    caller's object is not modified."""
    text = json.dumps(json_safe(payload), indent=indent, allow_nan=False) + "\n"
    write_text(path, text, fsync)


def write_png(path: str | Path, image: Image.Image, fsync: bool = False) -> None:
    """Write a PIL image as PNG (the format is given, so the temporary name's suffix does not matter)."""
    write_with(path, lambda tmp: image.save(tmp, format="PNG"), fsync)
