"""Config composition: where segexp and its conf/ are, the resolvers answered from those paths
(``${repo_root:}``, ``${default_data_dir:}``), composing a config outside a Hydra run, and :class:`ConfigError`.
Every resolver conf/ uses is registered on import (:mod:`segexp.resolvers`, which also answers those from the
environment), so a composition always finds them. Checking a composed config against the components' signatures
is :mod:`segexp.validation`; the allowed ``_target_`` packages are :mod:`segexp.targets`.
"""

from __future__ import annotations

import importlib.resources as resources
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from segexp.resolvers import register_resolvers

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


register_resolvers({"repo_root": repo_root, "default_data_dir": default_data_dir})


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
