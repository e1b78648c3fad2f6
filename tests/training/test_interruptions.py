"""Interruptions and resuming (in-process): the newest intact checkpoint, periodic checkpoints, pre-emption
by SIGTERM / SIGUSR1, a full disk, and results set aside so a failed run never looks finished.

The SIGKILL fault-injection runs (subprocesses killed at random moments, one inside a checkpoint write) are
in tests/end_to_end/test_fault_injection.py behind the ``slow`` marker.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from segexp.cli.train import run_training
from segexp.config import ConfigError
from segexp.training.checkpoint_callbacks import LastCheckpoint
from segexp.training.checkpoints import newest_intact_checkpoint, resolve_ckpt_path
from segexp.training.preemption import Preempted
from tests.helpers.data_files import cut_in_half
from tests.helpers.runs import CaptureFinalState


def fake_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": step}, path)
    return path


def test_resume_takes_the_newest_intact_checkpoint_and_names_the_torn_one(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "checkpoints"
    last = fake_checkpoint(folder / "last.ckpt", 6)
    best = fake_checkpoint(folder / "best-step3-miou0.5000.ckpt", 3)
    stale = folder / ".last.ckpt.999999999.abcd.tmp"  # no such process: a killed writer's leftover
    stale.write_bytes(b"half a write")
    live = folder / f".best-step9.ckpt.{os.getpid()}.abcd.tmp"  # a write in progress (this process)
    live.write_bytes(b"being written")
    assert newest_intact_checkpoint(tmp_path, "last") == last
    assert not stale.exists() and live.exists()  # a dead writer's temporary goes, a live one's stays
    live.unlink()
    fake_checkpoint(folder / "hpc_ckpt_1.ckpt", 6)
    assert newest_intact_checkpoint(tmp_path, "last") == last  # a tie goes to last.ckpt
    (folder / "hpc_ckpt_1.ckpt").unlink()
    cut_in_half(last)
    with caplog.at_level(logging.WARNING, logger="segexp.training.checkpoints"):
        assert resolve_ckpt_path("last", tmp_path) == str(best)
    assert f"skipping {last}" in caplog.text
    cut_in_half(best)
    with pytest.raises(ConfigError, match="no checkpoint in .* can be read; tried") as err:
        newest_intact_checkpoint(tmp_path, "auto")
    assert str(best) in str(err.value) and str(last) in str(err.value)


def test_auto_starts_afresh_without_checkpoints_and_last_does_not(tmp_path: Path) -> None:
    assert resolve_ckpt_path("auto", tmp_path) is None
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no checkpoint in .*checkpoints to resume from"):
        resolve_ckpt_path("last", tmp_path)
    truncated = fake_checkpoint(tmp_path / "elsewhere.ckpt", 2)
    cut_in_half(truncated)
    with pytest.raises(ConfigError, match=r"ckpt_path=.*elsewhere\.ckpt: not a segexp checkpoint"):
        resolve_ckpt_path(str(truncated), tmp_path)


class Signal(pl.Callback):
    """Sends ``signum`` to this process after ``at_step`` optimizer steps (as a scheduler would)."""

    def __init__(self, signum: int, at_step: int) -> None:
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_preemption_signal_saves_the_step_and_the_same_command_resumes_it(make_cfg, signum: int) -> None:
    overrides = ["trainer.max_steps=10", "trainer.val_check_interval=5", "ckpt_path=auto"]
    reference = CaptureFinalState()
    run_training(make_cfg(*overrides), extra_callbacks=[reference])
    cfg = make_cfg(*overrides)
    with pytest.raises(Preempted, match=rf"{signal.Signals(signum).name} at step 4: state saved to .*last\.ckpt"):
        run_training(cfg, extra_callbacks=[Signal(signum, at_step=3)])  # the signal arrives during step 4
    out = Path(cfg.output_dir)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert json.loads((out / "error.json").read_text())["error"].startswith("Preempted:")
    assert not (out / "metrics.json").exists()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # handlers given back
    resumed = CaptureFinalState()
    run_training(cfg, extra_callbacks=[resumed])
    assert resumed.step == reference.step == 10 and resumed.lrs == reference.lrs
    for key, value in reference.state.items():
        assert torch.equal(resumed.state[key], value), key
    assert (out / "metrics.json").is_file() and not (out / "error.json").exists()


def test_last_ckpt_is_also_written_every_n_steps(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[int] = []
    original = LastCheckpoint.save

    def record(self: LastCheckpoint, trainer: pl.Trainer) -> None:
        original(self, trainer)
        saved.append(trainer.global_step)

    monkeypatch.setattr(LastCheckpoint, "save", record)
    run_training(make_cfg("trainer.max_steps=7", "trainer.val_check_interval=5", "callbacks.last.every_n_steps=2"))
    assert sorted(set(saved)) == [2, 4, 5, 6, 7]  # every 2 steps, at validation (5) and at the end (7)


def test_a_full_disk_keeps_the_previous_checkpoint_and_results_and_names_the_file(make_cfg) -> None:
    cfg = make_cfg("trainer.max_steps=4", "trainer.val_check_interval=2")
    run_training(cfg)
    out = Path(cfg.output_dir)
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    class FullDisk(pl.Callback):
        """From step 2 on, every checkpoint write gets half its bytes out and then ENOSPC."""

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            io = trainer.strategy.checkpoint_io

            def failing_save(checkpoint: dict, path: str, storage_options: Any = None) -> None:
                Path(path).write_bytes(b"PK\x03\x04 partial")
                raise OSError(errno.ENOSPC, "No space left on device")

            io.save_checkpoint = failing_save

    cfg.ckpt_path = None
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.ckpt: .*No space left on device; the "
                                      r"previous checkpoint is left as it was"):
        run_training(cfg, extra_callbacks=[FullDisk()])
    assert last.read_bytes() == before  # untouched, still the finished run's final state
    assert not list(last.parent.glob(".*.tmp"))
    assert json.loads((out / "metrics.prev.json").read_text())["steps"] == 4  # the earlier results, set aside
    assert not (out / "metrics.json").exists()
    assert "No space left on device" in json.loads((out / "error.json").read_text())["error"]
