"""Protocol cards: every setting that decides a table's result, the value a row composes, and its source.

A card (``experiments/<paper>/card.yaml``, then a table's ``protocol.card``, then a row's) maps a config key to
``{value, source, paper}``: the value the ``full`` profile composes, where it comes from (the paper's section,
or ``chosen: <reason>`` where the paper is silent or where segexp deviates), and the paper's own value when
the entry is a stated deviation. :data:`CARD_SETTINGS` lists the settings every card states.

:func:`card_lines` sets a composed row config against its card: a carded key the row itself sets (its
``overrides`` / ``eval_overrides``, or those of the row it evaluates) is the row's ablated variable; any other
key whose composed value differs from the card contradicts it. The ``full`` profile (``check_protocol``) refuses
such rows unless ``--allow-deviations`` is given (:mod:`segexp.tables.runner`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segexp.overrides import override_key
from segexp.tables.spec import Card, CardEntry, Row, Statements, TableSpec

EFFECTIVE_BATCH = "effective_batch"
"""The one derived card key: data.batch_size x devices x nodes x accumulated batches."""

CARD_SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("precision", ("trainer.precision",)),
    ("batch norm", ("model.bn_momentum", "model.freeze_bn", "backbone.frozen_bn", "trainer.sync_batchnorm")),
    ("label resolution", ("model.downsample_labels",)),
    ("crop", ("data.crop_size",)),
    ("train scales and flip", ("data.scale_range", "data.scale_step", "data.hflip")),
    ("optimiser", ("schedule.lr", "schedule.momentum", "schedule.weight_decay", "schedule.no_decay_norm_bias",
                   "schedule.head_lr_mult", "schedule.power")),
    ("iterations", ("trainer.max_steps",)),
    ("batch", (EFFECTIVE_BATCH,)),
    ("pretrained weights", ("backbone.pretrained",)),
    ("output stride", ("backbone.output_stride", "model.eval_output_stride")),
    ("eval geometry", ("inference.mode", "inference.pad_to")),
    ("eval scales and flip", ("inference.scales", "inference.flip")),
)
"""(setting, config keys) that every card states, in the order a card is printed."""

CARD_KEYS: tuple[str, ...] = tuple(key for _, keys in CARD_SETTINGS for key in keys)
EVAL_CARD_KEYS = ("inference.", "trainer.precision", "model.eval_output_stride")
"""Keys (or prefixes) an eval-only row takes from its own segexp-eval config; the rest from the row it evaluates."""
ABSENT = "<absent>"
"""The composed value of a key the config does not have (e.g. ``backbone.frozen_bn`` of VGG-16)."""


def setting_of(key: str) -> str:
    """The human name of a carded key (``trainer.precision`` -> ``precision``); the key itself if not listed."""
    return next((name for name, keys in CARD_SETTINGS if key in keys), key)


def is_eval_key(key: str) -> bool:
    return any(key == k or key.startswith(k) for k in EVAL_CARD_KEYS)


def _covers(override: str, key: str) -> bool:
    """Does an override set ``key`` itself (``inference.scales=[1]`` sets ``inference.scales``)? A config group
    choice (``backbone=resnet101``, ``inference=slide``) does not: the keys of the chosen option are still
    checked against the card, so a row that swaps a group cannot carry an uncarded setting in with it."""
    return override_key(override) == key


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def composed_value(cfg: DictConfig, key: str, batch: int | None = None) -> tuple[Any, Any]:
    """(resolved, as written) value of ``key`` in ``cfg``; :data:`ABSENT` when the config has no such key.
    ``effective_batch`` is ``batch`` (computed by the planner; None when the device count is only known on the
    GPU machine)."""
    if key == EFFECTIVE_BATCH:
        return batch, batch
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not OmegaConf.is_dict(parent) or leaf not in parent:
        return ABSENT, ABSENT
    written = OmegaConf.to_container(parent, resolve=False)[leaf]
    return _plain(parent[leaf]), written


def same_value(composed: Any, carded: Any) -> bool:
    """Equal as YAML values: lists element-wise, numbers to float rounding (1e-4 == 0.0001), else ==."""
    if isinstance(composed, (list, tuple)) and isinstance(carded, (list, tuple)):
        return len(composed) == len(carded) and all(same_value(a, b) for a, b in zip(composed, carded))
    if isinstance(composed, bool) or isinstance(carded, bool):
        return composed is carded
    if isinstance(composed, (int, float)) and isinstance(carded, (int, float)):
        return math.isclose(float(composed), float(carded), rel_tol=1e-9, abs_tol=1e-12)
    return composed == carded


@dataclass(frozen=True)
class CardLine:
    """One carded key of one row: what the row composes against what its card says."""

    key: str
    composed: Any
    entry: CardEntry | None
    set_by_row: bool = False

    @property
    def setting(self) -> str:
        return setting_of(self.key)

    @property
    def contradicts(self) -> bool:
        """The row composes another value than its card, without the row ablating that key."""
        return self.entry is not None and not self.set_by_row and not same_value(self.composed, self.entry.value)

    def status(self) -> str | None:
        """What the line is when it is not simply the card's value (None then): set by the row, not carded, a
        contradiction of the card, or a stated deviation from the paper."""
        entry = self.entry
        if self.set_by_row:
            return "set by the row (its ablated setting)"
        if entry is None:
            return "not carded"
        if self.contradicts:
            return f"CONTRADICTS the card ({format_value(entry.value)}: {entry.source})"
        if entry.deviates:
            return f"deviates from the paper's {format_value(entry.paper)}: {entry.source}"
        return None

    def problem(self) -> str:
        assert self.entry is not None
        return (f"{self.key}={format_value(self.composed)} contradicts the protocol card "
                f"({format_value(self.entry.value)}; {self.entry.source})")


def _matches(composed: tuple[Any, Any], entry: CardEntry | None) -> Any:
    """The composed value to show: as written when that is what the card states (``${data_dir}/...``)."""
    resolved, written = composed
    if entry is not None and not same_value(resolved, entry.value) and same_value(written, entry.value):
        return written
    return resolved


def ablated_keys(spec: TableSpec, row: Row) -> list[str]:
    """The overrides through which ``row`` sets keys itself: its own, and for an eval-only row also the
    training overrides of the row it evaluates (and their ``init_from`` sources)."""
    overrides = list(row.eval_overrides if row.is_eval else row.overrides)
    source = row.source
    while source is not None:
        overrides += spec.row(source).overrides
        source = spec.row(source).init_from
    return overrides


def card_lines(spec: TableSpec, row: Row, train_cfg: DictConfig, batch: int | None, applied: Sequence[str],
               eval_cfg: DictConfig | None = None) -> list[CardLine]:
    """Every carded key of ``row`` (:data:`CARD_KEYS`, then the card's others) against the composed configs: the
    training config of the row (of the row it evaluates, for an eval-only row) with its effective ``batch``
    and, for an eval-only row, its segexp-eval config for the eval keys. A key counts as the row's own only
    through a row override that survived into the ``applied`` overrides (a profile's or the command line's
    replacement of it is checked against the card)."""
    card = spec.protocol_of(row).card
    trained_card = spec.protocol_of(spec.row(row.eval_of)).card if row.is_eval else card
    overrides = [o for o in ablated_keys(spec, row) if o in applied]
    lines = []
    for key in [*CARD_KEYS, *(k for k in {**trained_card, **card} if k not in CARD_KEYS)]:
        evaluated = row.is_eval and is_eval_key(key)
        cfg = eval_cfg if eval_cfg is not None and is_eval_key(key) else train_cfg
        own = [o for o in row.eval_overrides if o in applied] if evaluated else overrides
        # an eval-only row's training settings are those of the row it evaluates, carded by that row's protocol
        entry = card.get(key) if evaluated or not row.is_eval else trained_card.get(key)
        lines.append(CardLine(key=key, composed=_matches(composed_value(cfg, key, batch), entry), entry=entry,
                              set_by_row=any(_covers(o, key) for o in own)))
    return lines


def contradictions(lines: Sequence[CardLine]) -> list[str]:
    return [line.problem() for line in lines if line.contradicts]


def missing_settings(card: Card) -> list[str]:
    """The keys of :data:`CARD_SETTINGS` a card does not state."""
    return [key for key in CARD_KEYS if key not in card]


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def card_table(card: Card) -> list[str]:
    """A card as markdown table lines: setting, key, value, the paper's value where it deviates, source."""
    lines = ["| setting | key | value | paper | source |", "|---|---|---|---|---|"]
    for key in [*CARD_KEYS, *(k for k in card if k not in CARD_KEYS)]:
        entry = card.get(key)
        if entry is None:
            lines.append(f"| {setting_of(key)} | `{key}` | (not carded) | | |")
            continue
        paper = format_value(entry.paper) if entry.deviates else ""
        lines.append(f"| {setting_of(key)} | `{key}` | {format_value(entry.value)} | {paper} | {entry.source} |")
    return lines


def statement_lines(statements: Statements) -> list[str]:
    """Stated choices that no single config key holds, as markdown list lines (none: no lines)."""
    if not statements:
        return []
    return ["", "Stated, not one config key:", *(f"- **{name}**: {text}" for name, text in statements.items())]
