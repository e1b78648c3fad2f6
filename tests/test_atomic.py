"""segexp.atomic: every file segexp writes for others to read is replaced whole or not at all."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from segexp import atomic


def strict_json(path: Path) -> object:
    """Parse ``path`` refusing NaN / Infinity tokens (what a strict JSON reader does)."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old\n")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_with(path, half_then_crash)
    with pytest.raises(TypeError):  # fails while serialising, after the target was chosen
        atomic.write_json(path, {"value": object()})
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(path) as tmp:
        tmp.write_bytes(b"torn")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_successful_write_replaces_the_file_and_leaves_only_it(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old\n")
    atomic.write_text(path, "new\n", fsync=True)
    atomic.write_png(tmp_path / "mask.png", Image.new("L", (3, 2), color=7))
    assert path.read_text() == "new\n"
    assert Image.open(tmp_path / "mask.png").getpixel((2, 1)) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "report.md"]


def test_temporary_names_are_hidden_siblings_and_unique(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    names = {atomic.temporary_sibling(path) for _ in range(100)}
    assert len(names) == 100
    assert all(p.parent == tmp_path and p.name.startswith(".last.ckpt.") and p.suffix == ".tmp" for p in names)


def test_json_non_finite_values_become_null(tmp_path: Path) -> None:
    payload = {"mIoU": float("nan"), "per_class_iou": {"a": 0.5, "b": float("inf")}, "list": [float("-inf"), 2.0],
               "tuple": (1, float("nan"))}
    atomic.write_json(tmp_path / "metrics.json", payload)
    assert strict_json(tmp_path / "metrics.json") == {
        "mIoU": None, "per_class_iou": {"a": 0.5, "b": None}, "list": [None, 2.0], "tuple": [1, None]
    }
    assert math.isnan(payload["mIoU"])  # the caller's dict is left as it was
    atomic.write_json(tmp_path / "compact.json", {"a": [1, 2]}, indent=None)
    assert (tmp_path / "compact.json").read_text() == '{"a": [1, 2]}\n'


def test_a_write_removes_the_temporaries_of_killed_writers_of_that_file_only(tmp_path: Path) -> None:
    dead = tmp_path / ".report.md.999999999.0a1b2c3d.tmp"  # a writer killed during its write
    live = tmp_path / f".report.md.{os.getpid()}.0a1b2c3d.tmp"  # a writer still at work
    other = tmp_path / ".other.md.999999999.0a1b2c3d.tmp"  # another file's leftover: not this write's business
    for path in (dead, live, other):
        path.write_text("partial")
    atomic.write_text(tmp_path / "report.md", "complete")
    assert (tmp_path / "report.md").read_text() == "complete"
    assert not dead.exists() and live.exists() and other.exists()
