"""Read segexp-train checkpoints: the one reader (``weights_only=True``), the model-weight checks, and the
choice of the checkpoint a run resumes from.

Every error names the config key the path came from (``ckpt``, ``model.init_from``, ``ckpt_path``) and says
why the file is not a usable segexp checkpoint.

Resuming (``ckpt_path=last`` or ``auto``) takes the newest checkpoint of the run folder that loads: every
``checkpoints/*.ckpt`` (``last.ckpt``, the best, Lightning's SLURM ``hpc_ckpt_*``) is read, a corrupt or
truncated one is reported by path and skipped, and the one with the highest training step wins (``last.ckpt``
on a tie). Checkpoints are written atomically (:mod:`segexp.atomic`), so a torn file only comes from outside
(a copy cut short, a disk error); the temporaries of writes killed half-way (by processes that are gone) are
removed first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segexp import atomic
from segexp.config import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RESUME_CHOICES = ("last", "auto")
"""``ckpt_path`` values that resume from the run folder: ``last`` needs a checkpoint there, ``auto`` starts
afresh when there is none (the same command then both starts and resumes a run)."""


def read_checkpoint(path: str, key: str) -> dict[str, Any]:
    """A Lightning checkpoint (a dict with a ``state_dict``), read with ``weights_only=True``; every error
    names ``key=path`` and says the file is not a segexp checkpoint (``segexp-eval ckpt=``, ``model.init_from``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign, corrupt or truncated files
        raise ConfigError(
            f"{key}={path}: not a segexp checkpoint (a .ckpt written by segexp-train); torch cannot read it as "
            f"one ({type(err).__name__}): a truncated file, another format, or a pickle of arbitrary objects"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{key}={path}: not a Lightning checkpoint (no 'state_dict' entry), so not a segexp "
                          "checkpoint")
    return checkpoint


@dataclass(frozen=True)
class Candidate:
    """A checkpoint file of a run folder and what reading it gave: its step, or why it cannot be read."""

    path: Path
    step: int | None
    problem: str | None = None


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Every ``<run_dir>/checkpoints/*.ckpt`` (not the hidden temporaries of unfinished writes)."""
    folder = Path(run_dir) / CHECKPOINTS_FOLDER
    return sorted(p for p in folder.glob("*.ckpt") if p.is_file()) if folder.is_dir() else []


def inspect_checkpoint(path: Path) -> Candidate:
    """Read ``path`` with the one reader; its ``global_step``, or the reason it cannot be resumed from."""
    try:
        checkpoint = read_checkpoint(str(path), "ckpt_path")
    except ConfigError as err:
        return Candidate(path, None, str(err.__cause__ or err))
    step = checkpoint.get("global_step")
    if not isinstance(step, int):
        return Candidate(path, None, "no global_step: not a training checkpoint")
    return Candidate(path, step)


def newest_intact_checkpoint(run_dir: Path, choice: str) -> Path | None:
    """The checkpoint ``ckpt_path=last|auto`` resumes from (see the module docstring). A corrupt candidate is
    logged as a warning naming it; when none loads, the ConfigError names every file tried. None for
    ``auto`` in a folder without checkpoints (a fresh start)."""
    folder = Path(run_dir) / CHECKPOINTS_FOLDER
    if folder.is_dir():  # writes killed half-way (never a valid checkpoint)
        atomic.remove_stale_temporaries(folder)
    paths = checkpoint_candidates(run_dir)
    if not paths:
        if choice == "auto":
            return None
        raise ConfigError(f"ckpt_path={choice}: no checkpoint in {folder} to resume from (ckpt_path=auto starts "
                          "afresh when there is none)")
    candidates = [inspect_checkpoint(path) for path in paths]
    for bad in (c for c in candidates if c.problem):
        log.warning("ckpt_path=%s: skipping %s: %s", choice, bad.path, bad.problem)
    intact = [c for c in candidates if c.problem is None]
    if not intact:
        tried = "; ".join(f"{c.path}: {c.problem}" for c in candidates)
        raise ConfigError(f"ckpt_path={choice}: no checkpoint in {folder} can be read; tried {tried}")
    newest = max(intact, key=lambda c: (c.step, c.path.name == LAST_CHECKPOINT))
    log.info("ckpt_path=%s: resuming from %s (step %d)", choice, newest.path, newest.step)
    return newest.path


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint a training run starts from: ``last`` / ``auto`` pick the newest intact one of the run
    folder (:func:`newest_intact_checkpoint`); any other value is a path that must be a readable checkpoint."""
    if ckpt_path is None:
        return None
    if ckpt_path in RESUME_CHOICES:
        newest = newest_intact_checkpoint(run_dir, ckpt_path)
        return None if newest is None else str(newest)
    read_checkpoint(ckpt_path, "ckpt_path")
    return str(Path(ckpt_path).expanduser())


def checkpoint_model_weights(path: str) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries (prefix removed) of a Lightning checkpoint, read with ``weights_only=True``."""
    state = read_checkpoint(path, "model.init_from")["state_dict"]
    weights = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    if not weights:
        raise ConfigError(f"model.init_from={path}: the checkpoint's state_dict has no 'model.*' entries")
    return weights


MOVED_MODULES = {
    "segexp.backbones.": "segexp.models.backbones.", "segexp.heads.": "segexp.models.heads.",
    "segexp.losses.": "segexp.models.losses.", "segexp.datasets.": "segexp.data.datasets.",
    "segexp.schedules.": "segexp.training.schedules.", "segexp.inference.": "segexp.training.inference.",
}
"""``_target_`` prefixes of checkpoints written before the package was grouped into models/data/training."""

MOVED_CLASSES = {
    "segexp.training.callbacks.LastCheckpoint": "segexp.training.checkpoint_callbacks.LastCheckpoint",
    "segexp.training.callbacks.AtomicModelCheckpoint": "segexp.training.checkpoint_callbacks.AtomicModelCheckpoint",
    "segexp.training.callbacks.Preemption": "segexp.training.preemption.Preemption",
    "segexp.training.callbacks.ValidationExamples": "segexp.training.validation_examples.ValidationExamples",
    "segexp.training.callbacks.SavePredictions": "segexp.training.prediction_pngs.SavePredictions",
}
"""``_target_`` classes of checkpoints written before ``training/callbacks.py`` was split by concern (the stored
config holds the ``callbacks`` node)."""

OLD_AUX_KEYS = ("aux_weight", "aux_channels", "aux_dropout")
"""``model.*`` keys of checkpoints written before the ``aux_head`` group existed."""


def upgrade_stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored config in today's form: ``_target_`` paths of moved modules and classes are renamed,
    and the old ``model.aux_weight/aux_channels/aux_dropout`` flags become the ``aux_head`` node they meant (an
    FCN head on layer3; none when the weight was 0)."""
    upgraded = _renamed_targets(stored)
    model = dict(upgraded.get("model") or {})
    if not any(key in model for key in OLD_AUX_KEYS):
        return upgraded
    weight = float(model.pop("aux_weight", 0.0) or 0.0)
    channels, dropout = model.pop("aux_channels", 256), model.pop("aux_dropout", 0.1)
    upgraded = {**upgraded, "model": model}
    if weight > 0:
        upgraded["aux_head"] = {"_target_": "segexp.models.heads.fcn.FCNHead", "channels": channels,
                                "dropout": dropout, "in_keys": ["layer3"], "loss_weight": weight}
    return upgraded


def _renamed_targets(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _renamed_target(value) if key == "_target_" else _renamed_targets(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_renamed_targets(item) for item in node]
    return node


def _renamed_target(target: Any) -> Any:
    if isinstance(target, str) and target in MOVED_CLASSES:
        return MOVED_CLASSES[target]
    for old, new in MOVED_MODULES.items():
        if isinstance(target, str) and target.startswith(old):
            return new + target.removeprefix(old)
    return target


def stored_run_state(path: str) -> tuple[dict[str, Any], int]:
    """The ``segexp`` record (config, best mIoU, wall time, resumes) and the step of a checkpoint, read lazily
    (memory-mapped, ``weights_only``): what a resumed run compares itself with before it builds anything."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get("segexp") or {}), int(checkpoint.get("global_step", 0))
