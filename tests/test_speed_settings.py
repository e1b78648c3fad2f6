"""GPU speed settings seen from the CPU: precision choice, channels_last, compile, loader options, bench parts.

The CUDA side of the same settings is checked in tests/test_gpu.py (marker ``gpu``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segexp.cli import bench
from segexp.cli.info import (
    model_summary,
)
from segexp.cli.train import run_training
from segexp.config import gpu_mixed_precision
from segexp.data.datasets.camvid import CamVid
from segexp.training.build import build_datamodule
from tests.test_gpu import cosine, one_step_update, relative_error


def test_gpu_precision_is_bf16_unless_the_gpu_lacks_it(monkeypatch: pytest.MonkeyPatch, make_cfg) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_mixed_precision() == "bf16-mixed"  # planning on a machine without CUDA
    assert make_cfg("trainer=gpu").trainer.precision == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert gpu_mixed_precision() == "16-mixed"  # e.g. V100, T4: fp16 with Lightning's gradient scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert make_cfg("trainer=ddp").trainer.precision == "bf16-mixed"


def test_cpu_training_keeps_the_contiguous_layout_by_default(make_cfg) -> None:
    update, module = one_step_update(make_cfg(), "cpu", "32-true")
    weight = module.model.backbone.conv1.weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    assert update.abs().sum() > 0


def test_channels_last_changes_the_layout_not_the_step(make_cfg) -> None:
    nhwc, module = one_step_update(make_cfg("model.channels_last=true"), "cpu", "32-true")
    nchw, _ = one_step_update(make_cfg("model.channels_last=false"), "cpu", "32-true")
    assert module.model.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(nhwc, nchw) < 1e-4
    assert module.in_model_layout(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def test_bf16_step_keeps_the_direction_of_the_fp32_step(make_cfg) -> None:
    """The tolerance the CUDA test uses, calibrated here: bf16 autocast on the CPU vs fp32."""
    bf16, _ = one_step_update(make_cfg(), "cpu", "bf16-mixed")
    fp32, _ = one_step_update(make_cfg(), "cpu", "32-true")
    assert cosine(bf16, fp32) > 0.9
    assert 0.01 < relative_error(bf16, fp32) < 0.6  # bf16 does change the numbers


def test_loader_workers_prefetch_and_stay_alive(make_cfg) -> None:
    with_workers = build_datamodule(make_cfg("data.num_workers=2", "data.prefetch_factor=4")).train_dataloader()
    assert with_workers.prefetch_factor == 4 and with_workers.persistent_workers
    in_process = build_datamodule(make_cfg("data.num_workers=0")).train_dataloader()
    assert in_process.num_workers == 0 and not in_process.persistent_workers


@pytest.mark.slow
def test_compiled_model_trains_on_cpu_and_keeps_checkpoint_keys(make_cfg) -> None:
    runs = [make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2", *extra)
            for extra in ([], ["model.compile=true"])]
    for cfg in runs:
        assert run_training(cfg)["steps"] == 2
    keys = [set(torch.load(Path(c.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
            for c in runs]
    assert keys[0] == keys[1]


def test_bench_flop_count_on_meta_equals_segexp_info(make_cfg) -> None:
    """Two ways of counting one forward pass: on meta tensors (bench) and on real zeros (segexp-info)."""
    cfg = make_cfg("backbone=resnet18", "backbone.output_stride=16", "head=aspp", "dataset=voc",
                   "data.crop_size=[96,128]", base=[])
    summary = model_summary(cfg)
    assert bench.forward_flops(18, 16, 96, 128) == pytest.approx(summary["gflops_per_crop"] * 1e9, rel=1e-3)


def test_bench_flops_grow_with_the_dilated_stages(make_cfg) -> None:
    """OS 8 runs layer4 (and the head) on 4x the pixels of OS 16: many more FLOPs for the same weights."""
    assert bench.forward_flops(18, 8, 64, 64) > 1.5 * bench.forward_flops(18, 16, 64, 64)


def test_bench_loader_files_load_as_camvid_and_are_timed(tmp_path: Path) -> None:
    bench.write_cityscapes_size_pairs(tmp_path / "pairs", 2)
    dataset = CamVid(root=str(tmp_path / "pairs"), split="train")
    sample = dataset[(0, 0)]
    assert tuple(sample["image"].shape) == (3, 1024, 2048) and int(sample["label"].max()) <= 10
    assert bench.loader_rate(workers=0, crop=64, batch=2, images=4, epochs=2) > 0


def test_bench_bare_loop_follows_the_precision_and_layout(tmp_path: Path) -> None:
    args = bench.parse_args(["--batch=2", "--steps=1", "--warmup=0", "--crop=64", "--depth=18",
                             "--precision=bf16-mixed", "--channels-last=true"])
    assert bench.autocast_dtype(args.precision) is torch.bfloat16 and args.channels_last
    assert len(bench.time_bare(args)) == 1
