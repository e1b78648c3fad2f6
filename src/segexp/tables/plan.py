"""What a table run does per row and seed: the final overrides (base + row, then the profile, later wins),
the composed config and its hash, the stable run folder, protocol-guard warnings, whether the row
needs a process of its own (several GPUs) instead of a slot in the Hydra multirun, and under a submitit
launcher the ``hydra.launcher.*`` resources (nodes, tasks, GPUs) its slot needs.

Override merging: overrides are keyed by the part before ``=`` without ``+``/``++``/``~``; a later
override replaces an earlier one of the same key. When the two spell the key differently (``+k`` vs
``k``) the merged one is written ``++k`` (add or replace), which works whichever existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from segexp.config import CONF_DIR, compose_config
from segexp.overrides import override_key
from segexp.tables.card import CardLine, card_lines, contradictions
from segexp.tables.spec import INIT_KEY, Profile, Protocol, Row, TableSpec
from segexp.tables.store import TABLE_ROW_FILE
from segexp.tables.yaml_reader import fail
from segexp.targets import UntrustedTargetError
from segexp.training.devices import effective_batch, requested_devices, world_size
from segexp.training.eval_settings import GPU_ACCELERATORS, inference_of_checkpoint
from segexp.validation import declared_defaults

TRAIN, EVAL = "train", "eval"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
BASIC_LAUNCHER = "basic"
SUBMITIT_LOCAL = "submitit_local"
SINGLE_NODE_LAUNCHERS = (None, BASIC_LAUNCHER, SUBMITIT_LOCAL)
"""Launchers that start every job on this machine."""
HASH_OUTPUT_DIR = "/segexp-table-row"
"""output_dir used when composing for the hash, so the hash does not depend on where outputs live."""
HASH_EXCLUDED = ("output_dir", "logger", "ckpt_path", "ckpt", "seed", "resume_changes")
"""Keys that do not identify a row's config: where it is written, how it is logged, resume/ckpt paths, and the
seed (the seed folder says it), so that the seeds of one row share a hash and a report can tell seeds run
under an older config from the current ones."""


def _prefix(override: str) -> str:
    return override[: len(override) - len(override.lstrip("+~"))]


def merge_overrides(*lists: Iterable[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces the earlier one."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for override in overrides:
            key = override_key(override)
            previous = merged.pop(key, None)
            if previous is not None and not override.startswith("~") and _prefix(previous) != _prefix(override):
                override = "++" + override.lstrip("+")
            merged[key] = override
    return list(merged.values())


def _covers(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def drop_overrides(overrides: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """Remove overrides of ``prefixes`` (a group, a node and everything under it)."""
    return [o for o in overrides if not any(_covers(p, override_key(o)) for p in prefixes)]


def split_hydra(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(config overrides, ``hydra.*``/``hydra/...`` overrides that belong on the command line)."""
    hydra = [o for o in overrides if override_key(o).startswith(("hydra.", "hydra/"))]
    return [o for o in overrides if o not in hydra], hydra


def train_overrides(spec: TableSpec, row: Row, profile: Profile, extra: Sequence[str] = ()) -> list[str]:
    """base + row, minus what the profile drops, then the profile's overrides, then ``extra``."""
    kept = drop_overrides(merge_overrides(spec.base, row.overrides), profile.drop)
    return merge_overrides(kept, profile.overrides, extra)


def eval_overrides(row: Row, profile: Profile, ckpt: Path, trainer: Sequence[str] = ()) -> list[str]:
    """segexp-eval overrides of an eval-only row: the trainer of the row it evaluates (``trainer``, see
    :func:`source_trainer_overrides`), its own overrides minus what the profile drops (e.g. a test split the
    profile's dataset lacks), then the profile's loader/trainer settings (the profile has the last word)."""
    own = drop_overrides(row.eval_overrides, profile.drop)
    return merge_overrides([f"ckpt={ckpt}"], trainer, own, profile.eval_overrides)


def source_trainer_overrides(train_cfg: DictConfig) -> list[str]:
    """The trainer an eval-only row evaluates on: one device of the kind the evaluated row trained on, at its
    precision, so that the delta against that row measures the inference change and nothing else (a GPU row's
    multi-scale OS-8 evaluation does not fall back to days of fp32 on the CPU). ``trainer=gpu`` or
    ``trainer=cpu``, plus ``trainer.precision`` when the training row set one other than that group's."""
    accelerator = str(train_cfg.trainer.get("accelerator", "cpu"))
    group = "gpu" if accelerator in GPU_ACCELERATORS else "cpu"
    trained = OmegaConf.to_container(train_cfg.trainer, resolve=False).get("precision")
    default = OmegaConf.to_container(compose_config([f"trainer={group}"], "eval").trainer, resolve=False)
    if trained == default.get("precision"):
        return [f"trainer={group}"]
    return [f"trainer={group}", f"trainer.precision={train_cfg.trainer.precision}"]


def replaced_by_profile(row: Row, profile: Profile) -> list[str]:
    """The row's own settings that the profile drops or replaces (the row may then equal another)."""
    notes = []
    replacing = {override_key(o): o for o in profile.overrides}
    for override in row.overrides:
        key = override_key(override)
        if key in replacing:
            notes.append(f"profile {profile.name} replaces {override} by {replacing[key]}")
        elif any(_covers(p, key) for p in profile.drop):
            notes.append(f"profile {profile.name} drops {override}")
    return notes


def compose(overrides: Sequence[str], seed: int, config_name: str = "train") -> DictConfig:
    """The config segexp-train (or segexp-eval) would run for these overrides and seed."""
    return compose_config([*overrides, f"seed={seed}", f"output_dir={HASH_OUTPUT_DIR}"], config_name)


LEGACY_ABSENT = {"data.normalize_on_device": None, "data.val_limit": None, "dataset.skip_bad_samples": False}
"""Keys that conf/ did not hold before rows were hashed by their identity (2026-12-05), with their defaults: a row
recorded under the old whole-config hash still matches when they hold these values (:func:`legacy_config_hash`)."""


def config_identity(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the run a config describes: the resolved config minus :data:`HASH_EXCLUDED`, and minus every
    setting that equals the default its component declares (the constructor's parameter default of a ``_target_``
    node; :class:`segexp.models.build.ModelOptions` and the data module for ``model`` / ``data``). A key added to
    conf/ with the default that keeps the old behaviour therefore changes no identity, while any value a row runs
    with that differs from the default, or a changed default, does."""
    from segexp.targets import load_target
    from segexp.training.build import NODE_SCHEMAS

    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in HASH_EXCLUDED:
        plain.pop(key, None)
    for key, schema in NODE_SCHEMAS.items():
        if isinstance(plain.get(key), dict):
            plain[key] = _without_defaults(plain[key], declared_defaults(schema))
    return recorded_target_names(_strip_target_defaults(plain, load_target))


def recorded_target_names(node: Any) -> Any:
    """``node`` with each ``_target_`` of a class that moved since rows were recorded spelled as it was then
    (:data:`segexp.training.checkpoints.MOVED_CLASSES`): moving a class to another module reruns nothing."""
    from segexp.training.checkpoints import MOVED_CLASSES

    recorded = {new: old for old, new in MOVED_CLASSES.items()}
    if isinstance(node, list):
        return [recorded_target_names(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: recorded.get(value, value) if key == "_target_" and isinstance(value, str)
            else recorded_target_names(value) for key, value in node.items()}


def _strip_target_defaults(node: Any, load: Any) -> Any:
    if isinstance(node, list):
        return [_strip_target_defaults(item, load) for item in node]
    if not isinstance(node, dict):
        return node
    children = {key: _strip_target_defaults(value, load) for key, value in node.items()}
    target = node.get("_target_")
    if not isinstance(target, str):
        return children
    return _without_defaults(children, declared_defaults(load(target, "", None)))


def _without_defaults(node: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in node.items()
            if key not in defaults or _canonical(value) != _canonical(defaults[key])}


def _canonical(value: Any) -> Any:
    """A value as its JSON form (tuples as lists, paths as strings), for comparing a setting with a default."""
    return json.loads(json.dumps(value, default=str))


def config_hash(cfg: DictConfig, *extra: Any) -> str:
    """sha256 of the config's identity (:func:`config_identity`) plus ``extra`` facts, 16 hex digits: a finished
    row is rerun only when something it ran with changes."""
    text = json.dumps([config_identity(cfg), *extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def legacy_config_hash(cfg: DictConfig, *extra: Any) -> str:
    """The whole-config hash rows were recorded with before :func:`config_hash` (minus :data:`HASH_EXCLUDED` and the
    :data:`LEGACY_ABSENT` keys at their defaults), so that rows finished then are not rerun."""
    plain = recorded_target_names(OmegaConf.to_container(cfg, resolve=True))
    for key in HASH_EXCLUDED:
        plain.pop(key, None)
    for dotted, default in LEGACY_ABSENT.items():
        parent, _, name = dotted.partition(".")
        if isinstance(plain.get(parent), dict) and name in plain[parent] and plain[parent][name] == default:
            del plain[parent][name]
    text = json.dumps([plain, *extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def protocol_warnings(cfg: DictConfig, protocol: Protocol) -> list[str]:
    """One line per difference between the composed run and the paper's batch / iterations."""
    warnings = []
    batch = effective_batch(cfg)
    if protocol.effective_batch is not None:
        if batch is None:
            warnings.append(f"effective batch unknown here (trainer.devices={cfg.trainer.devices}); "
                            f"paper: {protocol.effective_batch}")
        elif batch != protocol.effective_batch:
            warnings.append(f"effective batch {batch} (data.batch_size={cfg.data.batch_size} x "
                            f"{world_size(cfg)} devices x {cfg.trainer.get('accumulate_grad_batches', 1)} "
                            f"accumulated) != paper {protocol.effective_batch}")
    steps = cfg.trainer.get("max_steps")
    if protocol.max_steps is not None and steps != protocol.max_steps:
        warnings.append(f"trainer.max_steps={steps} != paper {protocol.max_steps} iterations")
    return warnings


class NotRunUnderProfile(Exception):
    """A row this profile cannot run here (e.g. more processes than it allows); the message says why."""


TRAINER_KEYS = ("trainer", "trainer.devices", "trainer.num_nodes")


def distributed_overrides(spec: TableSpec, row: Row, profile: Profile, seed: int) -> list[str]:
    """Overrides that run a several-device row under ``profile.distributed`` on this machine: the row's own
    process count on one node, then the profile's ``distributed.overrides`` (trainer, per-process batch);
    [] for a one-process row or a profile without ``distributed``. Raises :class:`NotRunUnderProfile` when
    the row needs more processes than the profile allows."""
    asked = merge_overrides(spec.base, row.overrides)
    if profile.distributed is None or not any(override_key(o) in TRAINER_KEYS for o in asked):
        return []
    world = world_size(compose(asked, seed))
    if world is None:
        raise NotRunUnderProfile("its device count (trainer.devices=-1/auto) is only known on a GPU machine")
    if world == 1:
        return []
    if world > profile.distributed.max_processes:
        raise NotRunUnderProfile(f"it trains on {world} processes; profile {profile.name} runs at most "
                                 f"{profile.distributed.max_processes} on this machine")
    return [f"trainer.devices={world}", "trainer.num_nodes=1", *profile.distributed.overrides]


def multi_node_problem(cfg: DictConfig, launcher: str | None) -> str | None:
    """Why a several-node row cannot start from here (the basic and submitit_local launchers start one
    node), or None."""
    nodes = int(cfg.trainer.get("num_nodes", 1))
    if nodes > 1 and launcher in SINGLE_NODE_LAUNCHERS:
        return (f"trainer.num_nodes={nodes}: a several-node row needs a cluster launcher, e.g. --launcher "
                f"submitit_slurm (launcher {launcher or BASIC_LAUNCHER} starts one node)")
    return None


def launcher_overrides(cfg: DictConfig, launcher: str | None) -> tuple[str, ...]:
    """The ``hydra.launcher.*`` resources of a row under a submitit launcher, where each submitit task is one
    DDP rank: ``nodes`` = trainer.num_nodes, ``tasks_per_node`` = trainer.devices and, on a GPU row,
    ``gpus_per_node`` = trainer.devices (without it SLURM allocates no GPU and submitit_local hides every
    GPU). Lightning's SLURMEnvironment checks that SLURM's tasks per node and nodes equal devices and num_nodes;
    under submitit_local, :func:`segexp.training.harness.export_submitit_local_ranks` makes the tasks DDP ranks.
    () for other launchers; only ``nodes`` when the device count is known only on the GPU machine
    (trainer.devices=-1/auto)."""
    if launcher is None or not launcher.startswith("submitit_"):
        return ()
    overrides = [f"hydra.launcher.nodes={int(cfg.trainer.get('num_nodes', 1))}"]
    devices = requested_devices(cfg.trainer.get("devices", 1))
    if devices is not None:
        overrides.append(f"hydra.launcher.tasks_per_node={devices}")
        if str(cfg.trainer.get("accelerator", "cpu")) in GPU_ACCELERATORS:
            overrides.append(f"hydra.launcher.gpus_per_node={devices}")
    return tuple(overrides)


def is_distributed(cfg: DictConfig) -> bool:
    """Several processes: more than one device x node, or a DDP strategy over devices unknown here."""
    world = world_size(cfg)
    if world is None:
        return "ddp" in str(cfg.trainer.get("strategy", "auto"))
    return world > 1


def needs_own_process(cfg: DictConfig, launcher: str | None) -> bool:
    """Distributed rows under the basic launcher run as their own process (Lightning's DDP re-runs the
    command line, so inside a multirun its workers would relaunch the whole sweep). A submitit launcher
    starts one task per device itself (:func:`launcher_overrides`), so such rows stay in the sweep there."""
    return (launcher in (None, BASIC_LAUNCHER)) and is_distributed(cfg)


@dataclass(frozen=True)
class Job:
    """One (row, seed): what runs, where, and the hash of the config it runs."""

    row: Row
    seed: int
    kind: str
    overrides: tuple[str, ...]
    run_dir: Path
    config_hash: str
    warnings: tuple[str, ...] = ()
    legacy_hash: str | None = None
    """The hash a row finished before row identities (2026-12-05) was recorded with (:func:`legacy_config_hash`)."""
    own_process: bool = False
    source_dir: Path | None = None
    launcher_overrides: tuple[str, ...] = ()
    eval_trainer: tuple[str, ...] = ()
    """For a training job: the trainer overrides of the eval-only rows that evaluate it."""
    card: tuple[CardLine, ...] = ()
    """The row's composed protocol card (:mod:`segexp.tables.card`)."""
    card_problems: tuple[str, ...] = ()
    """Carded settings that contradict the card, under a profile that checks the protocol (``full``)."""
    cfg: DictConfig | None = field(default=None, compare=False, repr=False)
    """The composed config (segexp-train's, or segexp-eval's for an eval-only row)."""

    @property
    def choice(self) -> str:
        """The ``table_row`` option (and run sub-folder) of this job: ``<row>/seed<k>``."""
        return f"{self.row.name}/seed{self.seed}"

    @property
    def label(self) -> str:
        return self.choice


def plan_train_job(spec: TableSpec, row: Row, profile: Profile, seed: int, base_dir: Path,
                   extra: Sequence[str] = (), launcher: str | None = None, source: Job | None = None) -> Job:
    """Compose and validate one training row (``source``: the job of its ``init_from`` row); raises
    :class:`NotRunUnderProfile`, SpecError (naming the spec file and row) when the composed config names code
    outside the allowed packages (e.g. through a config file a row selects), or ConfigError / Hydra errors when
    it cannot run."""
    from segexp.training.build import validate

    distributed = distributed_overrides(spec, row, profile, seed)
    start = [f"{INIT_KEY}={last_checkpoint(source.run_dir)}"] if source is not None else []
    overrides = merge_overrides(train_overrides(spec, row, profile, extra), distributed, start)
    cfg = compose(overrides, seed)
    try:
        validate(cfg)
    except UntrustedTargetError as err:
        fail(spec.path, f"rows[{spec.rows.index(row)}] ({row.name})", str(err))
    if (problem := multi_node_problem(cfg, launcher)) is not None:
        raise NotRunUnderProfile(problem)
    warnings = replaced_by_profile(row, profile)
    if profile.extra:
        warnings.append(f"run with extra settings over profile {profile.base}: {' '.join(profile.extra)}")
    if distributed:
        warnings = [w for w in warnings if not any(f" {key}=" in w for key in (*TRAINER_KEYS, "data.batch_size"))]
        warnings.append(f"profile {profile.name} runs its {cfg.trainer.devices} processes as "
                        f"{' '.join(profile.distributed.overrides)}, effective batch {effective_batch(cfg)}")
    if profile.check_protocol:
        warnings += protocol_warnings(cfg, spec.protocol_of(row))
    facts = (source.config_hash, record_stamp(source.run_dir)) if source is not None else ()
    legacy_facts = (source.legacy_hash, record_stamp(source.run_dir)) if source is not None else ()
    card = card_lines(spec, row, cfg, effective_batch(cfg), overrides)
    return Job(row=row, seed=seed, kind=TRAIN, overrides=tuple(overrides), run_dir=base_dir / row.name / f"seed{seed}",
               config_hash=config_hash(cfg, *facts), legacy_hash=legacy_config_hash(cfg, *legacy_facts),
               warnings=tuple(warnings),
               own_process=needs_own_process(cfg, launcher), source_dir=source.run_dir if source else None,
               launcher_overrides=launcher_overrides(cfg, launcher), eval_trainer=tuple(source_trainer_overrides(cfg)),
               card=tuple(card), card_problems=tuple(contradictions(card) if profile.check_protocol else ()), cfg=cfg)


def last_checkpoint(run_dir: Path) -> Path:
    """``<run dir>/checkpoints/last.ckpt``: what eval-only and ``init_from`` rows read, and resume uses."""
    return run_dir / CHECKPOINTS / LAST_CKPT


def record_stamp(run_dir: Path) -> int | None:
    """When the run's ``table_row.json`` was last written: it is rewritten each time the run is (re)launched,
    so a row built on it (eval or ``init_from``) gets a new hash and runs again after its source did."""
    record = run_dir / TABLE_ROW_FILE
    return record.stat().st_mtime_ns if record.is_file() else None


def plan_eval_job(spec: TableSpec, row: Row, profile: Profile, seed: int, base_dir: Path, source: Job,
                  launcher: str | None = None) -> Job:
    """An eval-only row on ``source``'s last checkpoint; its hash covers the source run (config and launch)."""
    overrides = eval_overrides(row, profile, last_checkpoint(source.run_dir), source.eval_trainer)
    cfg = compose(overrides, seed, config_name="eval")
    dropped = [f"profile {profile.name} drops {o}" for o in row.eval_overrides if o not in overrides]
    if profile.extra:
        dropped.append(f"evaluates a run with extra settings over profile {profile.base}: {' '.join(profile.extra)}")
    trained = source.cfg if source.cfg is not None else compose(source.overrides, seed)  # a Job built by hand
    evaluated = cfg.copy()  # what segexp-eval will run: the checkpoint's inference settings where the row leaves them
    evaluated.inference = inference_of_checkpoint(cfg.get("inference"), trained.get("inference"))
    card = card_lines(spec, row, trained, effective_batch(trained), [*overrides, *source.overrides],
                      eval_cfg=evaluated)
    return Job(row=row, seed=seed, kind=EVAL, overrides=tuple(overrides), run_dir=base_dir / row.name / f"seed{seed}",
               config_hash=config_hash(cfg, source.config_hash, record_stamp(source.run_dir)),
               legacy_hash=legacy_config_hash(cfg, source.legacy_hash, record_stamp(source.run_dir)),
               warnings=tuple(dropped), source_dir=source.run_dir, launcher_overrides=launcher_overrides(cfg, launcher),
               card=tuple(card), card_problems=tuple(contradictions(card) if profile.check_protocol else ()), cfg=cfg)


def _is_group(key: str) -> bool:
    return "." not in key and (CONF_DIR / key).is_dir()


def _set_nested(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def row_file_text(overrides: Sequence[str], values: dict[str, Any]) -> str:
    """A ``# @package _global_`` config equal to applying ``overrides`` (then ``values``) on the command
    line: group choices become ``override /group: option`` defaults, the rest nested values."""
    defaults: list[Any] = []
    tree: dict[str, Any] = {}
    for parsed in OverridesParser.create().parse_overrides(list(overrides)):
        key, value = parsed.key_or_group, parsed.value()
        if _is_group(key) and (value is None or isinstance(value, str)):
            defaults.append({(f"/{key}" if parsed.is_add() else f"override /{key}"): value})
        else:
            _set_nested(tree, key, value)
    for key, value in values.items():
        _set_nested(tree, key, value)
    body = yaml.safe_dump({"defaults": [*defaults, "_self_"], **tree}, sort_keys=False)
    return "# @package _global_\n# Written by segexp-table: one table row (see table_row.json beside the run).\n" + body
