"""Which checkpoints a table row keeps (the profile's ``checkpoints`` policy) and their deletion after each job,
inside the Hydra sweep (:class:`PruneCheckpoints`, a Hydra callback the runner adds); the runner deletes a source's
``last.ckpt`` itself once every row built on it has finished."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from segexp.tables.plan import CHECKPOINTS, Job, last_checkpoint
from segexp.tables.spec import Profile
from segexp.tables.store import TABLE_ROW_FILE, read_json


class PruneCheckpoints(Callback):
    """Hydra callback: after each job, delete the checkpoints its ``table_row.json`` lists under "prune"."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        prune_checkpoints(Path(str(config.hydra.runtime.output_dir)))


def prune_checkpoints(run_dir: Path, which: Sequence[str] | None = None) -> None:
    """Delete ``best-step*.ckpt`` ("best") and/or ``last.ckpt`` ("last") of a run."""
    if which is None:
        which = (read_json(run_dir / TABLE_ROW_FILE) or {}).get("prune", [])
    doomed = (list((run_dir / CHECKPOINTS).glob("best-step*.ckpt")) if "best" in which else []) + (
        [last_checkpoint(run_dir)] if "last" in which else [])
    for path in doomed:
        path.unlink(missing_ok=True)


def prune_policy(job: Job, profile: Profile, has_dependents: bool) -> list[str]:
    if profile.checkpoints == "none":
        return ["best"] if has_dependents else ["best", "last"]
    return ["best"] if profile.checkpoints == "last" else []


