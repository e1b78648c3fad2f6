"""Command-line checks run before Hydra: a misspelt key gets a "did you mean" answer and exit status 2."""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import OmegaConf

from segexp.config import CONF_DIR, ConfigError, compose_config
from segexp.training.build import validate

HYDRA_FLAGS_WITHOUT_PRECHECK = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
                                "--shell-completion", "-sc")


def check_command_line(argv: Sequence[str], config_name: str) -> None:
    """Raise :class:`ConfigError` with a "did you mean" suggestion when ``argv`` overrides a key that does not
    exist (``backbone.dpeth=50``). Hydra itself only says the key "is not in struct"; composing the same
    overrides with ``+`` lets :func:`validate` name the closest valid key. Other problems are left to Hydra."""
    from hydra.errors import ConfigCompositionException

    if any(arg.split("=")[0] in HYDRA_FLAGS_WITHOUT_PRECHECK for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        compose_config(overrides, config_name)
    except ConfigCompositionException as err:
        unknown = re.search(r"Could not override '([^']+)'", str(err))
        if unknown is None or "To append to your config use +" not in str(err):
            return
        key = unknown.group(1)
        added = [f"+{arg}" if arg.split("=", 1)[0] == key else arg for arg in overrides]
        try:
            cfg = compose_config(added, config_name)
        except Exception:  # noqa: BLE001 -- let Hydra report what the precheck cannot explain
            return
        if config_name == "train":
            validate(cfg)  # names the closest parameter of a model part, of data or of model
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        close = difflib.get_close_matches(name, [str(k) for k in node if str(k) != name], n=1) if node else []
        hint = f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown config key '{key}'.{hint} (new keys need '+{key}=...')") from None
    except Exception:  # noqa: BLE001 -- sweeps and other errors: Hydra reports them itself
        return


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
    """A console entry point's steps before Hydra: ``<group>=null`` becomes Hydra's ``~<group>`` (``logger=null``:
    no logger), and a misspelt key gets a "did you mean" answer (exit status 2) before Hydra runs the job."""
    sys.argv[1:] = null_choices_as_deletions(sys.argv[1:])
    exit_on_config_error(lambda: check_command_line(sys.argv[1:], config_name))
    hydra_main()
