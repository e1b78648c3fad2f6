"""Config composition: the conf/ location, the resolvers the YAML files use, composing a config outside a Hydra
run, and :class:`ConfigError`. Checking a composed config against the components' signatures is
:mod:`segexp.validation`; the allowed ``_target_`` packages are :mod:`segexp.targets`.
"""

from __future__ import annotations

import importlib.resources as resources
import netrc
import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
"""The source checkout holding ``src/segexp``; meaningful only where :data:`SOURCE_CHECKOUT` holds."""
SOURCE_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "conf" / "train.yaml").is_file()
"""True when segexp runs from a source checkout (editable install, ``PYTHONPATH=src``), False when it runs from
an installed wheel (``pip install .``)."""


def packaged_conf_dir() -> Path:
    """The copy of the repository's conf/ built into the wheel as ``segexp/conf`` (see pyproject.toml)."""
    return Path(str(resources.files("segexp").joinpath("conf")))


CONF_DIR = REPO_ROOT / "conf" if SOURCE_CHECKOUT else packaged_conf_dir()
"""The config tree: the checkout's ``conf/`` (edits take effect at once), else the packaged copy."""


class ConfigError(ValueError):
    """A config key or value that cannot work, named by its full dotted key."""


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


def default_data_dir() -> str:
    """``data_dir`` when ``SEGEXP_DATA_DIR`` is not set: ``../shared/data`` beside a source checkout, else
    ``data`` in the current directory (an installed copy has no repository to be beside)."""
    return f"{REPO_ROOT}/../shared/data" if SOURCE_CHECKOUT else str(Path.cwd() / "data")


def repo_root() -> str:
    """``${repo_root:}``: the source checkout's root; an installed copy has none, which is an error to use."""
    if not SOURCE_CHECKOUT:
        raise ConfigError("${repo_root:} is only defined in a source checkout of segexp (this one is installed "
                          f"at {PACKAGE_DIR}); use ${{data_dir}} or an absolute path")
    return str(REPO_ROOT)


def register_resolvers() -> None:
    """Resolvers used by conf/: ``${default_data_dir:}``, ``${wandb_mode:}`` and ``${gpu_mixed_precision:}``
    (and ``${repo_root:}`` for configs of a source checkout)."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", repo_root)
    if not OmegaConf.has_resolver("default_data_dir"):
        OmegaConf.register_new_resolver("default_data_dir", default_data_dir)
    if not OmegaConf.has_resolver("wandb_mode"):
        OmegaConf.register_new_resolver("wandb_mode", wandb_mode)
    if not OmegaConf.has_resolver("gpu_mixed_precision"):
        OmegaConf.register_new_resolver("gpu_mixed_precision", gpu_mixed_precision)


register_resolvers()


def compose_config(overrides: Sequence[str], config_name: str = "train", with_hydra: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, as segexp-train would (``with_hydra``: keep the
    ``hydra`` node, which Hydra reads itself: callbacks, launcher, sweeper, logging)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if not with_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
