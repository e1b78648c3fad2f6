"""Eval-only rows and segexp-eval run on the device kind and precision of the run they evaluate (issue 21,
item 1): a delta against the training row then measures the inference change, not a device or precision
change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segexp.config import compose_config
from segexp.tables.plan import compose, plan_eval_job, plan_train_job
from segexp.tables.spec import load_profile, load_table
from segexp.training.eval_settings import inference_of_checkpoint, trainer_of_checkpoint


def planned_eval(table: str, trained: str, evaluated: str, profile: str, extra: tuple[str, ...] = ()):
    spec, prof = load_table(table), load_profile(profile)
    if extra:
        spec = dataclasses.replace(spec, base=(*spec.base, *extra))
    source = plan_train_job(spec, spec.row(trained), prof, 0, Path("/x"))
    job = plan_eval_job(spec, spec.row(evaluated), prof, 0, Path("/x"), source)
    return compose(source.overrides, 0), compose(job.overrides, 0, config_name="eval")


def test_full_eval_row_runs_on_the_gpu_at_the_training_rows_precision() -> None:
    train, evaluation = planned_eval("deeplabv3.t4", "os16", "ms_flip", "full")
    assert train.trainer.accelerator == evaluation.trainer.accelerator == "gpu"
    assert evaluation.trainer.devices == 1 and evaluation.trainer.strategy == "auto"
    assert evaluation.trainer.precision == train.trainer.precision == "bf16-mixed"
    assert list(evaluation.inference.scales) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and evaluation.inference.flip


def test_an_explicit_training_precision_is_carried_to_the_eval_row() -> None:
    train, evaluation = planned_eval("deeplabv3.t4", "os16", "os8", "full", extra=("trainer.precision=32-true",))
    assert train.trainer.precision == evaluation.trainer.precision == "32-true"
    assert evaluation.trainer.accelerator == "gpu"


def test_a_cpu_profile_evaluates_on_the_cpu_and_the_profile_has_the_last_word() -> None:
    train, evaluation = planned_eval("deeplabv3.t4", "os16", "os8", "smoke")
    assert train.trainer.accelerator == evaluation.trainer.accelerator == "cpu"
    assert evaluation.trainer.precision == "32-true"
    _, gpu_proxy = planned_eval("deeplabv3.t4", "os16", "os8", "gpu_proxy")
    assert gpu_proxy.trainer.accelerator == "gpu"


def stored_trainer(**values: object) -> OmegaConf:
    base = {"accelerator": "gpu", "devices": 8, "num_nodes": 2, "strategy": "ddp", "sync_batchnorm": True,
            "precision": "bf16-mixed", "benchmark": True, "max_steps": 30000}
    return OmegaConf.create({**base, **values})


def eval_trainer(*overrides: str) -> OmegaConf:
    """segexp-eval's trainer node as the command line composes it."""
    return compose_config(["ckpt=/x/last.ckpt", *overrides], "eval").trainer


def test_segexp_eval_uses_the_checkpoints_device_kind_and_precision_on_one_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    trainer = trainer_of_checkpoint(eval_trainer("trainer.enable_progress_bar=false"), stored_trainer())
    assert (trainer.accelerator, trainer.precision, trainer.devices, trainer.num_nodes) == ("gpu", "bf16-mixed", 1, 1)
    assert trainer.strategy == "auto" and trainer.sync_batchnorm is False and trainer.enable_progress_bar is False


def test_segexp_eval_without_cuda_evaluates_a_gpu_checkpoint_on_the_cpu_in_fp32(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = trainer_of_checkpoint(eval_trainer(), stored_trainer())
    assert (trainer.accelerator, trainer.precision, trainer.devices) == ("cpu", "32-true", 1)


def test_segexp_eval_keeps_what_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert trainer_of_checkpoint(eval_trainer("trainer=cpu"), stored_trainer()).accelerator == "cpu"
    fp32 = trainer_of_checkpoint(eval_trainer("trainer.precision=32-true"), stored_trainer())
    assert (fp32.accelerator, fp32.precision) == ("gpu", "32-true")
    gpu = trainer_of_checkpoint(eval_trainer("trainer=gpu"), stored_trainer(precision="16-mixed"))
    assert gpu.precision == "bf16-mixed"  # trainer=gpu's own precision (an explicit choice)


def stored_inference(**values: object) -> OmegaConf:
    return OmegaConf.merge(compose_config(["inference=whole"]).inference, values)


def test_segexp_eval_starts_from_the_checkpoints_inference_settings() -> None:
    trained = stored_inference(scales=[0.5], pad_to=[513, 513])
    inherited = inference_of_checkpoint(eval_inference(), trained)
    assert list(inherited.scales) == [0.5] and list(inherited.pad_to) == [513, 513] and inherited.mode == "whole"
    chosen = inference_of_checkpoint(eval_inference("inference.scales=[1.0,1.5]", "inference.pad_to=null"), trained)
    assert list(chosen.scales) == [1.0, 1.5] and chosen.pad_to is None and chosen.flip is False
    fresh = inference_of_checkpoint(eval_inference("inference=whole"), trained)
    assert list(fresh.scales) == [1.0] and fresh.pad_to is None  # a whole group chosen: its own values
    assert set(inference_of_checkpoint(eval_inference(), None)) == {"_target_"}  # an old checkpoint: the defaults


def eval_inference(*overrides: str) -> OmegaConf:
    return compose_config(["ckpt=/x/last.ckpt", *overrides], "eval").inference


def test_an_eval_row_is_carded_with_the_inference_of_the_row_it_evaluates() -> None:
    spec, full = load_table("deeplabv3.t4"), load_profile("full")
    spec = dataclasses.replace(spec, base=(*spec.base, "inference.pad_to=[513,513]"))
    source = plan_train_job(spec, spec.row("os16"), full, 0, Path("/x"))
    job = plan_eval_job(spec, spec.row("ms_flip"), full, 0, Path("/x"), source)
    values = {line.key: line.composed for line in job.card}
    assert values["inference.pad_to"] == [513, 513] and values["inference.flip"] is True
