"""Paper-table specs and run profiles: the schema of ``experiments/<paper>/t<N>.yaml`` and
``experiments/profiles/<name>.yaml``, loaded into frozen dataclasses.

Validation is explicit: every error is a :class:`SpecError` whose message starts with the file and the
full key at fault (``experiments/deeplabv3/t5.yaml: rows[2].paper.mIoU: expected a number, got 'x'``).
Override strings are parsed with Hydra's own override grammar, so a spec that loads has well-formed
overrides; whether they compose is checked by composing them (see :mod:`segexp.tables.plan`). A spec or profile
is a config from someone else too: an override naming code outside the allowed packages (a ``_target_``, see
:func:`segexp.targets.check_override_targets`) is refused here, by file and key, unless ``--trust-targets``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from segexp.config import REPO_ROOT
from segexp.overrides import override_key
from segexp.targets import UntrustedTargetError, check_override_targets
from segexp.validation import closest_key

EXPERIMENTS_DIR = REPO_ROOT / "experiments"
PROFILES_DIR = EXPERIMENTS_DIR / "profiles"
RESULTS_DIR = EXPERIMENTS_DIR / "results"

READY, PENDING = "ready", "pending"
ABSOLUTE, DELTA = "absolute", "delta"
CHECKPOINT_POLICIES = ("keep", "last", "none")
"""keep: every checkpoint; last: only last.ckpt; none: none once nothing needs them (smoke)."""
MEASURABLE = ("size_mb", "test_time_s")
PER_CLASS_PREFIX = "per_class_iou."
METRIC_SCALES: dict[str, float] = {
    "mIoU": 100.0,
    "pixel_acc": 100.0,
    "mean_acc": 100.0,
    "size_mb": 1.0,
    "test_time_s": 1.0,
    "relative_time": 1.0,
}
"""Factor from a metrics.json value to the papers' units (fractions -> %)."""
METRIC_UNITS: dict[str, str] = {"size_mb": "MB", "test_time_s": "s", "relative_time": "x baseline"}
"""The unit of the metrics not given in % (those scaled by 100)."""
INIT_KEY = "model.init_from"
"""The training option a row's ``init_from`` sets to the source row's ``last.ckpt``."""
RESERVED_KEYS = ("seed", "output_dir", "ckpt_path", "ckpt", "table_row", "hydra")
"""Keys the runner sets itself; a spec or profile may not override them."""
ROW_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_/-]*(\.[A-Za-z0-9_/-]+)*$")
"""A config group or node a profile may ``drop``: ``dataset``, ``data.crop_size``, ``hydra/launcher``."""
TABLE_FILE = re.compile(r"^t(\d+)$")


class SpecError(ValueError):
    """A table spec or profile that cannot be used, named by file and key."""


def fail(path: Path | str, key: str, message: str) -> NoReturn:
    raise SpecError(f"{display_path(path)}: {key}: {message}")


def display_path(path: Path | str) -> str:
    """``path`` relative to the repository when inside it (shorter messages)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def metric_scale(name: str) -> float:
    """Factor from metrics.json units to the paper's; KeyError for an unknown metric."""
    if name.startswith(PER_CLASS_PREFIX):
        return 100.0
    return METRIC_SCALES[name]


def metric_unit(name: str) -> str:
    """The paper's unit of a metric: ``%`` for mIoU, accuracies and per-class IoU."""
    return "%" if metric_scale(name) == 100.0 else METRIC_UNITS[name]


def is_known_metric(name: str) -> bool:
    return name in METRIC_SCALES or (name.startswith(PER_CLASS_PREFIX) and len(name) > len(PER_CLASS_PREFIX))


CHOSEN = "chosen:"
"""How a card entry's ``source`` starts when the paper does not give the value (the reason follows)."""


@dataclass(frozen=True)
class CardEntry:
    """One setting of a protocol card: the value the ``full`` profile composes, where it comes from (the paper's
    section, or ``chosen: <reason>``), and what the paper did when the value is a stated deviation from it."""

    value: Any
    source: str
    paper: Any = None
    """The paper's value where ``value`` deviates from it (a choice, said in ``source``); None otherwise."""

    @property
    def deviates(self) -> bool:
        return self.paper is not None

    @property
    def chosen(self) -> bool:
        return self.source.startswith(CHOSEN)


Card = dict[str, CardEntry]
"""Config key (``trainer.precision``; ``effective_batch`` for the derived batch) -> its entry."""
Statements = dict[str, str]
"""Name (``train_crop_padding``) -> a stated protocol choice that is not one config key's value."""


@dataclass(frozen=True)
class Protocol:
    """The paper's protocol that the ``full`` profile is checked against: the effective batch and iterations
    (shorthand for those two card entries' values) and the protocol card (:mod:`segexp.tables.card`)."""

    effective_batch: int | None = None
    max_steps: int | None = None
    card: Card = field(default_factory=dict)
    statements: Statements = field(default_factory=dict)
    """Stated choices that no single config key holds (the pad value of training crops, how a branch is read),
    name -> text with the paper's section or ``chosen: <reason>``."""

    def merged(self, other: Protocol | None) -> Protocol:
        if other is None:
            return self
        return Protocol(
            effective_batch=other.effective_batch if other.effective_batch is not None else self.effective_batch,
            max_steps=other.max_steps if other.max_steps is not None else self.max_steps,
            card={**self.card, **other.card},
            statements={**self.statements, **other.statements},
        )


@dataclass(frozen=True)
class Row:
    """One line of a paper table: a training run (``overrides``) or an evaluation of another row."""

    name: str
    paper: dict[str, float]
    label: str = ""
    overrides: tuple[str, ...] = ()
    notes: str | None = None
    eval_of: str | None = None
    eval_overrides: tuple[str, ...] = ()
    init_from: str | None = None
    measure: tuple[str, ...] = ()
    baseline: str | None = None
    protocol: Protocol | None = None

    @property
    def runnable(self) -> bool:
        """Rows with ``notes`` are reported as "not run" (test server, missing data or component)."""
        return self.notes is None

    @property
    def is_eval(self) -> bool:
        return self.eval_of is not None

    @property
    def source(self) -> str | None:
        """The row whose ``last.ckpt`` this one needs: evaluated (``eval_of``) or trained on (``init_from``)."""
        return self.eval_of or self.init_from

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class TableSpec:
    """A paper table: shared ``base`` overrides (the paper's protocol) and its rows."""

    id: str
    title: str
    paper: str
    dataset: str
    metrics: tuple[str, ...]
    status: str
    rows: tuple[Row, ...]
    path: Path
    pending_reason: str | None = None
    base: tuple[str, ...] = ()
    protocol: Protocol = field(default_factory=Protocol)
    baseline: str | None = None
    paper_values: str = ABSOLUTE
    notes: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == READY

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise SpecError(f"{display_path(self.path)}: rows: no row named '{name}' (rows: {self.row_names()})")

    def row_names(self) -> list[str]:
        return [row.name for row in self.rows]

    def baseline_of(self, row: Row) -> str | None:
        """The row ``row`` is compared with (its own ``baseline`` or the table's), never itself."""
        name = row.baseline or self.baseline
        return None if name == row.name else name

    def protocol_of(self, row: Row) -> Protocol:
        """The row's protocol: the table's (its card over the paper's card), then the row's own; the
        ``effective_batch`` / ``max_steps`` shorthands set those two card entries' values."""
        protocol = self.protocol.merged(row.protocol)
        card = dict(protocol.card)
        for key, value in (("effective_batch", protocol.effective_batch), ("trainer.max_steps", protocol.max_steps)):
            if value is not None and key in card:
                card[key] = dataclasses.replace(card[key], value=value)
        return dataclasses.replace(protocol, card=card)

    def pending_message(self) -> str:
        """One line: this table is not run, and which components it waits for."""
        return f"{self.id} is {self.status}, not run ({display_path(self.path)}): {self.pending_reason}"


@dataclass(frozen=True)
class Distributed:
    """How a profile runs rows that train on several devices (DeepLabv3 Table 11): with the row's number
    of processes on one node (at most ``max_processes``, else the row is not run), then ``overrides``
    (e.g. ``trainer=ddp_cpu data.batch_size=2``: the trainer and the per-process batch)."""

    max_processes: int
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """An override set applied after base + row: ``full`` (paper protocol), ``smoke``, ``proxy``."""

    name: str
    description: str
    path: Path
    overrides: tuple[str, ...] = ()
    eval_overrides: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    check_protocol: bool = False
    checkpoints: str = "keep"
    distributed: Distributed | None = None
    evidence: bool = False
    """True: reports go to ``experiments/results/`` (tracked evidence); False: scratch under outputs."""
    extra: tuple[str, ...] = ()
    """Command-line settings a run adds over the profile (``segexp-table run ... -- key=value``): such a run is
    a profile of its own (:func:`with_extra_settings`), never the base profile's evidence."""
    base: str | None = None
    """The profile this one adds ``extra`` settings to (None for a profile file)."""


EXTRA_SUFFIX = "+custom-"


def with_extra_settings(profile: Profile, extra: Sequence[str]) -> Profile:
    """The profile of a run with command-line config overrides: ``<profile>+custom-<digest of the overrides>``,
    its runs in their own folder and its report scratch output (not ``experiments/results/``), so extra settings
    never replace or mix with the profile's evidence. ``profile`` itself when there are none."""
    if not extra or profile.extra == tuple(extra):
        return profile
    if profile.extra:
        raise ValueError(f"profile {profile.name} already has extra settings {list(profile.extra)}")
    digest = hashlib.sha256("\n".join(extra).encode()).hexdigest()[:8]
    return dataclasses.replace(
        profile, name=f"{profile.name}{EXTRA_SUFFIX}{digest}", evidence=False, extra=tuple(extra), base=profile.name,
        description=f"{profile.description} -- with extra settings {' '.join(extra)} (not the {profile.name} "
                    "profile's evidence)")


def yaml_kind(value: Any) -> str:
    """What a YAML value is, in YAML's words (for messages): ``a list``, ``a string``, ``null``..."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
             (dict, "a mapping"))
    if value is None:
        return "null"
    return next((kind for cls, kind in kinds if isinstance(value, cls)), type(value).__name__)


def _duplicate_key(node: yaml.Node, where: str = "", seen: set[int] | None = None) -> tuple[str, int, int] | None:
    """The first key written twice in one mapping of the YAML ``node`` tree: (full key, first line, second line).

    PyYAML keeps the last value of a repeated key silently, which would drop e.g. a row's first ``overrides``.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of an anchor already walked
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            full = f"{where}.{key}" if where else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in lines:
                    return full, lines[key], line
                lines[key] = line
            found = _duplicate_key(value_node, full, seen)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_key(item, f"{where}[{index}]", seen)
            if found:
                return found
    return None


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    """``line L, column C: <problem> (<context> at line L', column C')``: where the parser gave up and why."""

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    text = err.problem or "cannot parse"
    if err.context:
        text += f" ({err.context}" + (f" at {at(err.context_mark)})" if err.context_mark is not None else ")")
    mark = err.problem_mark or err.context_mark
    return f"{at(mark)}: {text}" if mark is not None else text


def read_yaml(path: Path, allowed: Sequence[str]) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path``; a :class:`SpecError` naming the file (and the key or
    line) if it cannot be read, does not parse, repeats a key in one mapping, is empty or is not a mapping."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        fail(path, "<file>", f"cannot read the file: {err}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        fail(path, "<yaml>", f"not valid YAML: {_yaml_problem(err)}")
    except yaml.YAMLError as err:
        fail(path, "<yaml>", f"not valid YAML: {str(err).replace(chr(10), ' ')}")
    if node is None or data is None:
        fail(path, "<top level>", f"the file is empty; expected a mapping with the keys {', '.join(allowed)}")
    duplicate = _duplicate_key(node)
    if duplicate is not None:
        key, first, second = duplicate
        fail(path, key, f"written twice (lines {first} and {second}); YAML would keep the last one silently")
    return data


class _Mapping:
    """A YAML mapping being read: typed getters whose errors name the file and the full key."""

    def __init__(self, data: Any, path: Path, where: str, allowed: Sequence[str]) -> None:
        if not isinstance(data, dict):
            fail(path, where or "<top level>", f"expected a mapping, got {yaml_kind(data)}")
        self.data, self.path, self.where = data, path, where
        for key in data:
            if key not in allowed:
                close = closest_key(str(key), allowed)
                hint = f" (did you mean '{close}'?)" if close else ""
                fail(path, self.key(str(key)), f"unknown key{hint}; allowed keys: {', '.join(allowed)}")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def get(self, name: str, kind: type | tuple[type, ...], required: bool = False, default: Any = None) -> Any:
        value = self.data.get(name)
        if value is None:
            if required:
                fail(self.path, self.key(name), "required key is missing")
            return default
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            fail(self.path, self.key(name), f"expected {names}, got {value!r}")
        return value

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.get(name, str, required)
        if value is not None and not value.strip():
            fail(self.path, self.key(name), "must not be empty")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.get(name, str, default=default)
        if value not in choices:
            fail(self.path, self.key(name), f"must be one of {', '.join(choices)}, got '{value}'")
        return value

    def strings(self, name: str, unique: bool = False) -> tuple[str, ...]:
        values = self.get(name, list, default=[])
        for index, value in enumerate(values):
            if not isinstance(value, str):
                fail(self.path, f"{self.key(name)}[{index}]", f"expected a string, got {value!r}")
            if unique and value in values[:index]:
                fail(self.path, f"{self.key(name)}[{index}]",
                     f"'{value}' is listed twice (also {self.key(name)}[{values.index(value)}])")
        return tuple(values)

    def positive(self, name: str, required: bool = False) -> int | None:
        value = self.get(name, int, required)
        if value is not None and value < 1:
            fail(self.path, self.key(name), f"must be >= 1, got {value}")
        return value

    def numbers(self, name: str, required: bool = False) -> dict[str, float]:
        values = self.get(name, dict, required, default={})
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(self.path, f"{self.key(name)}.{key}", f"expected a number, got {value!r}")
            if not math.isfinite(value):
                fail(self.path, f"{self.key(name)}.{key}", f"expected a finite number, got {value!r}")
        return {str(k): float(v) for k, v in values.items()}


def check_overrides(overrides: Sequence[str], path: Path, key: str) -> None:
    """Hydra-parsable, single-valued, no deletions, no keys the runner owns, no key set twice, no ``_target_``
    outside the allowed packages (unless trusted)."""
    parser = OverridesParser.create()
    first: dict[str, int] = {}
    for index, text in enumerate(overrides):
        where = f"{key}[{index}]"
        if text.startswith("~"):
            fail(path, where, f"'{text}': deletions cannot be expressed in a table row; set the value instead")
        if "=" not in text:
            fail(path, where, f"'{text}' is not an override (expected key=value)")
        name = override_key(text)
        if name.split(".")[0].split("/")[0] in RESERVED_KEYS:
            fail(path, where, f"'{text}': {name} is set by segexp-table itself")
        try:
            parsed = parser.parse_override(text)
        except HydraException as err:
            fail(path, where, f"'{text}' does not parse as a Hydra override: {err}")
        if parsed.is_sweep_override():
            fail(path, where, f"'{text}' is a sweep; write one row per value")
        if name in first:
            fail(path, where, f"'{text}' sets {name} again (already set by {key}[{first[name]}]); keep one")
        first[name] = index
        try:
            check_override_targets(text)
        except UntrustedTargetError as err:
            fail(path, where, str(err))


CARD_ENTRY_KEYS = ("value", "source", "paper")


def read_card(node: _Mapping, name: str) -> Card:
    """The ``name`` mapping of ``node``: config key -> {value, source, paper}; every entry states its source,
    and an entry with ``paper`` (a deviation from the paper) must be a stated choice."""
    entries = node.get(name, dict, default={})
    card: Card = {}
    for key, data in entries.items():
        where = node.key(f"{name}.{key}")
        if not isinstance(key, str) or not CONFIG_KEY.match(key):
            fail(node.path, where, "expected a config key such as trainer.precision")
        entry = _Mapping(data, node.path, where, CARD_ENTRY_KEYS)
        if "value" not in entry.data:
            fail(node.path, f"{where}.value", "required key is missing (null is a value: write `value: null`)")
        source = entry.text("source", required=True)
        paper = entry.data.get("paper")
        if paper is not None and not source.startswith(CHOSEN):
            fail(node.path, f"{where}.source", f"a deviation from the paper (paper: {paper!r}) is a choice: start the "
                                               f"source with '{CHOSEN}' and say why")
        card[key] = CardEntry(value=entry.data["value"], source=source, paper=paper)
    return card


STATEMENT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def read_statements(node: _Mapping, name: str) -> Statements:
    """The ``name`` mapping of ``node``: snake_case name -> the stated choice, which names its source (a section
    of the paper, or ``chosen: <reason>``)."""
    entries = node.get(name, dict, default={})
    statements: Statements = {}
    for key, text in entries.items():
        where = node.key(f"{name}.{key}")
        if not isinstance(key, str) or not STATEMENT_NAME.match(key):
            fail(node.path, where, "expected a snake_case name such as train_crop_padding")
        if not isinstance(text, str) or not text.strip():
            fail(node.path, where, "expected the statement's text (its source: the paper's section or 'chosen: ...')")
        statements[key] = text.strip()
    return statements


PROTOCOL_KEYS = ("effective_batch", "max_steps", "card", "statements")


def _protocol(node: _Mapping, name: str) -> Protocol | None:
    if not node.has(name):
        return None
    sub = _Mapping(node.data[name], node.path, node.key(name), PROTOCOL_KEYS)
    return Protocol(effective_batch=sub.positive("effective_batch"), max_steps=sub.positive("max_steps"),
                    card=read_card(sub, "card"), statements=read_statements(sub, "statements"))


ROW_KEYS = ("name", "label", "overrides", "paper", "notes", "eval_of", "eval_overrides", "init_from", "measure",
            "baseline", "protocol")
TABLE_KEYS = ("id", "title", "paper", "dataset", "metrics", "status", "pending_reason", "notes", "base",
              "protocol", "baseline", "paper_values", "rows")
PROFILE_KEYS = ("description", "overrides", "eval_overrides", "drop", "check_protocol", "checkpoints", "distributed",
                "evidence")
DISTRIBUTED_KEYS = ("max_processes", "overrides")


def _row(data: Any, path: Path, where: str) -> Row:
    node = _Mapping(data, path, where, ROW_KEYS)
    name = node.text("name", required=True)
    if not ROW_NAME.match(name):
        fail(path, node.key("name"), f"'{name}' must match {ROW_NAME.pattern} (it names a folder and a Hydra choice)")
    row = Row(
        name=name,
        paper=node.numbers("paper", required=True),
        label=node.text("label") or "",
        overrides=node.strings("overrides"),
        notes=node.text("notes"),
        eval_of=node.text("eval_of"),
        eval_overrides=node.strings("eval_overrides"),
        init_from=node.text("init_from"),
        measure=node.strings("measure", unique=True),
        baseline=node.text("baseline"),
        protocol=_protocol(node, "protocol"),
    )
    check_overrides(row.overrides, path, node.key("overrides"))
    check_overrides(row.eval_overrides, path, node.key("eval_overrides"))
    if row.eval_of == name:
        fail(path, node.key("eval_of"), f"a row cannot evaluate itself; name the row whose checkpoint '{name}' "
                                        "evaluates")
    if row.is_eval and row.overrides:
        fail(path, node.key("overrides"), "an eval-only row (eval_of) reuses a checkpoint: use eval_overrides")
    if not row.is_eval and row.eval_overrides:
        fail(path, node.key("eval_overrides"), "only eval-only rows (with eval_of) take eval_overrides")
    if row.is_eval and row.init_from:
        fail(path, node.key("init_from"), "an eval-only row (eval_of) cannot also train (init_from)")
    if row.init_from and any(override_key(o) == INIT_KEY for o in row.overrides):
        fail(path, node.key("overrides"), f"{INIT_KEY} is set by the runner from init_from; drop the override")
    if row.is_eval and row.measure:
        fail(path, node.key("measure"), "size and speed are measured on trained rows, not eval-only ones")
    for index, metric in enumerate(row.measure):
        if metric not in MEASURABLE:
            fail(path, f"{node.key('measure')}[{index}]", f"'{metric}' is not measurable; use {MEASURABLE}")
    return row


def is_tracked_spec(path: Path) -> bool:
    """Whether ``path`` is one of this checkout's ``experiments/<paper>/t<N>.yaml`` (else a user's copy)."""
    return path.resolve().parent.parent == EXPERIMENTS_DIR.resolve()


def _check_identity(spec: TableSpec) -> None:
    """A tracked spec is ``experiments/<paper>/t<N>.yaml`` with id ``<paper>.t<N>``. A copy elsewhere (a variant of
    a paper table) has id ``<paper>.<file stem>``, which must not be a tracked table's: its runs and reports go
    to ``outputs/tables/<id>/`` and would mix with that table's."""
    path, stem = spec.path, spec.path.stem
    if is_tracked_spec(path):
        paper_dir = path.parent.name
        if not TABLE_FILE.match(stem) or spec.id != f"{paper_dir}.{stem}" or spec.paper != paper_dir:
            fail(path, "id", f"'{spec.id}' (paper '{spec.paper}') must be '{paper_dir}.{stem}' for this file")
        return
    if not re.fullmatch(r"[A-Za-z0-9_-]+", stem) or spec.id != f"{spec.paper}.{stem}":
        fail(path, "id", f"'{spec.id}' must be '{spec.paper}.{stem}' (the paper, then this file's name)")
    if (EXPERIMENTS_DIR / spec.paper / f"{stem}.yaml").is_file():
        fail(path, "id", f"'{spec.id}' is a tracked table of experiments/{spec.paper}/: give the copy another file "
                         f"name (e.g. {stem}_mine.yaml), so its runs and reports stay apart from the table's")


def _check_table(spec: TableSpec) -> None:
    path = spec.path
    _check_identity(spec)
    if spec.status == PENDING and not spec.pending_reason:
        fail(path, "pending_reason", "a pending table must say which components are missing")
    for index, metric in enumerate(spec.metrics):
        if not is_known_metric(metric):
            fail(path, f"metrics[{index}]", f"unknown metric '{metric}'; known: {sorted(METRIC_SCALES)} "
                                           f"or {PER_CLASS_PREFIX}<class>")
    names = spec.row_names()
    for index, row in enumerate(spec.rows):
        where = f"rows[{index}]"
        if row.name in names[:index]:
            fail(path, f"{where}.name", f"duplicate row name '{row.name}' (also rows[{names.index(row.name)}].name)")
        for metric in row.paper:
            if metric not in spec.metrics:
                fail(path, f"{where}.paper.{metric}", f"not one of the table's metrics {list(spec.metrics)}")
        for key, ref in (("eval_of", row.eval_of), ("init_from", row.init_from), ("baseline", row.baseline)):
            if ref is not None and ref not in names:
                fail(path, f"{where}.{key}", f"no row named '{ref}' in this table")
        key = "eval_of" if row.is_eval else "init_from"
        if row.source is not None and spec.row(row.source).is_eval:
            fail(path, f"{where}.{key}", f"'{row.source}' is itself eval-only; name the trained row")
        if row.source is not None and row.runnable and not spec.row(row.source).runnable:
            fail(path, f"{where}.{key}", f"'{row.source}' is not run (it has notes), so this row cannot run")
        if row.init_from is not None and row.name in lineage(spec, row.init_from):
            fail(path, f"{where}.init_from", f"'{row.init_from}' starts a cycle back to '{row.name}'")
    if spec.baseline is not None and spec.baseline not in names:
        fail(path, "baseline", f"no row named '{spec.baseline}' in this table")
    if spec.paper_values == DELTA and spec.baseline is None:
        fail(path, "baseline", "paper_values: delta needs the baseline row the deltas are measured from")


def lineage(spec: TableSpec, name: str) -> list[str]:
    """``name`` and the rows it is trained from (``init_from``), nearest first; stops at a repeat."""
    chain: list[str] = []
    current: str | None = name
    while current is not None and current not in chain and current in spec.row_names():
        chain.append(current)
        current = spec.row(current).init_from
    return chain


PAPER_CARD_FILE = "card.yaml"
PAPER_CARD_KEYS = ("paper", "card", "statements")


def load_paper_card(paper_dir: Path, paper: str | None = None) -> Protocol:
    """``experiments/<paper>/card.yaml``: the protocol card (and statements) every table of the paper starts
    from (empty without the file). ``paper``: the paper the card must name (default: the folder's name)."""
    path = paper_dir / PAPER_CARD_FILE
    if not path.is_file():
        return Protocol()
    node = _Mapping(read_yaml(path, PAPER_CARD_KEYS), path, "", PAPER_CARD_KEYS)
    expected = paper or paper_dir.name
    if node.text("paper", required=True) != expected:
        fail(path, "paper", f"must be '{expected}' (the paper of the tables beside it)")
    return Protocol(card=read_card(node, "card"), statements=read_statements(node, "statements"))


def card_folder(path: Path, paper: str) -> tuple[Path, str | None]:
    """Where the paper card of the spec at ``path`` is: beside a tracked spec; beside a copy when it has one, else
    the tracked ``experiments/<paper>/card.yaml`` (a variant keeps the paper's protocol)."""
    if is_tracked_spec(path):
        return path.parent, None
    return (path.parent if (path.parent / PAPER_CARD_FILE).is_file() else EXPERIMENTS_DIR / paper), paper


def load_spec(path: Path) -> TableSpec:
    """Read and validate one ``experiments/<paper>/t<N>.yaml`` (its card over the paper's ``card.yaml``), or a
    copy of one elsewhere (see :func:`_check_identity`)."""
    node = _Mapping(read_yaml(path, TABLE_KEYS), path, "", TABLE_KEYS)
    rows = node.get("rows", list, required=True) or fail(path, "rows", "list at least one row")
    spec = TableSpec(
        id=node.text("id", required=True),
        title=node.text("title", required=True),
        paper=node.text("paper", required=True),
        dataset=node.text("dataset", required=True),
        metrics=node.strings("metrics", unique=True) or fail(path, "metrics", "list at least one metric"),
        status=node.choice("status", (READY, PENDING), default=READY),
        pending_reason=node.text("pending_reason"),
        notes=node.text("notes"),
        base=node.strings("base"),
        protocol=load_paper_card(*card_folder(path, node.text("paper", required=True))).merged(
            _protocol(node, "protocol")),
        baseline=node.text("baseline"),
        paper_values=node.choice("paper_values", (ABSOLUTE, DELTA), default=ABSOLUTE),
        rows=tuple(_row(row, path, f"rows[{i}]") for i, row in enumerate(rows)),
        path=path,
    )
    check_overrides(spec.base, path, "base")
    _check_table(spec)
    return spec


def spec_files(root: Path = EXPERIMENTS_DIR) -> list[Path]:
    """Every ``<paper>/t<N>.yaml`` under ``root``, ordered by paper then table number."""
    files = [p for p in root.glob("*/t*.yaml") if TABLE_FILE.match(p.stem)]
    return sorted(files, key=lambda p: (p.parent.name, int(TABLE_FILE.match(p.stem).group(1))))


def load_all(root: Path = EXPERIMENTS_DIR) -> list[TableSpec]:
    return [load_spec(path) for path in spec_files(root)]


def load_table(table_id: str, root: Path = EXPERIMENTS_DIR) -> TableSpec:
    """The spec of ``<paper>.t<N>``, e.g. ``deeplabv3.t5``, or of a spec file given by its path (a ``.yaml``
    copy of a table outside experiments/, e.g. ``~/variants/t5_mine.yaml`` with id ``deeplabv3.t5_mine``)."""
    if table_id.endswith((".yaml", ".yml")):
        path = Path(table_id).expanduser()
        if not path.is_file():
            raise SpecError(f"{table_id}: no such spec file")
        return load_spec(path)
    paper, _, table = table_id.partition(".")
    path = root / paper / f"{table}.yaml"
    if not paper or not TABLE_FILE.match(table) or not path.is_file():
        known = ", ".join(f"{p.parent.name}.{p.stem}" for p in spec_files(root))
        raise SpecError(f"unknown table id '{table_id}' (no {display_path(path)}); known ids: {known}")
    return load_spec(path)


def load_profile(name: str, root: Path = PROFILES_DIR) -> Profile:
    """Read and validate ``experiments/profiles/<name>.yaml``."""
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in root.glob("*.yaml")))
        raise SpecError(f"unknown profile '{name}' (no {display_path(path)}); profiles: {known}")
    node = _Mapping(read_yaml(path, PROFILE_KEYS), path, "", PROFILE_KEYS)
    profile = Profile(
        name=name,
        description=node.text("description", required=True),
        path=path,
        overrides=node.strings("overrides"),
        eval_overrides=node.strings("eval_overrides"),
        drop=node.strings("drop", unique=True),
        check_protocol=node.get("check_protocol", bool, default=False),
        checkpoints=node.choice("checkpoints", CHECKPOINT_POLICIES, default="keep"),
        distributed=_distributed(node),
        evidence=node.get("evidence", bool, default=False),
    )
    check_overrides(profile.overrides, path, "overrides")
    check_overrides(profile.eval_overrides, path, "eval_overrides")
    for index, key in enumerate(profile.drop):
        if not CONFIG_KEY.match(key):
            fail(path, f"drop[{index}]", f"'{key}' is not a config group or key (e.g. data or data.crop_size)")
    return profile


def _distributed(node: _Mapping) -> Distributed | None:
    if not node.has("distributed"):
        return None
    sub = _Mapping(node.data["distributed"], node.path, node.key("distributed"), DISTRIBUTED_KEYS)
    most = sub.positive("max_processes", required=True)
    distributed = Distributed(max_processes=most, overrides=sub.strings("overrides"))
    check_overrides(distributed.overrides, node.path, sub.key("overrides"))
    return distributed


def profile_names(root: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in root.glob("*.yaml"))
