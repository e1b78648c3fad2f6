"""Shared fixtures: config composition for tests and a fast synthetic run config."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from segexp.config import compose_config
from segexp.targets import TRUST_TARGETS_ENV

CAMVID_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"

# A tiny but complete run: real model code, a handful of steps on small synthetic crops.
FAST_RUN = [
    "experiment=synthetic",
    "logger=csv",
    "dataset.num_images=24",
    "dataset.image_size=64",
    "data.crop_size=[64,64]",
    "data.batch_size=4",
    "data.val_batch_size=8",
    "data.num_workers=0",
    "head.channels=16",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
]


def wandb_record(output_dir: Path, *expected: bytes, timeout_s: float = 30.0) -> bytes:
    """The record file of the one offline wandb run under ``output_dir``, once it holds every ``expected`` part
    (or, after ``timeout_s``, as it is). wandb's writer process flushes the file shortly after ``wandb.finish``
    returns: on a busy machine it can still be a bare header at that moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        [run_dir] = (output_dir / "wandb").glob("offline-run-*")
        [records] = run_dir.glob("run-*.wandb")
        data = records.read_bytes()
        if all(part in data for part in expected) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def untrusted_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with the target checks on (whatever the shell has), and what a test switches on
    (``--trust-targets`` sets the variable in this process) is undone after it."""
    monkeypatch.setenv(TRUST_TARGETS_ENV, "")


@pytest.fixture
def trusted_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as with ``--trust-targets``: for tests that plug their own classes in (``_target_=tests....``)."""
    monkeypatch.setenv(TRUST_TARGETS_ENV, "1")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with FAST_RUN + ``overrides``, writing into a fresh tmp folder."""

    def make(*overrides: str, base: Sequence[str] = FAST_RUN, config_name: str = "train") -> DictConfig:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        return compose_config([*base, f"output_dir={out}", *overrides], config_name=config_name)

    return make
