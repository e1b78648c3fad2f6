"""Build the segmentor a config describes: backbone, head, optional auxiliary head, fusion, loss weights.

The config groups map one-to-one onto constructor calls (Hydra ``instantiate``): ``backbone``, ``head``,
``aux_head`` and ``fusion``. The values that depend on another part -- a head's input channels (from the
backbone's description of the features it reads), the number of classes, the backbone's output stride;
for a fusion that reads features (``in_keys``), their channels, the number of classes and the scales --
are passed here, never repeated in YAML. The ``model`` node (:class:`ModelOptions`) says how the parts
are put together and trained.

Each part built here must provide its contract (:mod:`segexp.models.contracts`): the backbone a
:class:`~segexp.models.contracts.Backbone`, the head and auxiliary head a :class:`~segexp.models.contracts.Head`,
the fusion a :class:`~segexp.models.contracts.Fusion`, and a head or fusion whose node names ``in_keys`` a
:class:`~segexp.models.contracts.ReadsFeatures`. A part that does not is refused with a ConfigError naming its
key, its ``_target_`` and the members it lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segexp.config import ConfigError
from segexp.models.backbones.frozen_bn import freeze_batchnorm
from segexp.models.contracts import (
    Backbone,
    ContractError,
    ExposesFeatures,
    Fusion,
    Head,
    ReadsFeatures,
    check_contract,
    contract_members,
    missing_members,
)
from segexp.models.segmentor import HEAD_FEATURES, Segmentor, exposes_features

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
    train_shift_passes: bool = False


BUILDER_KEYS = {"aux_head": ("loss_weight",), "block": ("units",)}
"""Keys of a component's node that the builder reads itself (not constructor arguments)."""


def model_options(cfg: DictConfig) -> ModelOptions:
    return ModelOptions(**OmegaConf.to_container(cfg.get("model") or {}, resolve=True))


def build_segmentor(cfg: DictConfig, num_classes: int,
                    init_weights: Mapping[str, torch.Tensor] | None = None) -> Segmentor:
    """Backbone from ``cfg.backbone``; head (and ``cfg.aux_head``) sized to it and built at its output stride
    (ASPP rates scaled, see :mod:`segexp.models.heads.aspp`); ``cfg.fusion`` for several ``model.scales``; the loss
    weight of every output. ``init_weights``: the weights of the ``model.init_from`` checkpoint, read by the caller
    (:func:`segexp.training.checkpoints.checkpoint_model_weights`), loaded strictly before BN is frozen; without
    them the model keeps its initial weights (what segexp-info and the size measurements need)."""
    options = model_options(cfg)
    backbone = build_backbone(with_blocks(cfg.backbone, cfg.get("block")))
    head = build_head(cfg.head, "head", backbone, num_classes)
    aux_head, aux_weight = None, 0.0
    if cfg.get("aux_head") is not None:
        aux_weight = aux_loss_weight(cfg.aux_head)
        aux_head = build_head(cfg.aux_head, "aux_head", backbone, num_classes)
    try:
        model = Segmentor(backbone, head, aux_head, align_corners=options.align_corners, scales=options.scales,
                          fusion=build_fusion(cfg, options.scales, backbone, head, num_classes),
                          head_loss_weight=options.head_loss_weight,
                          aux_loss_weight=aux_weight, scale_loss_weights=options.scale_loss_weights)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if options.eval_output_stride is not None:
        check_output_stride(model, options.eval_output_stride, "model.eval_output_stride")
    if init_weights is not None:
        load_model_weights(model, init_weights, str(options.init_from))
    if options.freeze_bn:
        freeze_batchnorm(model)
    if options.bn_momentum is not None:
        set_bn_momentum(model, options.bn_momentum)
    return model


def build_backbone(node: DictConfig) -> nn.Module:
    """The backbone; a ValueError of its constructor (a bad depth, unit name, stride) becomes a ConfigError, and
    so does a backbone that is not a :class:`~segexp.models.contracts.Backbone`."""
    try:
        backbone = instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise ConfigError(f"backbone: {err.__cause__}") from err
        raise
    require(backbone, Backbone, "backbone", node)
    return backbone


def require(part: object, contract: type, key: str, node: DictConfig) -> None:
    """A ConfigError naming config key ``key``, the node's ``_target_``, the contract and the members ``part``
    lacks, unless ``part`` provides ``contract``; a part whose node names ``in_keys`` must also keep them
    (:class:`~segexp.models.contracts.ReadsFeatures`), else the segmentor cannot tell what it reads."""
    contracts = (contract, ReadsFeatures) if node.get("in_keys") else (contract,)
    try:
        for each in contracts:
            check_contract(part, each, key)
    except ContractError as err:
        raise ConfigError(f"{key}._target_={node.get('_target_')}: {err}") from err


def with_blocks(backbone: DictConfig, block: DictConfig | None) -> DictConfig:
    """The backbone node with ``block`` (e.g. ``block=prb``: a unit wrapper's ``_target_`` and settings) added
    to ``backbone.unit_wrappers`` for each residual unit named in ``block.units`` (``[res5c, res4b22]``)."""
    if block is None:
        return backbone
    units = block.get("units")
    if not units or isinstance(units, str):
        raise ConfigError(f"block.units={units!r}: name the residual units the block replaces, e.g. "
                          "block.units=[res5c] (torchvision layer4.2 or Caffe res5c / res4b22 names)")
    if "unit_wrappers" not in backbone:
        raise ConfigError(f"block.units={list(units)}: backbone {backbone.get('_target_')} has no residual units "
                          "to wrap (no unit_wrappers option); use a ResNet backbone")
    wrapper = {k: v for k, v in OmegaConf.to_container(block, resolve=True).items() if k != "units"}
    wrapper["_partial_"] = True
    params = OmegaConf.to_container(backbone, resolve=True)
    existing = dict(params.get("unit_wrappers") or {})
    both = [str(u) for u in units if str(u) in existing]
    if both:
        raise ConfigError(f"block.units: {both} also in backbone.unit_wrappers; a unit takes one wrapper")
    params["unit_wrappers"] = {**existing, **{str(u): wrapper for u in units}}
    return OmegaConf.create(params)


def build_head(node: DictConfig, key: str, backbone: nn.Module, num_classes: int) -> nn.Module:
    """The head at config key ``key``: input channels from the backbone's description of the features it reads
    (``in_keys``), the number of classes and the backbone's output stride are passed, never written in YAML;
    the keys the builder reads itself (:data:`BUILDER_KEYS`) are left out."""
    output_stride = int(backbone.output_stride)
    if BUILDER_KEYS.get(key):
        params = OmegaConf.to_container(node, resolve=True)
        node = OmegaConf.create({k: v for k, v in params.items() if k not in BUILDER_KEYS[key]})
    try:
        head = instantiate(node, in_channels=input_channels(backbone, node.get("in_keys"), key),
                           num_classes=num_classes, output_stride=output_stride)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{key} at backbone.output_stride={output_stride}: {err}") from err
    require(head, Head, key, node)
    return head


def aux_loss_weight(node: DictConfig) -> float:
    """``aux_head.loss_weight``: a number >= 0 (the auxiliary output's weight in the training loss)."""
    weight = node.get("loss_weight", None)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ConfigError(f"aux_head.loss_weight={weight!r}: give the auxiliary loss's weight, a number >= 0 "
                          "(e.g. 0.4)")
    return float(weight)


def build_fusion(
    cfg: DictConfig, scales: Sequence[float], backbone: nn.Module, head: nn.Module, num_classes: int
) -> nn.Module | None:
    """``cfg.fusion`` when the model runs several input scales. With one scale there is nothing to fuse: a
    fusion chosen anyway (e.g. in a table's base, with a row setting ``model.scales=[1.0]``) is not built, so
    that no unused parameters reach the optimizer or DDP.

    A fusion that reads features (``fusion.in_keys``: backbone feature names and ``"head"`` for the head's
    penultimate features) gets ``in_channels`` (a list in ``in_keys`` order), ``num_classes``, ``scales`` and
    the backbone's ``output_stride``."""
    if cfg.get("fusion") is None:
        return None
    if len(scales) < 2:
        log.info("fusion=%s unused: model.scales=%s has one scale", cfg.fusion.get("_target_"), list(scales))
        return None
    in_keys = cfg.fusion.get("in_keys")
    if not in_keys:
        fusion = instantiate(cfg.fusion)
        require(fusion, Fusion, "fusion", cfg.fusion)
        return fusion
    channels = input_channels(backbone, in_keys, "fusion", head=head)
    try:
        fusion = instantiate(cfg.fusion, in_channels=channels if isinstance(channels, list) else [channels],
                             num_classes=num_classes, scales=list(scales), output_stride=int(backbone.output_stride))
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError):
            raise ConfigError(f"fusion: {err.__cause__}") from err
        raise
    require(fusion, Fusion, "fusion", cfg.fusion)
    return fusion


def input_channels(
    backbone: nn.Module, in_keys: Sequence[str] | None, key: str = "head", head: nn.Module | None = None
) -> int | list[int]:
    """Input channels of a part (a head, or with ``head`` given a fusion) from the description of the features
    it reads: the backbone's ``feature_channels``, and ``"head"`` for the head's penultimate features. An int
    for one key (default ``"out"``), else a list in ``in_keys`` order. Unknown names fail with the list of
    the features there are."""
    keys = list(in_keys) if in_keys else ["out"]
    known = dict(backbone.feature_channels)
    if head is not None:
        if HEAD_FEATURES in keys and not exposes_features(head):
            raise ConfigError(f"{key}.in_keys={keys}: '{HEAD_FEATURES}' reads the head's penultimate features, but "
                              f"{type(head).__name__} does not expose them: it lacks "
                              f"{', '.join(missing_members(head, ExposesFeatures))} (a head that "
                              f"{ExposesFeatures.__name__} provides {', '.join(contract_members(ExposesFeatures))})")
        if exposes_features(head):
            known[HEAD_FEATURES] = int(head.feature_channels)
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


def load_model_weights(model: Segmentor, weights: Mapping[str, torch.Tensor], path: str) -> None:
    """Initialise ``model`` from a segexp-train checkpoint's weights (``model.init_from``), strictly.

    DeepLabv3 Sec. 4.3 ("Test set result"): the second training stage starts from the first stage's
    weights only -- the optimizer state, step counter and LR schedule start afresh. Every parameter and
    buffer of the Lightning module's ``model.`` entries must match ``model`` by name and shape.
    """
    own = model.state_dict()
    problems = state_dict_mismatches(own, weights)
    if problems:
        raise ConfigError(f"model.init_from={path}: the checkpoint's weights do not fit this model: {problems}")
    model.load_state_dict(weights, strict=True)


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
