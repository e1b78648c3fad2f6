"""Composition and start-up validation of the config tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from segexp.cli.info import model_summary
from segexp.config import CONF_DIR, ConfigError, compose_config
from segexp.training.build import validate

GROUPS = ["backbone", "head", "loss", "dataset", "schedule", "trainer", "logger", "callbacks", "inference", "debug"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group: str) -> None:
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        cfg = compose_config([f"{group}={option}"])
        validate(cfg)


def test_misspelt_key_fails_naming_key_and_suggestion() -> None:
    cfg = compose_config(["+backbone.dpeth=50"])
    with pytest.raises(ConfigError, match=r"backbone\.dpeth.*Did you mean 'depth'"):
        validate(cfg)


def test_misspelt_key_in_data_and_model_nodes() -> None:
    with pytest.raises(ConfigError, match=r"data\.bach_size"):
        validate(compose_config(["+data.bach_size=4"]))
    with pytest.raises(ConfigError, match=r"model\.aux_wieght"):
        validate(compose_config(["+model.aux_wieght=0.4"]))


def test_wrong_type_fails_naming_key() -> None:
    with pytest.raises(ConfigError, match=r"backbone\.output_stride='sixteen'.*expected int"):
        validate(compose_config(["backbone.output_stride=sixteen"]))
    with pytest.raises(ConfigError, match=r"head\.rates"):
        validate(compose_config(["head.rates=[6,twelve]"]))


def test_unknown_override_is_refused_by_hydra() -> None:
    with pytest.raises(ConfigCompositionException, match="head.ratez"):
        compose_config(["head.ratez=[1]"])


def test_command_line_overrides_reach_the_model() -> None:
    cfg = compose_config(["backbone=resnet18", "head=aspp", "head.rates=[1,2,3,4]", "dataset=camvid",
                          "data.crop_size=[64,64]"])
    summary = model_summary(cfg)
    assert summary["num_classes"] == 11
    assert summary["output_stride"] == 16
    assert summary["crop_size"] == [64, 64]
    # 1x1 + four atrous + pooling branches of 256 channels: projection sees 6 x 256 inputs
    assert summary["params_by_part"]["head"] == (
        512 * 256 + 4 * 9 * 512 * 256 + 512 * 256 + 6 * 256 * 256 + 256 * 11 + 11 + 7 * 2 * 256
    )


def test_info_reports_flops_that_scale_with_output_stride() -> None:
    small = model_summary(compose_config(["backbone=resnet18", "data.crop_size=[64,64]",
                                          "backbone.output_stride=32"]))
    dense = model_summary(compose_config(["backbone=resnet18", "data.crop_size=[64,64]",
                                          "backbone.output_stride=8"]))
    assert small["num_params"] == dense["num_params"]
    assert dense["gflops_per_crop"] > 2 * small["gflops_per_crop"]
    assert small["size_mb_fp32"] == pytest.approx(small["num_params"] * 4 / 2**20, abs=0.01)
    # trained at 32, evaluated at 8: the evaluated FLOPs are those of the OS-8 network (same weights)
    both = model_summary(compose_config(["backbone=resnet18", "data.crop_size=[64,64]",
                                         "backbone.output_stride=32", "model.eval_output_stride=8"]))
    assert both["output_stride"] == 32 and both["gflops_per_crop"] == small["gflops_per_crop"]
    assert both["eval_output_stride"] == 8 and both["gflops_per_crop_eval"] == dense["gflops_per_crop"]
    assert "eval_output_stride" not in small


def test_data_dir_defaults_next_to_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGEXP_DATA_DIR", raising=False)
    cfg = compose_config(["dataset=camvid"])
    assert Path(cfg.dataset.root) == CONF_DIR.parent / ".." / "shared" / "data" / "camvid"


# ------------------------------------------------------------------------------------------------ messages


def test_a_misspelt_key_without_plus_gets_the_closest_valid_key() -> None:
    from segexp.cli.precheck import check_command_line

    with pytest.raises(ConfigError, match=r"'backbone.dpeth': ResNet has no parameter 'dpeth'\. Did you mean 'depth'"):
        check_command_line(["backbone.dpeth=50"], "train")
    with pytest.raises(ConfigError, match=r"Unknown config key 'data.num_wokers'\. Did you mean 'data.num_workers'"):
        check_command_line(["ckpt=x.ckpt", "data.num_wokers=2"], "eval")
    assert check_command_line(["backbone.depth=50"], "train") is None  # valid: nothing to say
    assert check_command_line(["-m", "backbone.dpeth=50,101"], "train") is None  # sweeps: Hydra reports


def test_usage_and_a_missing_ckpt_are_one_screen_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    from segexp.cli.info import (
        main as info_main,
    )

    info_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: segexp-info [OVERRIDE ...] [--json]")
    help_text = subprocess.run([sys.executable, "-m", "segexp.cli.evaluate", "--help"], capture_output=True, text=True,
                               timeout=120)
    assert help_text.returncode == 0 and "usage: segexp-eval ckpt=" in help_text.stdout
    no_ckpt = subprocess.run([sys.executable, "-m", "segexp.cli.evaluate"], capture_output=True,
                             text=True, timeout=120)
    assert no_ckpt.returncode == 2 and "Traceback" not in no_ckpt.stderr
    assert no_ckpt.stderr.strip().splitlines() == [
        "evaluate.py: ckpt=<path> is required: the segexp-train checkpoint to evaluate, e.g. "
        "ckpt=outputs/train/runs/<time>/checkpoints/last.ckpt"
    ]


def test_a_missing_dataset_root_says_how_to_point_at_the_data(tmp_path) -> None:
    from segexp.data.datasets.base import DatasetError
    from segexp.data.datasets.camvid import CamVid

    with pytest.raises(DatasetError) as err:
        CamVid(root=str(tmp_path / "data" / ".." / "nowhere"), split="train")
    message = str(err.value)
    assert f"dataset root not found: {tmp_path / 'nowhere'};" in message  # normalised: no '..'
    assert "SEGEXP_DATA_DIR=" in message and "dataset.root=" in message


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path) -> None:
    from segexp.cli.evaluate import load_checkpoint

    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match=r"ckpt=.*notes.txt: not a segexp checkpoint") as err:
        load_checkpoint(str(text))
    assert "weights_only=False" not in str(err.value)


def test_an_unknown_top_level_key_added_with_plus_is_refused(tmp_path) -> None:
    from segexp.training.build import validate

    with pytest.raises(ConfigError, match=r"top-level config key 'seeds': nothing reads it\. Did you mean 'seed'"):
        validate(compose_config(["+seeds=3", f"output_dir={tmp_path}"]))
    validate(compose_config(["fusion=max", "model.scales=[1.0,0.5]", f"output_dir={tmp_path}"]))  # a chosen group


@pytest.mark.parametrize("override, message", [
    ("+backbone.dpeth=50", "segexp-train: Unknown config key 'backbone.dpeth': ResNet has no parameter 'dpeth'"),
    ("backbone.output_stride=sixteen", "segexp-train: Config value backbone.output_stride='sixteen' has"),
    ("+seeds=3", "segexp-train: Unknown top-level config key 'seeds'"),
    ("ckpt_path=nowhere.ckpt", "segexp-train: ckpt_path=nowhere.ckpt: no such checkpoint file"),
])
def test_config_errors_found_inside_the_job_are_one_line_and_exit_2(override: str, message: str, tmp_path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "segexp.cli.train", override, "logger=null", "trainer.max_steps=1",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "HYDRA_FULL_ERROR" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(message)
    assert (tmp_path / "error.json").is_file()  # the run's record of the failure is still written


def test_segexp_eval_names_a_missing_checkpoint_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "segexp.cli.evaluate", "ckpt=nowhere.ckpt", "logger=null",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("segexp-eval: ckpt=nowhere.ckpt: no such checkpoint file")


def test_a_ddp_job_inside_a_sweep_is_refused_before_lightning_reruns_the_sweep(make_cfg) -> None:
    from segexp.config import ConfigError
    from segexp.training.harness import build_trainer, refuse_relaunch_in_sweep

    for trainer_choice, world in (("trainer=ddp_cpu", 2), ("trainer=cpu", 1)):
        cfg = make_cfg(trainer_choice)
        trainer = build_trainer(cfg, Path(cfg.output_dir), [], [])
        assert trainer.world_size == world
        refuse_relaunch_in_sweep(trainer, multirun=False)  # a single run starts its workers itself
        if world == 1:
            refuse_relaunch_in_sweep(trainer, multirun=True)
            continue
        with pytest.raises(ConfigError, match=r"2 DDP processes inside a Hydra sweep .*segexp-table run"):
            refuse_relaunch_in_sweep(trainer, multirun=True)


def test_the_checks_before_hydra_compose_a_plain_run_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import sys

    from segexp.cli import precheck

    calls: list[list[str]] = []
    real = precheck.compose_config

    def counting(overrides, config_name="train", with_hydra=False):
        calls.append(list(overrides))
        return real(overrides, config_name, with_hydra)

    monkeypatch.setattr(precheck, "compose_config", counting)
    precheck.composed.cache_clear()
    ran: list[bool] = []
    monkeypatch.setattr(sys, "argv", ["segexp-train", "backbone=resnet18", f"hydra.run.dir={tmp_path}"])
    precheck.run_cli(lambda: ran.append(True), "train")
    assert ran == [True] and calls == [["backbone=resnet18", f"hydra.run.dir={tmp_path}"]]  # then Hydra's own
