"""The one config validator: every config node with a ``_target_`` (and the ``data`` and ``model`` nodes, checked
against the data module and :class:`segexp.models.build.ModelOptions`) may only hold keys that are parameters of
that callable, each value must match the parameter's annotation, and the top level may only hold the keys the
primary config and its groups define. A misspelt key or a wrong type therefore fails before any data is read,
with the full config key and the closest valid key in the message (:func:`unknown_key_message`, also used by the
command-line precheck and the table specs).

Targets are checked against the allowed packages before anything is imported (:mod:`segexp.targets`).
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from segexp.config import CONF_DIR, ConfigError
from segexp.targets import TargetOrigin, hydra_target_origin, load_target, target_nodes


def closest_key(name: str, valid: Sequence[str]) -> str | None:
    """The valid key closest to a misspelt ``name`` (difflib's ratio), or None when none is close: the one "did you
    mean" of config keys, command-line overrides and table specs."""
    close = difflib.get_close_matches(name, [str(v) for v in valid if str(v) != name], n=1)
    return close[0] if close else None


def did_you_mean(name: str, valid: Sequence[str], prefix: str = "") -> str:
    """`` Did you mean '<prefix>.<closest>'?`` (:func:`closest_key`), or "" when no valid key is close."""
    close = closest_key(name, valid)
    return f" Did you mean '{prefix + '.' if prefix else ''}{close}'?" if close else ""


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
    for key, target in schemas.items():
        node = cfg.get(key)
        if node is not None:
            _check_node(node, target, key, skip_keys=())
    origin = origin or hydra_target_origin()
    for prefix, node in target_nodes(cfg):
        target = load_target(str(node["_target_"]), prefix, origin)
        _check_node(node, target, prefix, skip_keys=(builder_keys or {}).get(prefix, ()))
    if top_level_keys is not None:  # after the targets: a refused target is named as such wherever it sits
        _check_top_level_keys(cfg, top_level_keys)


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
            raise ConfigError(f"Unknown top-level config key '{key}': nothing reads it.{did_you_mean(key, known)} "
                              f"Valid keys: {', '.join(known)}")


def declared_defaults(target: Callable[..., Any]) -> dict[str, Any]:
    """The keyword parameters of ``target`` (a class's constructor) that have a default, with it: what a config
    node of that target means when it leaves the key out."""
    params, _, _ = _signature_params(target)
    return {name: p.default for name, p in params.items()
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}


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
            raise ConfigError(
                f"Unknown config key '{full_key}': {name} has no parameter '{key}'.{did_you_mean(key, list(params))} "
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
