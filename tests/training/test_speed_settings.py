"""GPU speed settings seen from the CPU: precision choice, channels_last, compile, loader options, bench parts.

The CUDA side of the same settings is checked in tests/gpu/test_gpu.py (marker ``gpu``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segexp.cli import bench
from segexp.cli.info import model_summary
from segexp.cli.train import run_training
from segexp.config import REPO_ROOT
from segexp.data.datamodule import SegmentationDataModule, collate_uint8_labels
from segexp.data.datasets.camvid import CamVid
from segexp.resolvers import gpu_mixed_precision
from segexp.training.build import build_datamodule
from tests.helpers.gpu import cosine, one_step_update, relative_error


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
    """Both layouts against the float64 step. Measured on this model (OS 8, hole algorithm): NCHW 1e-5, NHWC
    4e-3: torch's CPU BatchNorm backward in channels_last float32 loses about 1e-3 in layer4's BN (found by
    backward hooks against float64; its convolutions agree to 1e-6), and the step's cancelling sums amplify
    it. A layout mistake (a wrong permutation) would be of order 1."""
    # Unpadded crops (scale 1: the 128 px images fill the crop): a crop padded with the mean pixel (0 after
    # normalisation) feeds BN near-constant regions whose cancelling float32 sums leave the NCHW step 3e-3 from the
    # float64 one, which would hide the layout's own error behind the data's.
    unpadded = "data.scale_range=[1.0,1.0]"
    nhwc, module = one_step_update(make_cfg("model.channels_last=true", unpadded), "cpu", "32-true")
    nchw, _ = one_step_update(make_cfg("model.channels_last=false", unpadded), "cpu", "32-true")
    exact, _ = one_step_update(make_cfg("model.channels_last=false", unpadded), "cpu", "64-true")
    assert module.model.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(nchw, exact.float()) < 1e-4
    assert relative_error(nhwc, exact.float()) < 2e-2
    assert cosine(nhwc, nchw) > 0.9999
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


EXIT_WITH_LIVE_WORKERS = """
import os, signal, time
from segexp.config import compose_config
from segexp.training.build import build_datamodule
datamodule = build_datamodule(compose_config(["experiment=synthetic", "data.num_workers=2"]))
train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
next(iter(train)), next(iter(val))
workers = [w.pid for w in train._iterator._workers]
for pid in workers:
    os.kill(pid, signal.SIGTERM)  # as a scheduler's pre-emption signal reaches every process of the job
time.sleep(0.5)
print("alive after SIGTERM:", sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in workers), flush=True)
"""


def test_a_script_holding_loaders_with_live_workers_exits() -> None:
    """Workers ignore SIGTERM (pre-emption must not kill them mid-save), which multiprocessing's exit handler
    relies on to stop them: the datamodule stops its loaders' persistent workers first, so the exit finishes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", EXIT_WITH_LIVE_WORKERS], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "alive after SIGTERM: 2" in done.stdout


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
    for compact in (False, True):
        assert bench.loader_rate(workers=0, normalize_on_device=compact, crop=64, batch=2, images=4, epochs=2) > 0


def test_bench_bare_loop_follows_the_precision_and_layout(tmp_path: Path) -> None:
    args = bench.parse_args(["--batch=2", "--steps=1", "--warmup=0", "--crop=64", "--depth=18",
                             "--precision=bf16-mixed", "--channels-last=true"])
    assert bench.autocast_dtype(args.precision) is torch.bfloat16 and args.channels_last
    assert len(bench.time_bare(args)) == 1


def test_bench_gpu_report_from_known_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU suite's report with its CUDA-only measurements replaced by known figures: images/s, MFU and the
    segexp/bare ratio follow from them by hand (the FLOP count is the real one, on meta tensors)."""
    step_s = {"bare": 0.200, "segexp": 0.204}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Test GPU")
    monkeypatch.setattr(bench, "gpu_mixed_precision", lambda: "bf16-mixed")
    monkeypatch.setattr(bench, "bf16_peak_tflops", lambda: 800.0)
    monkeypatch.setattr(bench, "measure", lambda mode, argv: {"median_s": step_s[mode], "peak_mb": 1000.0})
    asked: list[tuple] = []
    monkeypatch.setattr(bench, "inference_rate", lambda *a, **k: asked.append(a) or 20.0)
    monkeypatch.setattr(bench, "loader_rate", lambda workers, normalize_on_device: 360.0 if normalize_on_device
                        else 300.0)
    report = bench.gpu_suite(bench.parse_args(["--loader-workers=16"]))
    for os_, batch in ((16, 16), (8, 8)):
        flops = bench.forward_flops(101, os_, 512, 512)
        result = report["training"][f"os{os_}"]
        assert result["batch"] == batch and result["forward_gflops_per_image"] == pytest.approx(flops / 1e9)
        assert result["segexp"]["images_per_s"] == pytest.approx(batch / 0.204)
        assert result["mfu"] == pytest.approx(3 * flops * batch / 0.204 / 800e12)
        assert result["achieved_tflops"] == pytest.approx(result["mfu"] * 800)
        assert result["segexp_over_bare"] == pytest.approx(1.02)
    assert asked == [(101, 8, (512, 1024), False), (101, 8, (1024, 2048), True)]
    assert report["inference"]["whole_512x1024"]["images_per_s"] == 20.0
    assert report["loader"] == {"workers": 16, "samples_per_s": {"float32": 300.0, "uint8": 360.0},
                                "crop": [512, 512], "source": "1024x2048 JPEG + PNG label pairs"}
    assert report["device"] == "Test GPU" and report["precision"] == "bf16-mixed"


def test_bench_inference_rate_runs_whole_and_sliding_on_the_cpu() -> None:
    """The GPU suite's inference timing, on the CPU at a small size: whole image, and 32x64 windows (stride
    21x43) over a 64x128 image."""
    assert bench.inference_rate(18, 8, (32, 64), slide=False, repeats=1, device="cpu") > 0
    assert bench.inference_rate(18, 8, (64, 128), slide=True, repeats=1, device="cpu", window=(32, 64)) > 0


def test_uint8_batches_normalised_after_the_transfer_equal_the_float_batches(make_cfg) -> None:
    """data.normalize_on_device: the same samples (same seeds) travel as uint8 images and labels, and the
    datamodule's after-transfer hook turns them into the batches of the float path."""
    plain = build_datamodule(make_cfg("data.num_workers=0", "data.normalize_on_device=false"))
    compact = build_datamodule(make_cfg("data.num_workers=0", "data.normalize_on_device=true"))
    for name in ("train_dataloader", "val_dataloader"):
        expected, moved = next(iter(getattr(plain, name)())), next(iter(getattr(compact, name)()))
        assert moved["image"].dtype == torch.uint8 and moved["label"].dtype == torch.uint8
        assert expected["image"].dtype == torch.float32 and expected["label"].dtype == torch.int64
        assert moved["image"].nbytes * 4 == expected["image"].nbytes
        batch = compact.on_after_batch_transfer(moved, 0)
        torch.testing.assert_close(batch["image"], expected["image"], rtol=0, atol=1e-6)
        assert torch.equal(batch["label"], expected["label"]) and batch["label"].dtype == torch.int64
    assert plain.on_after_batch_transfer(expected, 0) is expected  # the float path passes through
    labels = torch.tensor([[0, 10], [254, 255]])  # class ids and the ignore value survive the uint8 trip
    moved = collate_uint8_labels([{"image": torch.zeros(3, 2, 2, dtype=torch.uint8), "label": labels}])
    assert moved["label"].dtype == torch.uint8 and torch.equal(moved["label"][0].long(), labels)


def test_normalize_on_device_defaults_to_cuda_and_refuses_too_many_classes(make_cfg, monkeypatch) -> None:
    assert not build_datamodule(make_cfg("data.num_workers=0")).normalize_on_device  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build_datamodule(make_cfg("data.num_workers=0")).normalize_on_device
    monkeypatch.setattr(SegmentationDataModule, "num_classes", 300)
    with pytest.raises(ValueError, match=r"normalize_on_device=true moves labels as uint8, but .* has 300 classes"):
        build_datamodule(make_cfg("data.num_workers=0"))


@pytest.mark.slow
def test_training_with_uint8_batches_matches_the_float_path(make_cfg) -> None:
    """Two steps and a validation through Lightning, batches as float32 or as uint8 normalised by the hook:
    the same weights and metrics."""
    runs = [make_cfg("trainer.max_steps=2", "trainer.val_check_interval=2", f"data.normalize_on_device={flag}")
            for flag in ("false", "true")]
    metrics = [run_training(cfg) for cfg in runs]
    # inputs equal to 2.4e-7 (A.Normalize rounds otherwise): a few borderline pixels may flip
    assert metrics[0]["mIoU"] == pytest.approx(metrics[1]["mIoU"], abs=1e-3) and metrics[1]["steps"] == 2
    weights = [torch.load(Path(c.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for c in runs]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-5, msg=key)
