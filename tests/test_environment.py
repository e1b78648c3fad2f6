"""What a run ran on (segexp.environment) and the lock that makes a fresh install reproduce it (constraints.txt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from segexp.environment import environment_facts

REPO = Path(__file__).resolve().parents[1]
UNLOCKED = {"torch"}  # pinned by the Makefile's TORCH_VERSION, so a CUDA or CPU build can be chosen


def test_environment_facts_name_the_packages_a_result_depends_on() -> None:
    import numpy
    import torch

    facts = environment_facts()
    assert set(facts) == {"python", "torch", "cuda", "cudnn", "pytorch_lightning", "torchmetrics", "albumentations",
                          "numpy", "opencv", "segexp", "segexp_commit", "torch_threads"}
    assert facts["torch_threads"] == str(torch.get_num_threads())
    assert facts["torch"] == torch.__version__
    assert facts["cuda"] == torch.version.cuda
    assert facts["numpy"] == numpy.__version__
    for key in ("python", "pytorch_lightning", "torchmetrics", "albumentations", "opencv"):
        assert facts[key], key
    if torch.version.cuda is None:
        assert facts["cudnn"] is None
    assert all(value is None or isinstance(value, str) for value in facts.values())


def locked_versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def declared_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and those of its extras (make install installs .[dev])."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for extra in extras for r in extra)]]


def test_the_lock_pins_every_dependency_of_pyproject_but_torch() -> None:
    """A dependency added to pyproject.toml without `make lock` would install at whatever version is newest."""
    pins = locked_versions()
    requirements = declared_requirements()
    missing = sorted({canonicalize_name(r.name) for r in requirements} - UNLOCKED - set(pins))
    assert not missing, f"not pinned in constraints.txt (run `make lock`): {missing}"
    outside = [f"{r} (locked {pins[canonicalize_name(r.name)]})" for r in requirements
               if canonicalize_name(r.name) in pins and not r.specifier.contains(pins[canonicalize_name(r.name)])]
    assert not outside, f"constraints.txt pins versions pyproject.toml excludes (run `make lock`): {outside}"
    assert not UNLOCKED & set(pins), "torch is pinned by the Makefile's TORCH_VERSION, not by constraints.txt"
    assert "segexp" not in pins
