"""Reading a spec or profile YAML file with errors a user can act on: every problem is a :class:`SpecError`
whose message starts with the file and the full key at fault. :func:`read_yaml` refuses unparsable files,
empty files and keys written twice in one mapping (PyYAML would keep the last silently); :class:`YamlMapping`
gives typed getters over one mapping and refuses unknown keys with a "did you mean"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from segexp.tables.paths import display_path
from segexp.validation import closest_key


class SpecError(ValueError):
    """A table spec or profile that cannot be used, named by file and key."""


def fail(path: Path | str, key: str, message: str) -> NoReturn:
    raise SpecError(f"{display_path(path)}: {key}: {message}")


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


class YamlMapping:
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
