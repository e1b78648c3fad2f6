"""Turn a composed config into the objects of a run: data module, segmentor, Lightning module.

The config groups map one-to-one onto constructor calls (Hydra ``instantiate``): ``backbone``,
``head``, ``loss``, ``schedule``, ``dataset`` (+ the ``data`` loader settings) and ``trainer``.
The few values that depend on another part (the head's input channels, the number of classes)
are passed here, not repeated in YAML.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segexp.backbones.frozen_bn import freeze_batchnorm
from segexp.config import ConfigError, validate_config
from segexp.datamodule import SegmentationDataModule
from segexp.module import SegmentationModule
from segexp.segmentor import Segmentor

log = logging.getLogger(__name__)


@dataclass
class ModelOptions:
    """The ``model`` config node: how backbone and head are put together and trained."""

    head_loss_weight: float = 1.0
    scales: list[float] = field(default_factory=lambda: [1.0])
    scale_loss_weights: float | list[float] = 1.0
    align_corners: bool = False
    bn_momentum: float | None = None
    downsample_labels: bool = False
    eval_output_stride: int | None = None
    init_from: str | None = None
    freeze_bn: bool = False
    channels_last: bool | None = None
    compile: bool = False


BUILDER_KEYS = {"aux_head": ("loss_weight",)}
"""Keys of a component's node that the builder reads itself (not constructor arguments)."""


def validate(cfg: DictConfig) -> None:
    """Fail before training on unknown keys or wrongly typed values (see :mod:`segexp.config`)."""
    validate_config(cfg, {"data": SegmentationDataModule, "model": ModelOptions}, builder_keys=BUILDER_KEYS)


HYDRA_FLAGS_WITHOUT_PRECHECK = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
                                "--shell-completion", "-sc")


def check_command_line(argv: Sequence[str], config_name: str) -> None:
    """Raise :class:`ConfigError` with a "did you mean" suggestion when ``argv`` overrides a key that does not
    exist (``backbone.dpeth=50``). Hydra itself only says the key "is not in struct"; composing the same
    overrides with ``+`` lets :func:`validate` name the closest valid key. Other problems are left to Hydra."""
    from hydra.errors import ConfigCompositionException

    from segexp.info import compose_config

    if any(arg.split("=")[0] in HYDRA_FLAGS_WITHOUT_PRECHECK for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        compose_config(overrides, config_name)
    except ConfigCompositionException as err:
        unknown = re.search(r"Could not override '([^']+)'", str(err))
        if unknown is None or "To append to your config use +" not in str(err):
            return
        key = unknown.group(1)
        added = [f"+{arg}" if arg.split("=", 1)[0] == key else arg for arg in overrides]
        try:
            cfg = compose_config(added, config_name)
        except Exception:  # noqa: BLE001 -- let Hydra report what the precheck cannot explain
            return
        if config_name == "train":
            validate(cfg)  # names the closest parameter of a model part, of data or of model
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        close = difflib.get_close_matches(name, [str(k) for k in node if str(k) != name], n=1) if node else []
        hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown config key '{key}'.{hint} (new keys need '+{key}=...')") from None
    except Exception:  # noqa: BLE001 -- sweeps and other errors: Hydra reports them itself
        return


def model_options(cfg: DictConfig) -> ModelOptions:
    return ModelOptions(**OmegaConf.to_container(cfg.get("model") or {}, resolve=True))


def build_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    dataset = instantiate(cfg.dataset, _partial_=True)
    data = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    return SegmentationDataModule(dataset=dataset, seed=int(cfg.get("seed", 0)), **data)


def build_segmentor(cfg: DictConfig, num_classes: int) -> Segmentor:
    """Backbone from ``cfg.backbone``; head (and ``cfg.aux_head``) sized to it and built at its output stride
    (ASPP rates scaled, see :mod:`segexp.heads.aspp`); ``cfg.fusion`` for several ``model.scales``; the loss
    weight of every output."""
    options = model_options(cfg)
    backbone = instantiate(cfg.backbone)
    head = build_head(cfg.head, "head", backbone, num_classes)
    aux_head, aux_weight = None, 0.0
    if cfg.get("aux_head") is not None:
        aux_weight = aux_loss_weight(cfg.aux_head)
        aux_head = build_head(cfg.aux_head, "aux_head", backbone, num_classes)
    try:
        model = Segmentor(backbone, head, aux_head, align_corners=options.align_corners, scales=options.scales,
                          fusion=build_fusion(cfg, options.scales), head_loss_weight=options.head_loss_weight,
                          aux_loss_weight=aux_weight, scale_loss_weights=options.scale_loss_weights)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if options.eval_output_stride is not None:
        check_output_stride(model, options.eval_output_stride, "model.eval_output_stride")
    if options.init_from is not None:
        load_model_weights(model, options.init_from)
    if options.freeze_bn:
        freeze_batchnorm(model)
    if options.bn_momentum is not None:
        set_bn_momentum(model, options.bn_momentum)
    return model


def build_head(node: DictConfig, key: str, backbone: nn.Module, num_classes: int) -> nn.Module:
    """The head at config key ``key``: input channels from the backbone's description of the features it reads
    (``in_keys``), the number of classes and the backbone's output stride are passed, never written in YAML;
    the keys the builder reads itself (:data:`BUILDER_KEYS`) are left out."""
    output_stride = int(backbone.output_stride)
    if BUILDER_KEYS.get(key):
        params = OmegaConf.to_container(node, resolve=True)
        node = OmegaConf.create({k: v for k, v in params.items() if k not in BUILDER_KEYS[key]})
    try:
        return instantiate(node, in_channels=input_channels(backbone, node.get("in_keys"), key),
                           num_classes=num_classes, output_stride=output_stride)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{key} at backbone.output_stride={output_stride}: {err}") from err


def aux_loss_weight(node: DictConfig) -> float:
    """``aux_head.loss_weight``: a number >= 0 (the auxiliary output's weight in the training loss)."""
    weight = node.get("loss_weight", None)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ConfigError(f"aux_head.loss_weight={weight!r}: give the auxiliary loss's weight, a number >= 0 "
                          "(e.g. 0.4)")
    return float(weight)


def build_fusion(cfg: DictConfig, scales: Sequence[float]) -> nn.Module | None:
    """``cfg.fusion`` when the model runs several input scales. With one scale there is nothing to fuse: a
    fusion chosen anyway (e.g. in a table's base, with a row setting ``model.scales=[1.0]``) is not built, so
    that no unused parameters reach the optimizer or DDP."""
    if cfg.get("fusion") is None:
        return None
    if len(scales) < 2:
        log.info("fusion=%s unused: model.scales=%s has one scale", cfg.fusion.get("_target_"), list(scales))
        return None
    return instantiate(cfg.fusion)


def input_channels(backbone: nn.Module, in_keys: Sequence[str] | None, key: str = "head") -> int | list[int]:
    """A head's input channels from the backbone's description (``feature_channels``) of the features it
    reads: an int for one key (default ``"out"``), else a list in ``in_keys`` order. Unknown names fail
    with the list of the backbone's features."""
    keys = list(in_keys) if in_keys else ["out"]
    known = backbone.feature_channels
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ConfigError(f"{key}.in_keys={keys}: the backbone has no feature {', '.join(map(repr, unknown))}; "
                          f"its features are {', '.join(known)}")
    channels = [int(known[key]) for key in keys]
    return channels[0] if len(channels) == 1 else channels


def check_output_stride(model: Segmentor, output_stride: int, key: str) -> None:
    """Fail before any work when some part cannot run at ``output_stride`` (the error names ``key``); the
    model is left at the output stride it was built at."""
    built = model.output_stride
    try:
        model.set_output_stride(output_stride)
    except ValueError as err:
        raise ConfigError(f"{key}={output_stride}: the model built at output stride {built} cannot run "
                          f"there: {err}") from err
    finally:
        model.set_output_stride(built)


def load_model_weights(model: Segmentor, path: str) -> None:
    """Initialise ``model`` from a segexp-train checkpoint's weights (``model.init_from``), strictly.

    DeepLabv3 Sec. 4.3 ("Test set result"): the second training stage starts from the first stage's
    weights only -- the optimizer state, step counter and LR schedule start afresh. Every parameter and
    buffer of the Lightning module's ``model.`` entries must match ``model`` by name and shape.
    """
    weights = checkpoint_model_weights(path)
    own = model.state_dict()
    problems = state_dict_mismatches(own, weights)
    if problems:
        raise ConfigError(f"model.init_from={path}: the checkpoint's weights do not fit this model: {problems}")
    model.load_state_dict(weights, strict=True)


def read_checkpoint(path: str, key: str) -> dict[str, Any]:
    """A Lightning checkpoint (a dict with a ``state_dict``), read with ``weights_only=True``; every error
    names ``key=path`` and says the file is not a segexp checkpoint (``segexp-eval ckpt=``, ``model.init_from``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign, corrupt or truncated files
        raise ConfigError(
            f"{key}={path}: not a segexp checkpoint (a .ckpt written by segexp-train); torch cannot read it as "
            f"one ({type(err).__name__}): a truncated file, another format, or a pickle of arbitrary objects"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{key}={path}: not a Lightning checkpoint (no 'state_dict' entry), so not a segexp "
                          "checkpoint")
    return checkpoint


def checkpoint_model_weights(path: str) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries (prefix removed) of a Lightning checkpoint, read with ``weights_only=True``."""
    state = read_checkpoint(path, "model.init_from")["state_dict"]
    weights = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    if not weights:
        raise ConfigError(f"model.init_from={path}: the checkpoint's state_dict has no 'model.*' entries")
    return weights


def state_dict_mismatches(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> str:
    """Human-readable missing / unexpected / wrongly shaped keys ('' when ``loaded`` fits ``own``).

    BN's ``num_batches_tracked`` counter is ignored (a frozen-BN checkpoint has none).
    """
    def relevant(keys: set[str]) -> list[str]:
        return sorted(k for k in keys if not k.endswith("num_batches_tracked"))

    missing = relevant(set(own) - set(loaded))
    unexpected = relevant(set(loaded) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(loaded))
        if own[k].shape != loaded[k].shape
    ]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            parts.append(f"{title}: {shown}")
    return "; ".join(parts)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Torch's BN ``momentum`` is 1 - the TF "decay" (DeepLabv3's decay 0.9997 -> 0.0003)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def build_module(cfg: DictConfig, datamodule: SegmentationDataModule) -> SegmentationModule:
    options = model_options(cfg)
    return SegmentationModule(
        model=build_segmentor(cfg, datamodule.num_classes),
        loss=instantiate(cfg.loss),
        schedule=instantiate(cfg.schedule),
        class_names=datamodule.class_names,
        downsample_labels=options.downsample_labels,
        eval_output_stride=options.eval_output_stride,
        channels_last=options.channels_last,
        compile_model=options.compile,
        inference=instantiate(cfg.inference) if cfg.get("inference") else None,
        config=plain_config(cfg),
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what checkpoints and metrics.json store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
