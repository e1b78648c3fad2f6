"""Composition and start-up validation of the config tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from segexp.builders import validate
from segexp.config import CONF_DIR, ConfigError
from segexp.info import compose_config, model_summary

GROUPS = ["backbone", "head", "loss", "dataset", "schedule", "trainer", "logger", "inference", "debug"]


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


def test_data_dir_defaults_next_to_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGEXP_DATA_DIR", raising=False)
    cfg = compose_config(["dataset=camvid"])
    assert Path(cfg.dataset.root) == CONF_DIR.parent / ".." / "shared" / "data" / "camvid"
