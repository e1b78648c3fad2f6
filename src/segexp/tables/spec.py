"""Paper-table specs and run profiles: the schema of ``experiments/<paper>/t<N>.yaml`` and
``experiments/profiles/<name>.yaml``, loaded into frozen dataclasses.

Validation is explicit: every error is a :class:`~segexp.tables.yaml_reader.SpecError` whose message starts with
the file and the full key at fault (``experiments/deeplabv3/t5.yaml: rows[2].paper.mIoU: expected a number, got
'x'``). The file is read by :mod:`segexp.tables.yaml_reader`; each override string passes
:mod:`segexp.tables.override_checks` (Hydra's grammar, allowed ``_target_`` packages unless ``--trust-targets``);
whether a row's overrides compose is checked by composing them (:mod:`segexp.tables.plan`). Metric names and units
live in :mod:`segexp.tables.units`, the folders in :mod:`segexp.tables.paths`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segexp.overrides import override_key
from segexp.tables.override_checks import check_overrides
from segexp.tables.paths import EXPERIMENTS_DIR, PROFILES_DIR, display_path, is_tracked_spec
from segexp.tables.units import MEASURABLE, METRIC_SCALES, PER_CLASS_PREFIX, is_known_metric
from segexp.tables.yaml_reader import SpecError, YamlMapping, fail, read_yaml

READY, PENDING = "ready", "pending"
ABSOLUTE, DELTA = "absolute", "delta"
CHECKPOINT_POLICIES = ("keep", "last", "none")
"""keep: every checkpoint; last: only last.ckpt; none: none once nothing needs them (smoke)."""
INIT_KEY = "model.init_from"
"""The training option a row's ``init_from`` sets to the source row's ``last.ckpt``."""
ROW_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_/-]*(\.[A-Za-z0-9_/-]+)*$")
"""A config group or node a profile may ``drop``: ``dataset``, ``data.crop_size``, ``hydra/launcher``."""
TABLE_FILE = re.compile(r"^t(\d+)$")
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


CARD_ENTRY_KEYS = ("value", "source", "paper")


def read_card(node: YamlMapping, name: str) -> Card:
    """The ``name`` mapping of ``node``: config key -> {value, source, paper}; every entry states its source,
    and an entry with ``paper`` (a deviation from the paper) must be a stated choice."""
    entries = node.get(name, dict, default={})
    card: Card = {}
    for key, data in entries.items():
        where = node.key(f"{name}.{key}")
        if not isinstance(key, str) or not CONFIG_KEY.match(key):
            fail(node.path, where, "expected a config key such as trainer.precision")
        entry = YamlMapping(data, node.path, where, CARD_ENTRY_KEYS)
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


def read_statements(node: YamlMapping, name: str) -> Statements:
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


def _protocol(node: YamlMapping, name: str) -> Protocol | None:
    if not node.has(name):
        return None
    sub = YamlMapping(node.data[name], node.path, node.key(name), PROTOCOL_KEYS)
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
    node = YamlMapping(data, path, where, ROW_KEYS)
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
    node = YamlMapping(read_yaml(path, PAPER_CARD_KEYS), path, "", PAPER_CARD_KEYS)
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
    node = YamlMapping(read_yaml(path, TABLE_KEYS), path, "", TABLE_KEYS)
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
    node = YamlMapping(read_yaml(path, PROFILE_KEYS), path, "", PROFILE_KEYS)
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


def _distributed(node: YamlMapping) -> Distributed | None:
    if not node.has("distributed"):
        return None
    sub = YamlMapping(node.data["distributed"], node.path, node.key("distributed"), DISTRIBUTED_KEYS)
    most = sub.positive("max_processes", required=True)
    distributed = Distributed(max_processes=most, overrides=sub.strings("overrides"))
    check_overrides(distributed.overrides, node.path, sub.key("overrides"))
    return distributed


def profile_names(root: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in root.glob("*.yaml"))
