"""DeepLabv3's two-stage protocol (Sec. 4.3): stage 2 starts from stage 1's weights with every BN frozen."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from segexp.cli.evaluate import run_evaluation
from segexp.cli.train import run_training
from segexp.config import ConfigError
from segexp.models.backbones.frozen_bn import FrozenBatchNorm2d
from segexp.models.build import build_segmentor
from segexp.training.build import build_model

SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "dataset.num_images=8", "dataset.image_size=32",
         "data.crop_size=[32,32]"]


class CaptureStates(pl.Callback):
    """The model's state at the start and at the end of training."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self.step = trainer.global_step
        self.model = pl_module.model


def stage1_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def test_stage2_starts_from_stage1_weights_and_keeps_bn_fixed(make_cfg) -> None:
    stage1 = make_cfg(*SHORT)
    run_training(stage1)
    ckpt = Path(stage1.output_dir) / "checkpoints" / "last.ckpt"
    loaded = stage1_weights(ckpt)

    capture = CaptureStates()
    stage2 = make_cfg(*SHORT, f"model.init_from={ckpt}", "model.freeze_bn=true", "schedule.lr=0.001")
    run_training(stage2, extra_callbacks=[capture])

    # identical weights at the first step (BN step counters are dropped by the frozen BN)
    expected = {k: v for k, v in loaded.items() if not k.endswith("num_batches_tracked")}
    assert set(capture.start) == set(expected)
    for key, value in expected.items():
        assert torch.equal(capture.start[key], value), key
    # a fresh run: its own step counter, and every BN (backbone and ASPP head) frozen
    assert capture.step == 2
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in capture.model.modules())
    frozen = [name for name, m in capture.model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert any(n.startswith("head.") for n in frozen) and any(n.startswith("backbone.") for n in frozen)
    # BN statistics and affine parameters stay fixed while the convolutions train
    bn_keys = [k for k in expected if k.rsplit(".", 1)[0] in frozen]
    assert bn_keys and all(torch.equal(capture.end[k], capture.start[k]) for k in bn_keys)
    conv_keys = [k for k in expected if k not in bn_keys]
    assert any(not torch.equal(capture.end[k], capture.start[k]) for k in conv_keys)

    # the stage-2 checkpoint evaluates without its init_from file (the checkpoint holds the weights)
    ckpt.unlink()
    stage2_ckpt = Path(stage2.output_dir) / "checkpoints" / "last.ckpt"
    eval_cfg = make_cfg(f"ckpt={stage2_ckpt}", base=["data.num_workers=0", "trainer.enable_progress_bar=false"],
                        config_name="eval")
    assert 0.0 <= run_evaluation(eval_cfg)["mIoU"] <= 1.0


def save_module_checkpoint(model: nn.Module, path: Path) -> None:
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)


def test_init_from_mismatch_names_file_keys_and_shapes(make_cfg, tmp_path: Path) -> None:
    plain, with_aux = tmp_path / "plain.ckpt", tmp_path / "aux.ckpt"
    save_module_checkpoint(build_segmentor(make_cfg(), num_classes=6), plain)
    save_module_checkpoint(build_segmentor(make_cfg("aux_head=fcn"), num_classes=6), with_aux)
    with pytest.raises(ConfigError, match=r"plain\.ckpt: .*missing keys: aux_head\.classifier\.bias"):
        build_model(make_cfg("aux_head=fcn", f"model.init_from={plain}"), num_classes=6)
    with pytest.raises(ConfigError, match=r"aux\.ckpt: .*unexpected keys: aux_head\.classifier\.bias"):
        build_model(make_cfg(f"model.init_from={with_aux}"), num_classes=6)
    shapes = r"shape mismatches: head\.classifier\.bias: checkpoint \(6,\) vs model \(21,\)"
    with pytest.raises(ConfigError, match=shapes):
        build_model(make_cfg(f"model.init_from={plain}"), num_classes=21)


def test_init_from_bad_files(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.init_from=.*nowhere.ckpt: no such checkpoint file"):
        build_model(make_cfg(f"model.init_from={tmp_path / 'nowhere.ckpt'}"), num_classes=6)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ConfigError, match="foreign.ckpt: not a Lightning checkpoint"):
        build_model(make_cfg(f"model.init_from={foreign}"), num_classes=6)


def test_freeze_bn_alone_freezes_head_and_backbone(make_cfg) -> None:
    model = build_segmentor(make_cfg("model.freeze_bn=true"), num_classes=6)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.head.modules()) > 0
