"""The resolvers conf/ uses (:mod:`segexp.resolvers`, and the path ones of :mod:`segexp.config`) are registered by
importing :mod:`segexp.config` alone, before any composition; the environment ones answer from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segexp.config import REPO_ROOT
from segexp.resolvers import wandb_mode

COMPOSE_ALONE = """
import json
from segexp.config import compose_config
cfg = compose_config(["logger=wandb", "trainer=gpu"])
print(json.dumps({"mode": cfg.logger.wandb.mode, "precision": cfg.trainer.precision, "data_dir": cfg.data_dir}))
"""


def test_composing_after_importing_only_config_resolves_every_resolver(tmp_path: Path) -> None:
    """A fresh process that imports nothing but ``segexp.config.compose_config``: ``${wandb_mode:}``,
    ``${gpu_mixed_precision:}`` and ``${default_data_dir:}`` all resolve."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEGEXP_DATA_DIR", "WANDB_API_KEY")}
    env |= {"WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", COMPOSE_ALONE], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout.strip().splitlines()[-1])
    assert resolved == {"mode": "disabled", "precision": "bf16-mixed", "data_dir": f"{REPO_ROOT}/../shared/data"}


def test_wandb_mode_is_online_only_with_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
