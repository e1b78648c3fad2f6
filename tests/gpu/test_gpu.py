"""CUDA-only checks of the GPU path (marker ``gpu``; skipped without CUDA). ``scripts/device_check.sh`` runs them.

- a bf16 / channels_last training step on the GPU matches the fp32 step on the CPU within bf16 tolerance;
- ``trainer=gpu``: a short run writes metrics and checkpoints, and a run killed mid-way and resumed from
  ``last.ckpt`` ends where the uninterrupted run ends;
- DDP (strategy ``ddp``) in one CUDA process; SyncBN conversion under DDP and the one-device fallback;
- ``model.compile=true`` trains and leaves checkpoint keys unchanged (``slow``);
- the ``full`` profile of one DeepLabv3 row, a few steps on a fixture VOC-aug tree with fixture ImageNet weights
  (``slow``).

``scripts/device_check.sh`` runs the fast ones first (stage ``tests``: ``-m "gpu and not slow"``) and the two
``slow`` ones last (stage ``slow``). Every test runs with :data:`OFFLINE_ENV` set, so that no process it starts
(training runs, loader workers) waits for a network; the script sets the same for the pytest process itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from segexp.cli.bench import FixedBatches
from segexp.cli.train import run_training
from segexp.training.build import build_datamodule, build_module
from segexp.training.harness import effective_sync_batchnorm
from tests.helpers.gpu import OFFLINE_ENV, SyntheticBatch, cosine, one_step_update, relative_error
from tests.helpers.runs import interrupted_and_resumed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only check: no CUDA device here"),
]

GPU_RUN = ["trainer=gpu", "data.num_workers=2"]



@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)










def test_bf16_channels_last_forward_and_step_match_fp32_cpu(make_cfg) -> None:
    cfg = make_cfg("schedule.weight_decay=0")
    reference, cpu_module = one_step_update(cfg, "cpu", "32-true")
    update, module = one_step_update(cfg, "gpu", "bf16-mixed")
    conv = module.model.backbone.conv1.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    # the forward pass of the updated models: bf16 rounding only (about 3 significant digits)
    images = torch.stack([s["image"] for s in SyntheticBatch(build_datamodule(cfg)).samples])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = module.model.eval()(images.cuda().contiguous(memory_format=torch.channels_last)).float().cpu()
    expected = cpu_module.model.eval()(images).detach()
    assert relative_error(logits, expected) < 3e-2
    # one step's update: gradients at initialisation sum many cancelling terms, so bf16 moves their size
    # (about 35% relative error, as on the CPU) but not their direction
    assert cosine(update, reference) > 0.9, (cosine(update, reference), relative_error(update, reference))


def test_channels_last_fp32_on_gpu_equals_fp32_on_cpu(make_cfg) -> None:
    """The memory format changes the layout only: an fp32 step (TF32 off) agrees to float32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        nhwc, module = one_step_update(make_cfg("model.channels_last=true"), "gpu", "32-true")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert module.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    reference, _ = one_step_update(make_cfg("model.channels_last=false"), "cpu", "32-true")
    assert relative_error(nhwc, reference) < 1e-3


def test_gpu_run_writes_checkpoints_and_resumes_where_the_uninterrupted_run_ends(make_cfg) -> None:
    metrics = run_training(make_cfg(*GPU_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    assert metrics["device"] == torch.cuda.get_device_name() and metrics["precision"] in ("bf16-mixed", "16-mixed")
    reference, resumed = interrupted_and_resumed(make_cfg, *GPU_RUN)
    # cuDNN's autotuned kernels and atomics in bilinear backward are not bitwise deterministic on CUDA:
    # the resumed run must agree to rounding, not bit for bit (the CPU test checks bit-exactness).
    weights = [k for k, v in reference.state.items() if v.is_floating_point() and "running" not in k]
    for key in weights:
        assert relative_error(resumed.state[key], reference.state[key]) < 1e-2, key


def test_ddp_in_one_cuda_process_trains_and_reports_world_size_one(make_cfg) -> None:
    cfg = make_cfg("trainer=ddp", "trainer.devices=1", "data.num_workers=0")
    with pytest.warns(UserWarning, match="sync_batchnorm=true ignored"):  # one device: plain BN
        assert effective_sync_batchnorm(cfg) is False
    metrics = run_training(cfg)
    assert metrics["world_size"] == 1 and metrics["steps"] == 6 and 0.0 <= metrics["mIoU"] <= 1.0


def test_syncbn_conversion_under_ddp_trains_on_cuda(make_cfg) -> None:
    cfg = make_cfg()
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    loader = DataLoader(FixedBatches(8, 64, datamodule.num_classes), batch_size=4)
    trainer = pl.Trainer(accelerator="gpu", devices=1, strategy="ddp", sync_batchnorm=True, max_steps=2,
                         precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    norms = [m for m in module.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert all(int(m.num_batches_tracked) == 2 for m in norms)


@pytest.mark.slow
def test_compiled_model_trains_and_keeps_checkpoint_keys(make_cfg) -> None:
    plain = make_cfg(*GPU_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2")
    compiled = make_cfg(*GPU_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2", "model.compile=true")
    run_training(plain)
    metrics = run_training(compiled)
    assert metrics["steps"] == 2
    keys = [set(torch.load(Path(c.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
            for c in (plain, compiled)]
    assert keys[0] == keys[1]


def write_fixture_voc_aug(data_dir: Path) -> None:
    """A VOC 2012 + SBD tree converted to train_aug, and random torchvision-format ResNet-101 weights."""
    from segexp.data.convert.sbd_to_voc import convert_sbd
    from segexp.models.backbones.resnet import ResNet
    from tests.helpers.data_files import make_sbd, make_voc

    voc_root = make_voc(data_dir)
    convert_sbd(make_sbd(data_dir, ["2008_000100", "2008_000101"], ["2008_000102"], voc_root), voc_root)
    state = ResNet(101, output_stride=32).state_dict()
    state.update({"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)})
    (data_dir / "pretrained").mkdir()
    torch.save(state, data_dir / "pretrained" / "resnet101.pth")


@pytest.mark.slow
def test_full_profile_row_runs_a_few_steps_on_the_gpu(tmp_path: Path) -> None:
    from segexp.tables.runner import run_table
    from segexp.tables.spec import load_profile, load_table

    write_fixture_voc_aug(tmp_path / "data")
    extra = [f"data_dir={tmp_path / 'data'}", "trainer.max_steps=3", "trainer.val_check_interval=3",
             "data.batch_size=4", "data.crop_size=[129,129]", "data.num_workers=0", "logger=csv",
             "trainer.enable_progress_bar=false"]
    result = run_table(load_table("deeplabv3.t5"), load_profile("full"), rows=["mg111"],
                       base_dir=tmp_path / "runs", extra=extra, quiet=True)
    assert result.ok, result.failed
    metrics = json.loads((tmp_path / "runs" / "mg111" / "seed0" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["device"] == torch.cuda.get_device_name()
    assert metrics["precision"] in ("bf16-mixed", "16-mixed") and len(metrics["per_class_iou"]) == 21
