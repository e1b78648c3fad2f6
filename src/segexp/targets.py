"""Which code a config may name: the ``_target_`` allowlist and ``--trust-targets``.

A config names code by its ``_target_`` (Hydra imports the module and calls the callable), so a config file,
experiment or table spec written by someone else could otherwise run any Python function. Only classes of
:data:`TRUSTED_TARGET_PREFIXES` may be named (minus :data:`REFUSED_TARGET_PREFIXES`), checked by name before
anything is imported (:func:`check_target_allowed`, :func:`load_target`), unless the user trusts the config
(``--trust-targets``, i.e. ``SEGEXP_TRUST_TARGETS=1``, see :func:`targets_trusted`). Refusals name the key, the
value and where it came from (:func:`target_origin`: the override or the config file).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from segexp.config import CONF_DIR, REPO_ROOT, SOURCE_CHECKOUT, ConfigError


class UntrustedTargetError(ConfigError):
    """A ``_target_`` (or another name of code Hydra imports) outside what configs may name without
    ``--trust-targets``; the message names the key, the value and, where known, the file or override it came from."""


TRUSTED_TARGET_PREFIXES = ("segexp", "torch", "torchvision", "pytorch_lightning", "lightning", "albumentations")
"""Packages whose classes a config may name as ``_target_`` without ``--trust-targets``: a dotted path matches when
its leading components are one of these (``torch.nn.Identity`` does, ``torchx.foo`` and ``segexpevil.x`` do not)."""
REFUSED_TARGET_PREFIXES = (
    "torch.hub", "torch.load", "torch.serialization", "torch.jit", "torch.package", "torch.utils.cpp_extension",
    "torch.ops", "torch.classes", "torch.distributed.run", "torch.distributed.launch", "torch.distributed.launcher",
    "torch.distributed.elastic", "pytorch_lightning.cli", "lightning.pytorch.cli", "lightning.fabric.cli",
)
"""Parts of the trusted packages that load or run code from elsewhere (hub repositories, pickles, TorchScript,
compiled extensions, shared libraries, launched commands, a nested CLI that imports its own class paths): refused
even though their package is trusted."""
HYDRA_TARGET_PREFIXES = ("hydra._internal.core_plugins", "hydra_plugins")
"""Also allowed under ``hydra.*``: Hydra's own launchers and sweepers and installed Hydra plugins
(``hydra/launcher=submitit_slurm``)."""
LOGGING_TARGET_PREFIXES = ("logging", "colorlog", "sys")
"""Also allowed in Hydra's logging configs (``hydra.job_logging``, ``hydra.hydra_logging``): the ``class`` / ``()``
entries and ``ext://`` values that :func:`logging.config.dictConfig` imports."""
TRUST_TARGETS_ENV = "SEGEXP_TRUST_TARGETS"
"""Set to 1 (what ``--trust-targets`` does) to lift the target checks; processes started from this one inherit it."""
TRUST_TARGETS_FLAG = "--trust-targets"
LOGGING_NODES = ("hydra.job_logging", "hydra.hydra_logging")


def targets_trusted() -> bool:
    """True when the user trusts the configs: ``SEGEXP_TRUST_TARGETS`` set to anything but empty, 0, false or no."""
    return os.environ.get(TRUST_TARGETS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def trust_targets() -> None:
    """Lift the target checks for this process and every process it starts (``--trust-targets``)."""
    os.environ[TRUST_TARGETS_ENV] = "1"


def take_trust_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--trust-targets``; when it was given, :func:`trust_targets`."""
    if TRUST_TARGETS_FLAG in argv:
        trust_targets()
    return [arg for arg in argv if arg != TRUST_TARGETS_FLAG]


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _allowed_prefixes(key: str) -> tuple[str, ...]:
    if key == "hydra" or key.startswith("hydra."):
        return (*TRUSTED_TARGET_PREFIXES, *HYDRA_TARGET_PREFIXES)
    return TRUSTED_TARGET_PREFIXES


def target_refusal(target: str, key: str) -> str | None:
    """Why the ``_target_`` ``target`` of the node at ``key`` may not be imported (None when it may); a check on the
    name alone, so nothing is imported to answer. Ignores :func:`targets_trusted`."""
    allowed = _allowed_prefixes(key)
    if not _under(target, allowed):
        return f"not in the allowed packages ({', '.join(allowed)})"
    refused = next((p for p in REFUSED_TARGET_PREFIXES if _under(target, (p,))), None)
    if refused is not None:
        return f"{refused} loads or runs code from outside the config, which a config may not name"
    return None


def _untrusted(key: str, value: Any, why: str, source: str | None, field: str = "_target_") -> UntrustedTargetError:
    named = f"{key}.{field}" if key else field
    origin = f"; from {source}" if source else ""
    return UntrustedTargetError(f"{named}={value}: {why}{origin}; run with {TRUST_TARGETS_FLAG} to allow it")


def check_target_allowed(target: str, key: str, source: str | None = None) -> None:
    """Raise :class:`UntrustedTargetError` when the ``_target_`` of the node at ``key`` names code outside
    :data:`TRUSTED_TARGET_PREFIXES` (or in :data:`REFUSED_TARGET_PREFIXES`), unless :func:`targets_trusted`.
    Checks the name only: call it before importing ``target``. ``source``: the file or override the value came
    from, when known."""
    if targets_trusted():
        return
    why = target_refusal(str(target), key)
    if why is not None:
        raise _untrusted(key, target, why, source)


def object_refusal(obj: Any, key: str) -> str | None:
    """Why an imported, allowed ``_target_`` may still not be called (None when it may): it must be a class, since
    a function of a trusted package can do anything with its arguments (``segexp.atomic.write_text`` writes any
    file). Ignores :func:`targets_trusted`."""
    if inspect.isclass(obj):
        return None
    return (f"a {type(obj).__name__}, not a class; a config may only name classes of the allowed packages "
            f"({', '.join(_allowed_prefixes(key))})")


TargetOrigin = Callable[[str, str], "str | None"]
"""``origin(key, target)``: where the ``_target_`` of the node at ``key`` came from (an override, a file), or None."""


def load_target(target: str, key: str, origin: TargetOrigin | None = None) -> Any:
    """The object the ``_target_`` of the node at ``key`` names, imported only once :func:`target_refusal` has
    nothing against the name, then checked with :func:`object_refusal` (both skipped when :func:`targets_trusted`).
    Raises :class:`UntrustedTargetError` (naming where the value came from when ``origin`` knows) or
    :class:`ConfigError` when the target cannot be imported."""
    trusted = targets_trusted()
    if not trusted and (why := target_refusal(target, key)) is not None:
        raise _untrusted(key, target, why, origin(key, target) if origin else None)
    try:
        obj = get_object(target)
    except Exception as err:  # hydra raises several types here
        raise ConfigError(f"{key}._target_: cannot import '{target}': {err}") from err
    if not trusted and (why := object_refusal(obj, key)) is not None:
        raise _untrusted(key, target, why, origin(key, target) if origin else None)
    return obj


def check_config_targets(cfg: DictConfig, origin: TargetOrigin | None = None) -> None:
    """Refuse (:class:`UntrustedTargetError`) a composed config, ``hydra`` node included, that names code it may
    not: every ``_target_`` (allowed packages, then classes only; only allowed modules are imported, and one that
    fails to import is left to :func:`validate_config`), and the ``class`` / ``()`` / ``ext://`` entries of Hydra's
    logging configs, which Hydra hands to :func:`logging.config.dictConfig` before the job starts. Does nothing
    when :func:`targets_trusted`."""
    if targets_trusted():
        return
    for prefix, node in target_nodes(cfg):
        try:
            load_target(str(node["_target_"]), prefix, origin)
        except UntrustedTargetError:
            raise
        except ConfigError:  # an import error is validate_config's to report
            continue
    for key in LOGGING_NODES:
        node = OmegaConf.select(cfg, key, default=None)
        if isinstance(node, DictConfig):
            _check_logging_config(node, key)


def _check_logging_config(node: Any, prefix: str) -> None:
    allowed = (*LOGGING_TARGET_PREFIXES, *TRUSTED_TARGET_PREFIXES)
    why = f"not in the packages a logging config may name ({', '.join(allowed)})"
    if isinstance(node, (DictConfig, ListConfig)) and (node._is_none() or node._is_missing()
                                                       or node._is_interpolation()):
        return
    if isinstance(node, DictConfig):
        for key in node:
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                _check_logging_config(child, f"{prefix}.{key}")
                continue
            value = child._value()
            if str(key) in ("class", "()") and not _under(str(value), allowed):
                raise _untrusted(prefix, value, why, None, field=str(key))
            if isinstance(value, str) and value.startswith("ext://") and not _under(value[6:], allowed):
                raise _untrusted(prefix, value, why, None, field=str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _check_logging_config(node._get_node(i), f"{prefix}[{i}]")


def check_override_targets(override: str, source: str | None = None) -> None:
    """Refuse (:class:`UntrustedTargetError`) one override (``key=value``, a sweep ``key=a,b`` too) that names code:
    a key ending in ``_target_`` whose value (every value of a sweep) :func:`target_refusal` refuses, or a node
    value (``fusion={_target_: ...}``) holding such a ``_target_``. Names only are checked: nothing is imported. An
    override Hydra cannot parse is left to Hydra. Does nothing when :func:`targets_trusted`."""
    if targets_trusted():
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
        values = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
    except Exception:  # noqa: BLE001 -- Hydra reports what it cannot parse (and globs need its config loader)
        return
    key = parsed.key_or_group
    for value in values:
        for node_key, target in _targets_in_value(key, value):
            if (why := target_refusal(target, node_key)) is not None:
                raise _untrusted(node_key, target, why, source)


def _targets_in_value(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """(node key, target) of every ``_target_`` an override of ``key`` to ``value`` sets."""
    if key == "_target_" or key.endswith("._target_"):
        if value is not None:
            yield key.removesuffix("_target_").rstrip("."), str(value)
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _targets_in_value(f"{key}.{name}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _targets_in_value(f"{key}[{i}]", item)


def hydra_target_origin() -> TargetOrigin | None:
    """:func:`target_origin` for the config Hydra composed last (a run's, or :func:`compose_config`'s), or None
    when none was."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    overrides = [*hydra.overrides.hydra, *hydra.overrides.task]
    config_name = hydra.job.config_name
    return lambda key, target: target_origin(key, target, overrides, config_name)


def target_origin(key: str, target: str, overrides: Sequence[str], config_name: str) -> str | None:
    """Where the ``_target_`` ``target`` of the node at ``key`` in the config composed from ``config_name`` and
    ``overrides`` came from: the override that set it (``the override 'fusion._target_=x'``), else the config file
    that did (``conf/experiment/foo.yaml``), else an override that set the whole node; None when unknown."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    target_key = f"{key}._target_" if key else "_target_"
    parsed = []
    for text in overrides:
        try:
            override = OverridesParser.create().parse_override(text)
        except Exception:  # noqa: BLE001 -- not an override Hydra composed
            continue
        parsed.append((text, override.key_or_group, None if override.is_sweep_override() else override.value()))
    for text, name, value in reversed(parsed):
        if name == target_key and str(value) == target:
            return f"the override '{text}'"
    if (path := _config_file_setting(target_key, target, overrides, config_name)) is not None:
        return path
    for text, name, value in reversed(parsed):
        if target_key.startswith(name + ".") and isinstance(value, dict):
            return f"the override '{text}'"
    return None


def _config_file_setting(key: str, value: str, overrides: Sequence[str], config_name: str) -> str | None:
    """The last config file of the defaults list of ``config_name`` + ``overrides`` that sets ``key`` to ``value``
    (Hydra's defaults list, as Hydra composes it; None when it cannot be worked out)."""
    try:
        from hydra._internal.defaults_list import create_defaults_list
        from hydra.core.global_hydra import GlobalHydra

        with ExitStack() as stack:
            if not GlobalHydra.instance().is_initialized():
                stack.enter_context(initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"))
            loader = GlobalHydra.instance().config_loader()
            parsed, repo = loader._parse_overrides_and_create_caching_repo(config_name, list(overrides))
            defaults = create_defaults_list(repo=repo, config_name=config_name, overrides_list=parsed,
                                            prepend_hydra=True, skip_missing=True).defaults
            for default in reversed(defaults):
                loaded = loader._load_single_config(default, repo)
                if OmegaConf.select(loaded.config, key, default=None, throw_on_resolution_failure=False) == value:
                    return _config_file_name(str(loaded.path), str(default.config_path))
    except Exception:  # noqa: BLE001 -- Hydra internals: naming the file is a courtesy, the refusal stands anyway
        return None
    return None


def _config_file_name(source: str, config_path: str) -> str:
    if not source.startswith("file://"):
        return f"{source}/{config_path}"
    path = Path(source.removeprefix("file://")) / f"{config_path}.yaml"
    try:
        return str(path.resolve().relative_to(REPO_ROOT)) if SOURCE_CHECKOUT else str(path)
    except ValueError:
        return str(path)


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
