"""The OmegaConf resolvers conf/ uses, and their registration.

``${wandb_mode:}`` and ``${gpu_mixed_precision:}`` are answered here, from the environment (a wandb API key, the
GPU). ``${repo_root:}`` and ``${default_data_dir:}`` are answers about where segexp runs from, so they live with
those paths in :mod:`segexp.config`, which registers all of them through :func:`register_resolvers` when it is
imported, before any config is composed. This module imports nothing of segexp (it sits below
:mod:`segexp.config`).
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Callable, Mapping

from omegaconf import OmegaConf


def wandb_mode() -> str:
    """``WANDB_MODE`` when set, else ``online`` if an API key is configured, else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (FileNotFoundError, netrc.NetrcParseError):
        return "offline"


def gpu_mixed_precision() -> str:
    """Lightning precision for GPU training: ``bf16-mixed`` where the GPU supports bfloat16 (Ampere and
    later), else ``16-mixed`` (float16 with a gradient scaler). Without CUDA (planning a run on a login
    node) the answer is ``bf16-mixed``, so config hashes agree with those of current GPUs."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "16-mixed"
    return "bf16-mixed"


ENVIRONMENT_RESOLVERS: dict[str, Callable[[], str]] = {
    "wandb_mode": wandb_mode, "gpu_mixed_precision": gpu_mixed_precision,
}
"""The resolvers answered from the environment: name in conf/ -> function."""


def register_resolvers(location_resolvers: Mapping[str, Callable[[], str]]) -> None:
    """Register :data:`ENVIRONMENT_RESOLVERS` and ``location_resolvers`` (name -> function; those of
    :mod:`segexp.config`) with OmegaConf; a name that is already registered keeps its function."""
    for name, resolver in {**location_resolvers, **ENVIRONMENT_RESOLVERS}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
