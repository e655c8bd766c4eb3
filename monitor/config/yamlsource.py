"""Safe YAML reading: plain data, the line of every key, `${VAR}` substitution, problems."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from monitor.errors import ConfigProblem

#: A key path into the document: ("feeds", 2, "url").
KeyPath = tuple[str | int, ...]

_STD = "tag:yaml.org,2002:"
_SAFE_SCALARS = {_STD + t for t in ("null", "bool", "int", "float", "str")}
# Nodes built per document; aliases can make a small file expand exponentially.
_NODE_BUDGET = 100_000
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


def format_path(path: KeyPath) -> str:
    """("feeds", 2, "url") -> "feeds[2].url"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Reporter:
    """Collects problems for one file, placing each at the line of its key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[ConfigProblem] = []
        # Paths already reported while reading YAML: later complaints there would be echoes.
        self._settled: set[KeyPath] = set()
        # Substituted variables per path, so their values are masked in messages.
        self._secrets: dict[KeyPath, list[tuple[str, str]]] = {}

    def line(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor with a known line; 0 if none."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 0

    def add(self, path: KeyPath, message: str, *, line: int | None = None) -> None:
        if path in self._settled:
            return
        for where, pairs in self._secrets.items():
            if where[: len(path)] == path or path[: len(where)] == where:
                for name, value in pairs:
                    message = _mask(message, name, value)
        found = self.line(path) if line is None else line
        self.problems.append(ConfigProblem(self.file, found, format_path(path), message))

    def settle(self, path: KeyPath, message: str, line: int) -> None:
        """Report a reading problem and silence later ones at the same path."""
        self.add(path, message, line=line)
        self._settled.add(path)

    def secret(self, path: KeyPath, name: str, value: str) -> None:
        self._secrets.setdefault(path, []).append((name, value))

    @property
    def secret_values(self) -> frozenset[str]:
        """Every value substituted from the environment."""
        return frozenset(value for pairs in self._secrets.values() for _, value in pairs)


def _mask(message: str, name: str, value: str) -> str:
    # Messages may quote a value escaped (repr) or cut short, so the longest prefix that shows
    # up is masked; short values only when whole.
    for text in (value, repr(value)[1:-1]):
        for end in range(len(text), min(len(text), 8) - 1, -1):
            if end and text[:end] in message:
                message = message.replace(text[:end], "${" + name + "}")
                break
    return message


def read_yaml(file: Path, env: Mapping[str, str], report: Reporter) -> dict[str, object] | None:
    """The document's top-level mapping, or None when nothing usable could be read."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        report.add((), f"cannot read config file: {exc.strerror or exc}", line=0)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        report.add((), "cannot read config file: not UTF-8 text", line=line)
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = None if root is None else _Walker(env, report).value(root, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        report.add((), f"YAML syntax error: {_reason(exc)}", line=mark.line + 1 if mark else 0)
        return None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        report.add((), f"YAML syntax error: bad character #x{exc.character:04x}", line=line)
        return None
    except yaml.YAMLError as exc:
        report.add((), f"YAML error: {exc}", line=0)
        return None
    except RecursionError:
        report.add((), "YAML error: nesting too deep", line=0)
        return None
    if root is None:
        report.add((), "the file is empty: expected keys such as feeds:, rules:", line=0)
        return None
    if not isinstance(data, dict):
        got = kind(data)
        report.add(
            (), f"the top level must be a mapping with keys such as feeds:, got {got}", line=1
        )
        return None
    report.lines[()] = 1
    return data


def _reason(exc: yaml.MarkedYAMLError) -> str:
    reason = exc.problem or exc.context or "invalid YAML"
    if exc.context and reason.startswith("but "):
        reason = f"{exc.context} {reason}"
    if reason == "mapping values are not allowed here":
        reason += " (quote a value that contains ': ' or ends with ':', e.g. \"memory:\")"
    return reason


def kind(value: object) -> str:
    """How a value's type reads in a message: "a mapping", "a list", "a string"..."""
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a whole number"}
    if value is None:
        return "an empty value"
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


def _tag(node: Node) -> str:
    return "!!" + node.tag[len(_STD) :] if node.tag.startswith(_STD) else node.tag


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Walker:
    """Turns composed nodes into plain data, recording lines; never runs YAML constructors
    beyond the safe scalar ones."""

    def __init__(self, env: Mapping[str, str], report: Reporter) -> None:
        self.env = env
        self.report = report
        self.budget = _NODE_BUDGET
        self.active: set[int] = set()
        self.scalars = SafeConstructor()

    def value(self, node: Node, path: KeyPath) -> object:
        self.budget -= 1
        if self.budget < 0:
            if self.budget == -1:
                message = "document too large (aliases expand too far)"
                self.report.settle(path, message, _line(node))
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.report.settle(path, "recursive YAML alias", _line(node))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _STD + "seq":
                return self.sequence(node, path)
            if isinstance(node, MappingNode) and node.tag == _STD + "map":
                return self.mapping(node, path)
            self.report.settle(path, f"unknown YAML tag '{_tag(node)}'", _line(node))
            return None
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: KeyPath) -> object:
        if node.tag == _STD + "timestamp":
            # Nothing in the schema is a date; keep what the user typed.
            return str(node.value)
        if node.tag not in _SAFE_SCALARS:
            self.report.settle(path, f"unknown YAML tag '{_tag(node)}'", _line(node))
            return None
        try:
            value = self.scalars.construct_object(node)
        except (ValueError, yaml.YAMLError):
            self.report.settle(path, f"value does not fit its tag '{_tag(node)}'", _line(node))
            return None
        return self.substitute(value, path, _line(node)) if isinstance(value, str) else value

    def substitute(self, text: str, path: KeyPath, line: int) -> str:
        def replace(found: re.Match[str]) -> str:
            name = found.group(1)
            whole = found.group(0)
            if whole == "$${":
                return "${"
            if name is None:
                message = "'${' must start ${NAME} (write $${ for a literal ${)"
                self.report.settle(path, message, line)
                return whole
            if name not in self.env:
                self.report.settle(path, f"environment variable {name} is not set", line)
                return whole
            self.report.secret(path, name, self.env[name])
            return self.env[name]

        return _REF.sub(replace, text)

    def sequence(self, node: SequenceNode, path: KeyPath) -> list[object]:
        out: list[object] = []
        for index, item in enumerate(node.value):
            self.report.lines[(*path, index)] = _line(item)
            out.append(self.value(item, (*path, index)))
        return out

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, object]:
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key, value in node.value:
            if key.tag == _STD + "merge":
                merged.extend(self.merge_sources(value, path))
            else:
                explicit.append((key, value))
        out: dict[str, object] = {}
        first: dict[str, int] = {}
        for key, value in explicit:
            if not isinstance(key, ScalarNode):
                self.report.settle(path, "mapping keys must be plain text", _line(key))
                continue
            name = str(key.value)
            if name in first:
                message = f"duplicate key '{name}' (first at line {first[name]})"
                self.report.add((*path, name), message, line=_line(key))
                continue
            first[name] = _line(key)
            self.report.lines[(*path, name)] = _line(key)
            out[name] = self.value(value, (*path, name))
        # Merged (`<<: *base`) keys fill in only what the mapping does not set itself.
        for key, value in merged:
            name = str(key.value)
            if isinstance(key, ScalarNode) and name not in out:
                self.report.lines[(*path, name)] = _line(key)
                out[name] = self.value(value, (*path, name))
        return out

    def merge_sources(self, node: Node, path: KeyPath) -> list[tuple[Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.report.settle(path, "'<<' must merge a mapping or mappings", _line(node))
            elif id(source) in self.active:
                self.report.settle(path, "recursive YAML alias", _line(node))
            else:
                self.active.add(id(source))
                for key, value in source.value:
                    if key.tag == _STD + "merge":
                        pairs.extend(self.merge_sources(value, path))
                    else:
                        pairs.append((key, value))
                self.active.discard(id(source))
        return pairs
