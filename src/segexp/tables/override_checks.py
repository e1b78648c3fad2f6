"""The checks every override string of a spec row or profile passes before anything composes it: Hydra's own
override grammar, one value (no sweep), no deletion, no key the runner owns, no key set twice, and no
``_target_`` outside the allowed packages (:func:`segexp.targets.check_override_targets`) unless trusted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from segexp.overrides import override_key
from segexp.tables.yaml_reader import fail
from segexp.targets import UntrustedTargetError, check_override_targets

RESERVED_KEYS = ("seed", "output_dir", "ckpt_path", "ckpt", "table_row", "hydra")
"""Keys the runner sets itself; a spec or profile may not override them."""


def check_overrides(overrides: Sequence[str], path: Path, key: str) -> None:
    """Hydra-parsable, single-valued, no deletions, no keys the runner owns, no key set twice, no ``_target_``
    outside the allowed packages (unless trusted)."""
    parser = OverridesParser.create()
    first: dict[str, int] = {}
    for index, text in enumerate(overrides):
        where = f"{key}[{index}]"
        if text.startswith("~"):
            fail(path, where, f"'{text}': deletions cannot be expressed in a table row; set the value instead")
        if "=" not in text:
            fail(path, where, f"'{text}' is not an override (expected key=value)")
        name = override_key(text)
        if name.split(".")[0].split("/")[0] in RESERVED_KEYS:
            fail(path, where, f"'{text}': {name} is set by segexp-table itself")
        try:
            parsed = parser.parse_override(text)
        except HydraException as err:
            fail(path, where, f"'{text}' does not parse as a Hydra override: {err}")
        if parsed.is_sweep_override():
            fail(path, where, f"'{text}' is a sweep; write one row per value")
        if name in first:
            fail(path, where, f"'{text}' sets {name} again (already set by {key}[{first[name]}]); keep one")
        first[name] = index
        try:
            check_override_targets(text)
        except UntrustedTargetError as err:
            fail(path, where, str(err))
