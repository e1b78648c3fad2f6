"""Checkpoints written before ``training/callbacks.py`` was split by concern (checkpoint_callbacks, preemption,
validation_examples, prediction_pngs) name the old callback classes in their stored config; they still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf

from segexp.training.build import plain_config, validate
from segexp.training.checkpoint_callbacks import AtomicModelCheckpoint, LastCheckpoint
from segexp.training.checkpoints import MOVED_CLASSES, read_checkpoint, upgrade_stored_config
from segexp.training.harness import build_callbacks
from segexp.training.preemption import Preemption
from segexp.training.validation_examples import ValidationExamples

OLD_TARGETS = {
    "last": "segexp.training.callbacks.LastCheckpoint",
    "best": "segexp.training.callbacks.AtomicModelCheckpoint",
    "preemption": "segexp.training.callbacks.Preemption",
    "examples": "segexp.training.callbacks.ValidationExamples",
}
"""The ``callbacks`` node's targets as conf/callbacks/default.yaml named them before the split."""


def test_a_checkpoint_naming_the_callbacks_module_before_its_split_still_loads(make_cfg, tmp_path: Path) -> None:
    stored = plain_config(make_cfg("callbacks.last.every_n_steps=7"))
    for name, target in OLD_TARGETS.items():
        stored["callbacks"][name]["_target_"] = target
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "segexp": {"config": stored}}, path)

    upgraded = OmegaConf.create(upgrade_stored_config(read_checkpoint(str(path), "ckpt")["segexp"]["config"]))
    validate(upgraded)  # every _target_ imports (the old module is gone)
    callbacks = build_callbacks(upgraded, loggers=[])
    assert [type(c) for c in callbacks] == [LastCheckpoint, AtomicModelCheckpoint, Preemption, ValidationExamples]
    assert callbacks[0].every_n_steps == 7 and callbacks[0].dirpath == Path(stored["callbacks"]["last"]["dirpath"])
    assert callbacks[3].num_images == stored["callbacks"]["examples"]["num_images"]


@pytest.mark.parametrize("old", sorted(MOVED_CLASSES))
def test_each_moved_callback_class_is_renamed_to_the_same_class_in_its_new_module(old: str) -> None:
    new = MOVED_CLASSES[old]
    assert upgrade_stored_config({"callbacks": {"x": {"_target_": old}}}) == {"callbacks": {"x": {"_target_": new}}}
    assert get_object(new).__name__ == old.rsplit(".", 1)[1]


def test_only_the_exact_old_class_names_are_renamed() -> None:
    """A class of the same module that never existed is left as it is (validation then names it)."""
    target = "segexp.training.callbacks.LastCheckpointer"
    assert upgrade_stored_config({"callbacks": {"x": {"_target_": target}}})["callbacks"]["x"]["_target_"] == target
