"""Run records a reader can trust (issue 23): a resumed run refuses settings its restored state would ignore and
records what it resumed with, its training time adds up over sessions, and metrics.json says how many val
images it scored out of the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segexp.cli.train import run_training
from segexp.config import ConfigError
from segexp.tables.report import run_history_warnings
from segexp.tables.store import RowResults
from segexp.training.resume import check_resume_changes, config_changes, flat


def test_config_changes_are_flat_keys_with_old_and_new_values() -> None:
    stored = {"schedule": {"lr": 0.1, "power": 0.9}, "trainer": {"max_steps": 20}, "output_dir": "/a", "x": [1]}
    current = {"schedule": {"lr": 0.5, "power": 0.9}, "trainer": {"max_steps": 24}, "output_dir": "/b", "x": [1],
               "new": {"key": 1}}
    assert flat({"a": {"b": 1, "c": {}}}) == {"a.b": 1, "a.c": {}}
    assert config_changes(stored, current) == {"new.key": [None, 1], "schedule.lr": [0.1, 0.5],
                                               "trainer.max_steps": [20, 24]}
    with pytest.raises(ConfigError, match=r"schedule.lr: 0.1 -> 0.5.*resume_changes=accept"):
        check_resume_changes(config_changes(stored, current), "refuse", "last.ckpt")
    assert check_resume_changes(config_changes(stored, current), "accept", "last.ckpt") == ["schedule.lr"]
    assert check_resume_changes({"trainer.max_steps": [20, 24]}, "refuse", "last.ckpt") == []
    with pytest.raises(ConfigError, match="resume_changes='maybe'"):
        check_resume_changes({}, "maybe", "last.ckpt")


def test_resume_refuses_a_new_lr_accepts_more_steps_and_records_both(make_cfg) -> None:
    """Resuming a finished 20-step run with trainer.max_steps=24 schedule.lr=0.5: the optimizer state would keep
    the old lr, so it is refused with the key named (nothing written over); max_steps alone resumes and is
    recorded; with resume_changes=accept the lr change is recorded as not used."""
    first = make_cfg("trainer.max_steps=4", "trainer.val_check_interval=4", "ckpt_path=auto")
    out = Path(first.output_dir)
    done = run_training(first)
    assert done["resumes"] == [] and done["val_images"] == done["val_split_size"] == 24

    def again(*overrides: str):
        cfg = make_cfg("trainer.val_check_interval=4", "ckpt_path=auto", *overrides)
        cfg.output_dir = str(out)
        return cfg

    with pytest.raises(ConfigError, match=r"schedule.lr: 0.05 -> 0.5"):
        run_training(again("trainer.max_steps=6", "schedule.lr=0.5"))
    assert "schedule.lr" in json.loads((out / "error.json").read_text())["error"]
    assert json.loads((out / "metrics.prev.json").read_text())["steps"] == 4  # the finished run's record kept

    longer = run_training(again("trainer.max_steps=6"))
    assert longer["steps"] == 6
    [resume] = longer["resumes"]
    assert resume["step"] == 4 and resume["changed"] == {"trainer.max_steps": [4, 6]} and resume["not_used"] == []
    # training time adds up: the 4 steps before the resume count too (stored in the checkpoint)
    stored = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["segexp"]
    # the last checkpoint is written before the final validation, which metrics.json's wall_s still counts
    assert done["wall_s"] <= longer["wall_s"] and 0 < stored["wall_s"] <= longer["wall_s"]

    accepted = run_training(again("trainer.max_steps=7", "schedule.lr=0.5", "resume_changes=accept"))
    assert [r["step"] for r in accepted["resumes"]] == [4, 6]
    assert accepted["resumes"][1]["not_used"] == ["schedule.lr"]


def test_resumed_wall_time_is_the_checkpoint_time_plus_this_session(make_cfg, monkeypatch) -> None:
    cfg = make_cfg("trainer.max_steps=3", "trainer.val_check_interval=3", "ckpt_path=auto")
    run_training(cfg)
    path = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["segexp"]["wall_s"] = 1000.0  # as if the first session had trained for 1000 s
    torch.save(checkpoint, path)
    cfg.trainer.max_steps = 4
    resumed = run_training(cfg)
    assert 1000.0 < resumed["wall_s"] < 1000.0 + 300


def test_a_partial_validation_says_how_many_images_it_scored(make_cfg) -> None:
    metrics = run_training(make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2",
                                    "trainer.limit_val_batches=1", "data.val_batch_size=3"))
    assert (metrics["val_images"], metrics["val_split_size"]) == (3, 24)


def test_the_report_flags_resumed_and_partially_scored_seeds() -> None:
    results = RowResults(seeds={
        0: {"resumes": [{"step": 4, "changed": {"trainer.max_steps": [4, 6]}}], "val_images": 8, "val_split_size": 8},
        1: {"resumes": [], "val_images": 3, "val_split_size": 8},
        2: {"mIoU": 0.5},  # a run recorded before these fields: nothing to say
    })
    assert run_history_warnings(results) == ["seed0 resumed at step 4 (trainer.max_steps)",
                                             "seed1 scored on 3 of the 8 images of its split"]
