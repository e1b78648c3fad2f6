"""Read segexp-train checkpoints: the one reader (``weights_only=True``) and the model-weight checks.

Every error names the config key the path came from (``ckpt``, ``model.init_from``, ``ckpt_path``) and says
why the file is not a usable segexp checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segexp.config import ConfigError


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


MOVED_MODULES = {
    "segexp.backbones.": "segexp.models.backbones.", "segexp.heads.": "segexp.models.heads.",
    "segexp.losses.": "segexp.models.losses.", "segexp.datasets.": "segexp.data.datasets.",
    "segexp.schedules.": "segexp.training.schedules.", "segexp.inference.": "segexp.training.inference.",
}
"""``_target_`` prefixes of checkpoints written before the package was grouped into models/data/training."""

OLD_AUX_KEYS = ("aux_weight", "aux_channels", "aux_dropout")
"""``model.*`` keys of checkpoints written before the ``aux_head`` group existed."""


def upgrade_stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored config in today's form: ``_target_`` paths of moved modules are renamed, and the
    old ``model.aux_weight/aux_channels/aux_dropout`` flags become the ``aux_head`` node they meant (an FCN
    head on layer3; none when the weight was 0)."""
    upgraded = _renamed_targets(stored)
    model = dict(upgraded.get("model") or {})
    if not any(key in model for key in OLD_AUX_KEYS):
        return upgraded
    weight = float(model.pop("aux_weight", 0.0) or 0.0)
    channels, dropout = model.pop("aux_channels", 256), model.pop("aux_dropout", 0.1)
    upgraded = {**upgraded, "model": model}
    if weight > 0:
        upgraded["aux_head"] = {"_target_": "segexp.models.heads.fcn.FCNHead", "channels": channels,
                                "dropout": dropout, "in_keys": ["layer3"], "loss_weight": weight}
    return upgraded


def _renamed_targets(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _renamed_target(value) if key == "_target_" else _renamed_targets(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_renamed_targets(item) for item in node]
    return node


def _renamed_target(target: Any) -> Any:
    for old, new in MOVED_MODULES.items():
        if isinstance(target, str) and target.startswith(old):
            return new + target.removeprefix(old)
    return target
