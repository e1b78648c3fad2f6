"""Config composition: the conf/ location, resolvers, composing a config outside a Hydra run, start-up validation.

Validation treats each component's typed constructor as its schema: every config node with a
``_target_`` (and the ``data`` and ``model`` nodes, checked against the data module and
:class:`segexp.models.build.ModelOptions`) may only hold keys that are parameters of that callable,
and each value must match the parameter's annotation. A misspelt key or a wrong type therefore
fails before any data is read, with the full config key in the message.

Targets are checked against the allowed packages before anything is imported (:mod:`segexp.targets`).
"""

from __future__ import annotations

import difflib
import importlib.resources as resources
import inspect
import netrc
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

if TYPE_CHECKING:
    from segexp.targets import TargetOrigin

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


def validate_config(
    cfg: DictConfig,
    schemas: Mapping[str, Callable[..., Any]],
    builder_keys: Mapping[str, Sequence[str]] | None = None,
    origin: TargetOrigin | None = None,
    top_level_keys: Sequence[str] | None = None,
) -> None:
    """Check every ``_target_`` node, and each node named in ``schemas``, against a signature.

    ``schemas`` maps a top-level key (e.g. ``"data"``) to the callable whose keyword parameters
    that node feeds; ``builder_keys`` maps a node's key (e.g. ``"aux_head"``) to keys of it that the
    builder reads itself, so they are not constructor parameters (e.g. ``loss_weight``). Raises
    :class:`ConfigError` naming the first offending key. Each ``_target_`` is checked against the allowed
    packages before it is imported (:func:`segexp.targets.load_target`); ``origin`` says where a refused one came
    from (by default the override or config file of the current Hydra composition).
    """
    from segexp.targets import hydra_target_origin, load_target  # it builds on this module

    if top_level_keys is not None:
        _check_top_level_keys(cfg, top_level_keys)
    for key, target in schemas.items():
        node = cfg.get(key)
        if node is not None:
            _check_node(node, target, key, skip_keys=())
    origin = origin or hydra_target_origin()
    for prefix, node in target_nodes(cfg):
        target = load_target(str(node["_target_"]), prefix, origin)
        _check_node(node, target, prefix, skip_keys=(builder_keys or {}).get(prefix, ()))


def config_top_level_keys(config_name: str) -> tuple[str, ...]:
    """The top-level keys a composition of ``conf/<config_name>.yaml`` may hold: the primary file's own keys and
    the config groups of conf/ (``fusion``, ``block``, ... exist only when chosen), plus ``hydra``."""
    primary = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    groups = (path.name for path in CONF_DIR.iterdir() if path.is_dir())
    return tuple(sorted({str(key) for key in primary if key != "defaults"} | set(groups) | {"hydra"}))


def _check_top_level_keys(cfg: DictConfig, known: Sequence[str]) -> None:
    """Refuse a top-level key no config file or group defines (``+seeds=3``): Hydra's ``+`` accepts any new key,
    and nothing would read it."""
    for key in (str(k) for k in cfg):
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown top-level config key '{key}': nothing reads it.{hint} "
                              f"Valid keys: {', '.join(known)}")


def target_nodes(node: Any, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every node with a ``_target_`` under ``node`` (itself included), with its dotted key, parents first. A value
    that is an interpolation is resolved and searched too when it resolves to a node (``${oc.create:{...}}``):
    instantiating would build what it holds; one that cannot be resolved here (``${hydra:...}`` outside a run) is
    passed over."""
    if isinstance(node, (DictConfig, ListConfig)) and (node._is_none() or node._is_missing()
                                                       or node._is_interpolation()):
        return
    if isinstance(node, DictConfig):
        if "_target_" in node and node.get("_target_") is not None:
            yield prefix, node
        children: Iterator[tuple[Any, str]] = ((key, f"{prefix}.{key}" if prefix else str(key)) for key in node)
    elif isinstance(node, ListConfig):
        children = ((i, f"{prefix}[{i}]") for i in range(len(node)))
    else:
        return
    for key, child_key in children:
        child = node._get_node(key)
        if child is not None and not isinstance(child, (DictConfig, ListConfig)) and child._is_interpolation():
            try:
                child = node[key]
            except Exception:  # noqa: BLE001 -- only resolvable inside a Hydra run
                continue
        if isinstance(child, (DictConfig, ListConfig)):
            yield from target_nodes(child, child_key)


def _signature_params(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool, dict]:
    fn = target.__init__ if inspect.isclass(target) else target
    params = dict(inspect.signature(fn).parameters)
    params.pop("self", None)
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations in third-party code: check keys only
        hints = {}
    return params, open_kwargs, hints


def _check_node(node: DictConfig, target: Callable[..., Any], prefix: str, skip_keys: Sequence[str]) -> None:
    params, open_kwargs, hints = _signature_params(target)
    name = getattr(target, "__qualname__", str(target))
    for key in node:
        key = str(key)
        if (key.startswith("_") and key.endswith("_")) or key in skip_keys:
            continue
        full_key = f"{prefix}.{key}" if prefix else key
        if key not in params:
            if open_kwargs:
                continue
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown config key '{full_key}': {name} has no parameter '{key}'.{hint} "
                f"Valid keys: {', '.join(sorted(p for p in params if p not in ('args', 'kwargs')))}"
            )
        if key in hints:
            _check_value(node, key, hints[key], full_key)


def _check_value(node: DictConfig, key: str, annotation: Any, full_key: str) -> None:
    if OmegaConf.is_missing(node, key):
        return
    try:
        value = node[key]
    except Exception:  # an interpolation only resolvable inside a Hydra run (e.g. ${hydra:...})
        return
    if isinstance(value, DictConfig) and "_target_" in value:
        return  # a nested component, checked against its own target
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if not _matches(value, annotation):
        raise ConfigError(
            f"Config value {full_key}={value!r} has the wrong type: expected {_describe(annotation)}, "
            f"got {type(value).__name__}"
        )


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        elem = args[0] if args else Any
        return all(_matches(v, elem) for v in value)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, dict)
    return True  # classes, callables, protocols: not checkable from config values


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


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
