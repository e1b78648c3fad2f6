"""The scripts of ``scripts/`` (not a package) loaded as modules, for the tests of the device tooling."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from types import ModuleType

from segexp.config import REPO_ROOT


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
