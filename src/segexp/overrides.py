"""The one reading of a command-line override's key (Hydra syntax), for the table specs, the planner, the
command-line precheck and the commands that add their own defaults."""

from __future__ import annotations


def override_key(override: str) -> str:
    """The config key (or group) an override sets: ``+head.rates=[6]`` -> ``head.rates``, ``~logger`` ->
    ``logger``, ``++data.val_limit=16`` -> ``data.val_limit``."""
    return override.split("=", 1)[0].lstrip("+~")
