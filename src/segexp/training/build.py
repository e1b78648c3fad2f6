"""Turn a composed config into the objects of a run: data module and Lightning module (with its segmentor).

``dataset`` (+ the ``data`` loader settings) builds the data module; the segmentor comes from
:func:`segexp.models.build.build_segmentor`; ``loss``, ``schedule`` and ``inference`` are instantiated as
they are. :func:`validate` checks the whole config against the typed constructors first.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segexp.data.datamodule import SegmentationDataModule
from segexp.models.build import BUILDER_KEYS, ModelOptions, build_segmentor, model_options
from segexp.models.segmentor import Segmentor
from segexp.models.shifted_passes import check_shift_passes
from segexp.targets import TargetOrigin
from segexp.training.checkpoints import checkpoint_model_weights
from segexp.training.module import SegmentationModule
from segexp.validation import config_top_level_keys, validate_config

NODE_SCHEMAS = {"data": SegmentationDataModule, "model": ModelOptions}
"""Top-level nodes without a ``_target_`` and the callable each one feeds (their keys are its parameters)."""


def validate(cfg: DictConfig, origin: TargetOrigin | None = None) -> None:
    """Fail before training on unknown keys, wrongly typed values or ``_target_`` values outside the allowed
    packages (see :mod:`segexp.config`; ``origin``: where a refused target came from, by default the override or
    file of the last Hydra composition)."""
    validate_config(cfg, NODE_SCHEMAS, builder_keys=BUILDER_KEYS,
                    origin=origin, top_level_keys=config_top_level_keys("train"))


def build_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    dataset = instantiate(cfg.dataset, _partial_=True)
    data = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    return SegmentationDataModule(dataset=dataset, seed=int(cfg.get("seed", 0)), **data)


def build_model(cfg: DictConfig, num_classes: int) -> Segmentor:
    """The segmentor of ``cfg``, started from the ``model.init_from`` checkpoint's weights when it names one."""
    init_from = model_options(cfg).init_from
    init_weights = checkpoint_model_weights(init_from) if init_from is not None else None
    return build_segmentor(cfg, num_classes, init_weights)


def build_module(cfg: DictConfig, datamodule: SegmentationDataModule) -> SegmentationModule:
    options = model_options(cfg)
    model = build_model(cfg, datamodule.num_classes)
    # The predictor resizes scores as the model does (model.align_corners): one setting for both.
    inference = instantiate(cfg.inference, align_corners=options.align_corners) if cfg.get("inference") else None
    if options.train_shift_passes:
        check_shift_passes(model, "model.train_shift_passes=true")
    if inference is not None and inference.shift_passes > 1:
        check_shift_passes(model, f"inference.shift_passes={inference.shift_passes}")
    return SegmentationModule(
        model=model,
        loss=instantiate(cfg.loss),
        schedule=instantiate(cfg.schedule),
        class_names=datamodule.class_names,
        downsample_labels=options.downsample_labels,
        eval_output_stride=options.eval_output_stride,
        channels_last=options.channels_last,
        compile_model=options.compile,
        train_shift_passes=options.train_shift_passes,
        inference=inference,
        config=plain_config(cfg),
    )


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what checkpoints and metrics.json store)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
