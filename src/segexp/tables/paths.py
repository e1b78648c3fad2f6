"""Where the tables live: ``experiments/`` (specs), ``experiments/profiles/`` (run profiles),
``experiments/results/`` (committed reports), and how a path is shown in messages."""

from __future__ import annotations

from pathlib import Path

from segexp.config import REPO_ROOT

EXPERIMENTS_DIR = REPO_ROOT / "experiments"
PROFILES_DIR = EXPERIMENTS_DIR / "profiles"
RESULTS_DIR = EXPERIMENTS_DIR / "results"


def display_path(path: Path | str) -> str:
    """``path`` relative to the repository when inside it (shorter messages)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def is_tracked_spec(path: Path) -> bool:
    """Whether ``path`` is one of this checkout's ``experiments/<paper>/t<N>.yaml`` (else a user's copy)."""
    return path.resolve().parent.parent == EXPERIMENTS_DIR.resolve()
