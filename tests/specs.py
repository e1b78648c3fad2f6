"""Writing table specs into a test's folder and checking the errors that loading them gives (shared by the
spec tests of test_tables, test_bad_input and test_trust_targets)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from segexp.tables.spec import load_spec
from segexp.tables.yaml_reader import SpecError


def write_spec(root: Path, text: str, paper: str = "demo", name: str = "t1") -> Path:
    """``text`` as ``<root>/<paper>/<name>.yaml`` (table id ``<paper>.<name>``), creating the folder."""
    path = root / paper / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_spec_error(path: Path, key: str, message: str, load: Callable[[], object] | None = None) -> None:
    """Loading ``path`` (``load_spec(path)`` unless ``load`` is given) fails with ``<path>: <key>: ...`` and
    the error contains ``message``."""
    with pytest.raises(SpecError) as err:
        load() if load is not None else load_spec(path)
    assert str(err.value).startswith(f"{path}: {key}: "), str(err.value)
    assert message in str(err.value), str(err.value)
