"""Command-line checks run before Hydra: a misspelt key gets a "did you mean" answer and exit status 2, and a config
naming code outside the allowed packages (see :mod:`segexp.config`) is refused before anything of it is imported."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segexp.config import CONF_DIR, ConfigError, compose_config
from segexp.data.datasets.base import DatasetError
from segexp.overrides import override_key
from segexp.targets import (
    TRUST_TARGETS_FLAG,
    UntrustedTargetError,
    check_config_targets,
    check_override_targets,
    take_trust_flag,
    target_origin,
    targets_trusted,
)
from segexp.training.build import validate
from segexp.training.harness import in_multirun
from segexp.validation import did_you_mean

HYDRA_FLAGS_WITHOUT_PRECHECK = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
                                "--shell-completion", "-sc")
HYDRA_FLAGS_RUNNING_NOTHING = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion",
                               "-sc")
"""Hydra flags that print and exit without instantiating anything: no target check needed."""
RERUN_FLAG = "--experimental-rerun"
"""Hydra's rerun of a pickled config: unpickling a file runs whatever it holds."""
MAX_TARGET_COMPOSITIONS = 32
"""Compositions the target check of a sweep makes at most (one per swept group choice); beyond, each job's own
:func:`segexp.training.build.validate` still checks its config's targets before importing them."""


@functools.lru_cache(maxsize=8)
def composed(overrides: tuple[str, ...], config_name: str) -> DictConfig:
    """The config the command line composes (``hydra`` node included), composed once for all the checks before
    Hydra runs (a failed composition raises each time: nothing is cached then)."""
    return compose_config(list(overrides), config_name, with_hydra=True)


def check_command_line(argv: Sequence[str], config_name: str) -> None:
    """Raise :class:`ConfigError` with a "did you mean" suggestion when ``argv`` overrides a key that does not
    exist (``backbone.dpeth=50``). Hydra itself only says the key "is not in struct"; composing the same
    overrides with ``+`` lets :func:`validate` name the closest valid key. Other problems are left to Hydra."""
    from hydra.errors import ConfigCompositionException

    if any(arg.split("=")[0] in HYDRA_FLAGS_WITHOUT_PRECHECK for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        composed(tuple(overrides), config_name)
    except ConfigCompositionException as err:
        unknown = re.search(r"Could not override '([^']+)'", str(err))
        if unknown is None or "To append to your config use +" not in str(err):
            return
        key = unknown.group(1)
        added = [f"+{arg}" if override_key(arg) == key and not arg.startswith(("+", "~")) else arg for arg in overrides]
        try:
            cfg = compose_config(added, config_name)
        except Exception:  # noqa: BLE001 -- let Hydra report what the precheck cannot explain
            return
        if config_name == "train":
            validate(cfg)  # names the closest parameter of a model part, of data or of model
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        hint = did_you_mean(name, [str(k) for k in node], parent) if node else ""
        raise ConfigError(f"Unknown config key '{key}'.{hint} (new keys need '+{key}=...')") from None
    except Exception:  # noqa: BLE001 -- sweeps and other errors: Hydra reports them itself
        return


def check_command_line_targets(argv: Sequence[str], config_name: str) -> None:
    """Raise :class:`UntrustedTargetError` when the run ``argv`` asks for would name code outside the allowed
    packages: an override of a ``_target_`` (each value of a sweep), or a ``_target_`` of the composed config,
    ``hydra`` node included (Hydra instantiates its callbacks, launcher and logging before the job starts), named
    with the override or config file it came from. A sweep is composed once per swept value of a top-level key or
    group (``experiment=a,b``), at most :data:`MAX_TARGET_COMPOSITIONS` times. Nothing is checked when
    :func:`segexp.targets.targets_trusted`; what cannot be composed here is left to Hydra and to the job's
    :func:`segexp.training.build.validate`."""
    if targets_trusted():
        return
    if any(arg.split("=")[0] == RERUN_FLAG for arg in argv):
        raise UntrustedTargetError(f"{RERUN_FLAG} loads a pickled config, which can run any code; run with "
                                   f"{TRUST_TARGETS_FLAG} to allow it")
    if any(arg.split("=")[0] in HYDRA_FLAGS_RUNNING_NOTHING for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    for override in overrides:
        check_override_targets(override, f"the command-line override '{override}'")
    for combination in sweep_combinations(overrides)[:MAX_TARGET_COMPOSITIONS]:
        try:
            cfg = composed(tuple(combination), config_name)
        except Exception:  # noqa: BLE001 -- Hydra reports what does not compose
            continue
        check_config_targets(cfg, origin=lambda key, target, o=combination: target_origin(key, target, o, config_name))


def sweep_combinations(overrides: Sequence[str]) -> list[list[str]]:
    """Override lists without sweeps that together use every value of each sweep over a top-level key or a group
    (``experiment=a,b``, ``+table_row=x,y``): the first value of every sweep, then each further value of those
    sweeps in turn. A sweep of a nested key (``head.rates=[6],[12]``) keeps its first value: its values are checked
    as overrides (:func:`segexp.targets.check_override_targets`), they select no config file. Overrides Hydra cannot
    parse or enumerate are kept as they are (composing them then fails, as Hydra would)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    options: list[list[str]] = []
    for text in overrides:
        try:
            parsed = parser.parse_override(text)
            values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else []
        except Exception:  # noqa: BLE001 -- left to Hydra
            values = []
        if not values:
            options.append([text])
            continue
        spelled = [f"{parsed.get_key_element()}={value}" for value in values]
        options.append(spelled if "." not in parsed.key_or_group else spelled[:1])
    first = [values[0] for values in options]
    combinations = [first]
    for index, values in enumerate(options):
        combinations += [[*first[:index], value, *first[index + 1:]] for value in values[1:]]
    return combinations


@contextmanager
def input_errors_exit(program: str) -> Iterator[None]:
    """Inside a job: a :class:`ConfigError` or :class:`DatasetError` (a bad key, value, checkpoint file or dataset)
    prints its one-line message and exits with status 2, as the checks before Hydra do, instead of Hydra's
    traceback. In a sweep (``-m``) it is raised, so Hydra records that job's failure."""
    try:
        yield
    except (ConfigError, DatasetError) as err:
        if in_multirun():
            raise
        print(f"{program}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def exit_on_config_error(check: Callable[[], None]) -> None:
    """Run a command-line check; on a :class:`ConfigError` print its one-line message and exit with status 2."""
    try:
        check()
    except ConfigError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def null_choices_as_deletions(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``<group>=null`` turned into ``~<group>`` for the config groups of conf/ (``logger=null``:
    no logger). Hydra 1.3 refuses a null choice on the command line ("Config group override must be a string
    or a list"); ``~<group>`` is its spelling of "no option of this group"."""
    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()}
    return [f"~{arg.removesuffix('=null')}" if arg.endswith("=null") and arg.removesuffix("=null") in groups else arg
            for arg in argv]


def run_cli(hydra_main: Callable[[], object], config_name: str) -> None:
    """A console entry point's steps before Hydra: ``--trust-targets`` is taken off the command line (and lifts the
    target checks, for the job and every process it starts), ``<group>=null`` becomes Hydra's ``~<group>``
    (``logger=null``: no logger), a config naming code outside the allowed packages is refused and a misspelt key
    gets a "did you mean" answer (both exit status 2) before Hydra runs the job."""
    sys.argv[1:] = null_choices_as_deletions(take_trust_flag(sys.argv[1:]))
    exit_on_config_error(lambda: check_command_line_targets(sys.argv[1:], config_name))
    exit_on_config_error(lambda: check_command_line(sys.argv[1:], config_name))
    hydra_main()
