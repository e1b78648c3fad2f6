"""``segexp-info <overrides> [--json]``: the model a config builds, without training.

Prints the parameter count (total and per part), the size in MB as float32, the output stride
and the FLOPs of one forward pass on one training crop (counted by torch's FlopCounterMode:
one multiply-add = 2 FLOPs); with ``model.eval_output_stride``, also the stride and FLOPs of the same crop as
evaluated (the same weights at that stride, DeepLabv3 Table 10).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from segexp.cli.precheck import (
    check_command_line,
    check_command_line_targets,
    exit_on_config_error,
    input_errors_exit,
)
from segexp.config import compose_config
from segexp.models.build import build_segmentor
from segexp.targets import take_trust_flag
from segexp.training.build import build_datamodule, validate


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_summary(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    datamodule = build_datamodule(cfg)
    model = build_segmentor(cfg, datamodule.num_classes).eval()
    height, width = datamodule.crop_size
    flops = forward_flops(model, height, width)
    params = count_params(model)
    evaluated: dict[str, Any] = {}
    eval_stride = cfg.model.get("eval_output_stride")
    if eval_stride is not None:
        trained_stride = model.output_stride
        model.set_output_stride(int(eval_stride))
        evaluated = {"eval_output_stride": model.output_stride,
                     "gflops_per_crop_eval": round(forward_flops(model, height, width) / 1e9, 3)}
        model.set_output_stride(trained_stride)
    return {
        "backbone": cfg.backbone._target_.rsplit(".", 1)[-1] + str(cfg.backbone.get("depth", "")),
        "head": cfg.head._target_.rsplit(".", 1)[-1],
        "num_classes": datamodule.num_classes,
        "num_params": params,
        "params_by_part": {
            name: count_params(part)
            for name, part in (("backbone", model.backbone), ("head", model.head), ("aux_head", model.aux_head),
                               ("fusion", model.fusion))
            if part is not None
        },
        "size_mb_fp32": round(params * 4 / 2**20, 2),
        "output_stride": model.output_stride,
        "crop_size": [height, width],
        "gflops_per_crop": round(flops / 1e9, 3),
        **evaluated,
    }


def forward_flops(model: torch.nn.Module, height: int, width: int) -> int:
    """FLOPs of one forward pass of ``model`` on one ``height x width`` image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width))
    return counter.get_total_flops()


USAGE = """usage: segexp-info [OVERRIDE ...] [--json] [--trust-targets]

The model a training config builds, without training: parameters (total and per part), size in MB as
float32, output stride and FLOPs of one forward pass on one training crop. OVERRIDEs are those of
segexp-train, e.g.:  segexp-info backbone=resnet101 head=aspp dataset=voc data.crop_size=[513,513]
--trust-targets allows _target_ values outside the allowed packages, as for segexp-train."""


def main(argv: Sequence[str] | None = None) -> None:
    args = take_trust_flag(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE)
        return
    as_json = "--json" in args
    overrides = [a for a in args if a != "--json"]
    exit_on_config_error(lambda: check_command_line_targets(overrides, "train"))
    exit_on_config_error(lambda: check_command_line(overrides, "train"))
    with input_errors_exit("segexp-info"):  # a bad value or a missing dataset: one line, exit status 2
        summary = model_summary(compose_config(overrides))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"model:          {summary['backbone']} + {summary['head']} ({summary['num_classes']} classes)")
    print(f"parameters:     {summary['num_params']:,} ({summary['size_mb_fp32']} MB as float32)")
    for part, n in summary["params_by_part"].items():
        print(f"  {part + ':':13} {n:,}")
    print(f"output stride:  {summary['output_stride']}")
    h, w = summary["crop_size"]
    print(f"FLOPs per crop: {summary['gflops_per_crop']} GFLOPs at {h}x{w}")
    if "eval_output_stride" in summary:
        print(f"evaluated at:   output stride {summary['eval_output_stride']}, "
              f"{summary['gflops_per_crop_eval']} GFLOPs at {h}x{w}")


if __name__ == "__main__":
    main()
