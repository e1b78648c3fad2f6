"""What a resumed run changed against the run it continues, and which changes it refuses.

Lightning restores the model, the optimizer (each parameter group's learning rate, momentum and weight decay),
the learning-rate scheduler's base rates, the step and the loops from the checkpoint. A config value that only
feeds that restored state is silently ignored on resume: ``schedule.lr=0.5`` on a resumed run keeps training
at the checkpoint's rate while the run's ``.hydra/config.yaml`` says 0.5. Those changes
(:data:`OVERRIDDEN_BY_STATE`) are refused unless ``resume_changes=accept``; every other change (a longer
``trainer.max_steps``, other loggers, a new augmentation) takes effect from the resumed step and is recorded.
The record -- which checkpoint, at which step, with which changes -- is kept in the checkpoint (so it
accumulates over several resumes) and written to ``metrics.json`` as ``resumes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segexp.config import ConfigError

OVERRIDDEN_BY_STATE = ("schedule.lr", "schedule.momentum", "schedule.weight_decay", "schedule.nesterov",
                       "schedule.head_lr_mult", "schedule.no_decay_norm_bias")
"""Keys whose new value a resumed run never uses: the restored optimizer and scheduler state holds the old
one (poly's ``power``, ``min_lr`` and warm-up, and ``trainer.max_steps``, are read anew at every step)."""
NOT_COMPARED = ("output_dir", "ckpt_path", "resume_changes", "hydra")
"""Keys that say where and how a run is resumed, not what it trains."""
RESUME_CHANGES = ("refuse", "accept")


def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``key -> [stored value, current value]`` for every key whose value differs (absent: None)."""
    old = {k: v for k, v in flat(stored).items() if k.split(".")[0] not in NOT_COMPARED}
    new = {k: v for k, v in flat(current).items() if k.split(".")[0] not in NOT_COMPARED}
    return {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}


def check_resume_changes(changes: Mapping[str, list[Any]], policy: str, ckpt_path: str) -> list[str]:
    """The changed keys the restored state overrides; raises ConfigError naming them unless ``policy`` is
    ``accept``."""
    if policy not in RESUME_CHANGES:
        raise ConfigError(f"resume_changes={policy!r}: choose refuse (default) or accept")
    ignored = [key for key in changes if key in OVERRIDDEN_BY_STATE]
    if ignored and policy == "refuse":
        listed = ", ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in ignored)
        raise ConfigError(
            f"resuming from {ckpt_path} with other settings than the run it continues ({listed}): the restored "
            "optimizer and scheduler state keeps the checkpoint's values, so the change would be recorded but "
            "never used. Start a new run (another hydra.run.dir, or model.init_from=<ckpt> for its weights), or "
            "add resume_changes=accept to resume with the checkpoint's values anyway")
    return ignored


def resume_record(ckpt_path: str, step: int, changes: Mapping[str, list[Any]], ignored: list[str]) -> dict[str, Any]:
    """One entry of ``metrics.json``'s ``resumes``: the checkpoint, its step, what changed and what was not used."""
    return {"checkpoint": ckpt_path, "step": step, "changed": dict(changes), "not_used": ignored}
