"""What carries a run to a lent GPU machine (README, "GPU machines"), checked here without one.

- ``scripts/pack_camvid.py``: CamVid with JPEG images, the data of the GPU proxy;
- ``scripts/device_carry.py``: the wheels install on the device's CPython 3.12, and what travels fits 64 MiB;
- ``scripts/device_stages.py`` (run by ``scripts/device_check.sh``): the stage budgets, the per-test timeout
  plugin, the offline settings, and (``slow``) the dry rehearsal: the whole script on this CPU under a venv
  without hydra-core, omegaconf, albumentations or wandb, installing them from wheels as on the device, with
  the CUDA stages skipping and saying so, and a stage cut by its timeout not stopping the next;
- the fair benchmark (``segexp.cli.bench``): steps timed on batches staged on the device, FLOP counts made
  beforehand, MFU over both peaks; and the training step reading nothing back from the device (no per-step
  host sync), while a non-finite loss still stops the run naming its first step.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from segexp.cli import bench
from segexp.config import REPO_ROOT
from segexp.data.datasets.camvid import CamVid
from segexp.training.build import build_datamodule, build_module
from segexp.training.module import NonFiniteLossError, SegmentationModule
from tests.helpers.data_files import make_camvid
from tests.helpers.scripts import load_script

PACK = REPO_ROOT / "scripts" / "pack_camvid.py"


def pack(source: Path, target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PACK), str(source), str(target), *args], capture_output=True,
                          text=True, timeout=120)


def jpeg_roundtrip(path: Path, quality: int) -> np.ndarray:
    """What PIL's own JPEG encoder (4:4:4 chroma) makes of the image at ``path``, decoded."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_packed_camvid_loads_with_jpeg_images_and_the_original_labels(tmp_path: Path) -> None:
    source = make_camvid(tmp_path, {"train": 3, "val": 2})
    target = tmp_path / "packed"
    done = pack(source, target, "--quality", "95")
    assert done.returncode == 0, done.stderr
    assert "{'train': 3, 'val': 2}" in done.stdout and not (tmp_path / "packed.partial").exists()
    for split in ("train", "val"):
        original, packed = CamVid(str(source), split), CamVid(str(target), split)
        assert [p.suffix for p, _ in packed.samples] == [".jpg"] * len(original)
        for index, (image, label) in enumerate(original.samples):
            assert label is not None
            np.testing.assert_array_equal(packed[index]["label"].numpy(), original[index]["label"].numpy())
            assert (target / f"{split}annot" / label.name).read_bytes() == label.read_bytes()
            np.testing.assert_array_equal(packed[index]["image"].permute(1, 2, 0).numpy(),
                                          jpeg_roundtrip(image, 95))


def test_pack_camvid_refuses_a_folder_that_is_not_camvid_and_keeps_the_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "packed"
    assert pack(make_camvid(tmp_path, {"train": 2, "val": 1}), target).returncode == 0
    before = sorted(p.relative_to(target) for p in target.rglob("*"))
    (tmp_path / "empty").mkdir()
    refused = pack(tmp_path / "empty", target)
    assert refused.returncode != 0 and f"{tmp_path / 'empty'} is not a CamVid folder" in refused.stderr
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before




stages = load_script("device_stages")
carry = load_script("device_carry")


# ------------------------------------------------------------------------------ the carried wheels and size
def test_wheel_check_names_each_wheel_the_device_python_cannot_install() -> None:
    good = ["pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "stringzilla-5.3.2-cp38-abi3-manylinux_2_28_x86_64.whl", "hydra_core-1.3.8-py3-none-any.whl",
            "antlr4_python3_runtime-4.9.3-py3-none-any.whl", "simsimd-6.5.16-cp312-cp312-manylinux1_x86_64.whl"]
    assert carry.wheel_problems(good, require=["hydra-core", "pydantic_core", "Antlr4.Python3-Runtime"]) == []
    bad = {
        "pydantic_core-2.50.5-cp311-cp311-manylinux_2_17_x86_64.whl": "cp311-cp311-manylinux_2_17_x86_64",  # built here
        "simsimd-6.5.16-cp312-cp312-macosx_11_0_arm64.whl": "macosx",
        "albucore-0.0.24-cp312-cp312-musllinux_1_2_x86_64.whl": "musllinux",
        "numpy-2.4.6-cp312-cp312-manylinux_2_17_aarch64.whl": "aarch64",
        "torch_x-1.0-cp312-cp312-manylinux_2_40_x86_64.whl": "manylinux_2_40",  # newer glibc than the image's
        "abi-1.0-cp313-abi3-manylinux_2_17_x86_64.whl": "cp313-abi3",  # stable ABI of a newer python
    }
    for name, tag in bad.items():
        [problem] = carry.wheel_problems([name])
        assert problem.startswith(f"{name}: tagged ") and tag in problem and "CPython 3.12" in problem
    twice = carry.wheel_problems(["omegaconf-2.3.1-py3-none-any.whl", "omegaconf-2.3.0-py3-none-any.whl"])
    assert twice == ["omegaconf-2.3.1-py3-none-any.whl: a second version of omegaconf (also "
                     "omegaconf-2.3.0-py3-none-any.whl); keep one"]
    assert carry.wheel_problems(good, require=["wandb"]) == ["no wheel of wandb (required)"]


def test_wheel_check_fails_loudly_on_a_folder_with_a_wheel_for_this_machine(tmp_path: Path) -> None:
    (tmp_path / "hydra_core-1.3.8-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "pydantic_core-2.50.5-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "device_carry.py"), "wheels", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pydantic_core-2.50.5-cp311-cp311-manylinux_2_17_x86_64.whl: tagged cp311" in done.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_carried_size_counts_what_the_device_tool_sends(tmp_path: Path) -> None:
    """Tracked files and untracked ones git does not ignore travel; ignored ones only when named in carry."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("/.whl/\n/big/\n")  # 13 bytes
    (repo / "tracked.py").write_bytes(b"x" * 1000)
    git(repo, "add", ".gitignore", "tracked.py")
    (repo / "untracked.txt").write_bytes(b"y" * 500)
    (repo / "big").mkdir()
    (repo / "big" / "data.bin").write_bytes(b"z" * 10_000)
    (repo / ".whl").mkdir()
    (repo / ".whl" / "a-1-py3-none-any.whl").write_bytes(b"w" * 2000)
    total, line = carry.carried_report(repo, [".whl"])
    assert total == 13 + 1000 + 500 + 2000
    assert "working tree 0.0 MiB (3 files) + .whl 0.0 MiB" in line and "to spare" in line
    assert carry.carried_report(repo, [])[0] == 1513
    assert carry.carried_report(repo, [".whl", "big"])[0] == 13_513
    with pytest.raises(FileNotFoundError, match=r"carry \.camvid: .* does not exist"):
        carry.carried_report(repo, [".camvid"])
    os.truncate(repo / "big" / "data.bin", carry.LIMIT_BYTES)  # sparse: no disk used
    total, line = carry.carried_report(repo, ["big"])
    assert total == 1513 + carry.LIMIT_BYTES and "OVER by 0.0 MiB" in line


def test_device_folders_are_ignored_so_they_are_never_committed() -> None:
    for folder in (".whl/", ".camvid/"):
        done = subprocess.run(["git", "check-ignore", "-q", folder], cwd=REPO_ROOT)
        assert done.returncode == 0, f"{folder} is not git-ignored"


# ------------------------------------------------------------------------------ stages, budget, offline
def test_stage_timeouts_follow_the_budget_and_one_call_fits_nine_minutes() -> None:
    reserve = stages.WRAP_UP_S
    assert stages.stage_timeout(120, 45, 420, elapsed_s=0) == 120  # its own budget
    assert stages.stage_timeout(120, 45, 420, elapsed_s=300) == 420 - 300 - reserve  # what is left
    assert stages.stage_timeout(170, 100, 420, elapsed_s=420 - reserve - 99) is None  # under its minimum: cut
    assert stages.stage_timeout(170, 100, 420, elapsed_s=420 - reserve - 100) == 100
    assert stages.estimated_call_s(stages.DEFAULT_BUDGET_S) <= 9 * 60
    expected = stages.SETUP.expect_s + sum(stage.expect_s for stage in stages.STAGES)
    assert expected <= stages.DEFAULT_BUDGET_S
    assert all(stage.min_s <= stage.expect_s <= stage.budget_s for stage in stages.STAGES)
    assert [stage.name for stage in stages.STAGES] == ["env", "tests", "proxy", "bench", "slow"]
    assert len(stages.OUT_FILES) <= stages.MAX_OUT_FILES == 8


def test_stage_arguments_keep_the_order_of_value() -> None:
    args = stages.parse_args(["/tmp/x", "--budget", "300", "slow", "--stage-budget", "proxy=60", "tests"])
    assert args.out == Path("/tmp/x") and args.stages == ["tests", "slow"] and args.budget == 300
    assert args.stage_budget == [("proxy", 60)]
    assert stages.parse_args(["bench"]).stages == ["bench"]
    with pytest.raises(SystemExit):
        stages.parse_args(["/tmp/x", "tset"])
    with pytest.raises(SystemExit):
        stages.parse_args(["--stage-budget", "proxy=soon"])


def test_pytest_counts_read_the_last_summary_line() -> None:
    log = ("tests/gpu/test_gpu.py::test_a SKIPPED (CUDA-only check: no CUDA device here)\n"
           "========== 4 passed, 1 failed, 2 skipped, 3 deselected in 12.34s ==========\n")
    assert stages.pytest_counts(log) == {"passed": 4, "failed": 1, "skipped": 2, "deselected": 3}
    assert stages.pytest_counts("collected 0 items\n") == {}


def test_offline_settings_are_the_same_in_the_script_the_runner_and_the_cuda_tests() -> None:
    from tests.helpers.gpu import OFFLINE_ENV

    [exports] = re.findall(r"^export (.*)$", (REPO_ROOT / "scripts" / "device_check.sh").read_text(), flags=re.M)
    assert dict(pair.split("=", 1) for pair in exports.split()) == stages.OFFLINE_ENV
    assert stages.OFFLINE_ENV["NO_ALBUMENTATIONS_UPDATE"] == "1"
    assert OFFLINE_ENV.items() <= stages.OFFLINE_ENV.items()


def test_per_test_timeout_fails_the_slow_test_and_runs_the_next(tmp_path: Path) -> None:
    (tmp_path / "test_sleepy.py").write_text("import time\n\ndef test_sleeps():\n    time.sleep(60)\n\n"
                                             "def test_after():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "scripts")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_test_timeout",
                           "--per-test-timeout=1", "test_sleepy.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert time.monotonic() - start < 50, "the sleeping test was not stopped"
    assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout
    assert "test_sleepy.py::test_sleeps (call) ran past --per-test-timeout=1 s" in done.stdout
    assert "time.sleep(60)" in done.stdout  # where it stood


# ------------------------------------------------------------------------------ the fair benchmark
class HostReads(TorchFunctionMode):
    """Records every read of a tensor's value on the host (each waits for the device on a GPU)."""

    READS = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__"})

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_training_step_reads_nothing_back_from_the_device(make_cfg) -> None:
    """The old step read the loss (loss.item()) every step, a host-device sync on a GPU. The loss here is
    torch's own: segexp's CrossEntropy still asks whether any pixel is labelled (a read of its own)."""
    cfg = make_cfg()
    module = build_module(cfg, build_datamodule(cfg))
    module.loss = torch.nn.CrossEntropyLoss(ignore_index=255)
    module.loss_takes_batch = False
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.randint(0, 6, (2, 64, 64))}
    with HostReads() as mode:
        loss = module.training_step(batch, 0)
    assert loss.requires_grad and mode.reads == []


def test_non_finite_loss_is_reported_at_its_first_step_when_checked_later(make_cfg, monkeypatch) -> None:
    cfg = make_cfg()
    module = build_module(cfg, build_datamodule(cfg))
    step = [0]
    monkeypatch.setattr(SegmentationModule, "global_step", property(lambda self: step[0]))
    for step[0], loss in enumerate([2.0, 1.5, math.nan, math.inf, 1.0]):
        module._note_non_finite(torch.tensor(loss))
        if step[0] == 1:
            module._stop_if_non_finite()  # all finite so far: no error
    with pytest.raises(NonFiniteLossError, match=r"^Training loss is nan at step 2: stopping"):
        module._stop_if_non_finite()
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        module.on_save_checkpoint({})  # weights a NaN loss has updated are never saved


def test_bench_steps_run_on_batches_staged_on_the_device() -> None:
    batches = bench.staged_batches(2, 8, 3, steps=5, device=torch.device("cpu"))
    assert len(batches) == 5 and batches[0] is batches[2] and batches[1] is batches[3] and batches[0] is not batches[1]
    assert batches[0]["image"].dtype == torch.float32 and batches[0]["label"].dtype == torch.int64
    assert batches[0]["image"].abs().min() > 0 and int(batches[0]["label"].max()) < 3  # random, never zeros
    args = bench.parse_args(["--batch=2", "--steps=2", "--warmup=1", "--crop=64", "--depth=18", "--precision=32-true"])
    times = bench.time_framework(args)  # Lightning fed the staged list: one interval per step
    assert len(times) == 3 and all(t > 0 for t in times)
    stats = bench.step_statistics([0.3, 0.1, 0.2, 0.4, 0.5])
    assert stats["median_s"] == 0.3 and stats["p10_s"] < 0.2 and stats["p90_s"] > 0.4


def test_bench_flops_file_is_read_only_for_the_sources_it_was_counted_from(tmp_path: Path) -> None:
    config = (18, 16, 64, 64, "voc")
    path = tmp_path / "flops.json"
    table = bench.write_flops(path, configs=[config])
    counted = bench.forward_flops(*config)
    assert table["forward_flops"] == {"resnet18-os16-voc-64x64": counted}
    flops = bench.Flops(path)
    assert flops.source == f"from {path}" and flops.forward(*config) == counted
    table["forward_flops"]["resnet18-os16-voc-64x64"] = 12345  # a value only the file can give
    path.write_text(json.dumps(table))
    assert bench.Flops(path).forward(*config) == 12345
    table["fingerprint"] = "0" * 64  # written for other model sources: counted again
    path.write_text(json.dumps(table))
    stale = bench.Flops(path)
    assert "other model sources" in stale.source and stale.forward(*config) == counted
    assert "no --flops file" in bench.Flops(None).source and "unreadable" in bench.Flops(tmp_path / "no").source


def test_bench_mfu_over_both_peaks_and_the_layout_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """With known timings: MFU over the measured and the datasheet peak, and channels_last vs contiguous."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    monkeypatch.setattr(bench, "gpu_mixed_precision", lambda: "bf16-mixed")
    monkeypatch.setattr(bench, "bf16_peak_tflops", lambda: 800.0)
    flops = 100e9
    monkeypatch.setattr(bench, "Flops", lambda path: type("F", (), {"source": "test", "forward": lambda *a: flops})())

    def measure(mode: str, argv: list[str]) -> dict[str, float]:
        nhwc = "--channels-last=True" in argv
        return {"median_s": {"bare": 0.100, "segexp": 0.104}[mode] * (1 if nhwc else 1.5), "peak_mb": 1.0}

    monkeypatch.setattr(bench, "measure", measure)
    reports: list[dict[str, Any]] = []
    args = bench.parse_args(["--parts", "training", "--only-os", "16", "--compare-layouts", "--channels-last=true"])
    report = bench.gpu_suite(args, emit=lambda r: reports.append(json.loads(json.dumps(r))))
    result = report["training"]["os16"]
    achieved = 3 * flops * 16 / 0.104 / 1e12
    assert result["achieved_tflops"] == pytest.approx(achieved)
    assert result["mfu"] == pytest.approx(achieved / 800) and result["mfu_datasheet"] == pytest.approx(achieved / 989)
    assert result["channels_last_speedup"] == pytest.approx(1.5)
    assert result["contiguous"]["segexp_over_bare"] == pytest.approx(1.04)
    assert list(report["training"]) == ["os16"] and report["inference"] == {} and "loader" not in report
    assert [r["complete"] for r in reports] == [False, False, True]  # written after every measurement
    assert bench.datasheet_bf16_tflops("NVIDIA H100 PCIe") == 756 and bench.datasheet_bf16_tflops("Tesla V100") is None


def test_bench_loader_lists_enough_samples_from_few_files(tmp_path: Path) -> None:
    bench.write_cityscapes_size_pairs(tmp_path / "pairs", 2, listed=5)
    dataset = CamVid(root=str(tmp_path / "pairs"), split="train")
    assert len(dataset) == 5 and [p.name for p, _ in dataset.samples] == [f"000{i}.jpg" for i in range(5)]
    inodes = [os.stat(p).st_ino for p, _ in dataset.samples]
    assert inodes[2] == inodes[4] == inodes[0] != inodes[1] == inodes[3]  # two scenes, linked in turn
    np.testing.assert_array_equal(dataset[(4, 0)]["image"].numpy(), dataset[(0, 0)]["image"].numpy())












