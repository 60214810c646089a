"""
Configuration files in TOML or YAML, parsed together with the line where every key starts, so that a validator can
name the file, line and key of each problem (``budget.stages``, ``defenses[2].sigma``).

:func:`read_document` reads a ``.toml`` / ``.yaml`` / ``.yml`` file, :func:`parse_document` a string; both return a
:class:`LocatedDocument`. Syntax errors and duplicated YAML keys raise :class:`ConfigError` with their line. The audit
(:mod:`art_gifd.audit.config`) and the benchmark runner (:mod:`art_gifd.bench.config`) read their files with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A key path inside a configuration, e.g. ``("defenses", 2, "sigma")``.
KeyPath = tuple[str | int, ...]
#: File suffixes → format names of :func:`parse_document`.
FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


class ConfigError(ValueError):
    """A configuration problem, located by file, line and key path."""

    def __init__(self, message: str, key: str | None = None, line: int | None = None, source: str | None = None):
        """
        :param message: What is wrong and how to fix it.
        :param key: The key path at fault, e.g. ``defenses[2].sigma``.
        :param line: 1-based line of the key in the file.
        :param source: The file name.
        """
        self.message, self.key, self.line, self.source = message, key, line, source
        where = ", ".join(p for p in (source, f"line {line}" if line else None) if p)
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key + ': ' if key else ''}{message}")


def format_key(path: KeyPath) -> str:
    """``("defenses", 2, "sigma")`` → ``defenses[2].sigma`` (the empty path → ``""``)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class LocatedDocument:
    """A parsed configuration document and the line where each key path starts."""

    data: Any
    lines: dict[KeyPath, int]
    source: str

    def line_of(self, path: KeyPath) -> int | None:
        """Line of ``path``, or of its longest located prefix (``None`` if nothing is located)."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A :class:`ConfigError` for ``path``."""
        return ConfigError(message, format_key(path) or None, self.line_of(path), self.source)


def read_document(path: str | Path) -> LocatedDocument:
    """
    Read and parse a ``.toml``, ``.yaml`` or ``.yml`` file (UTF-8), keeping the line of every key.

    :param path: The file; its name is the document's :attr:`~LocatedDocument.source`.
    :return: The parsed document.
    :raises ConfigError: For another suffix, a syntax error (with its line) or a duplicated YAML key.
    :raises OSError: If the file cannot be read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"unknown configuration format '{suffix}': use a .toml, .yaml or .yml file", source=str(path))
    return parse_document(path.read_text(encoding="utf-8"), FORMATS[suffix], source=str(path))


def parse_document(text: str, fmt: str, source: str = "<config>") -> LocatedDocument:
    """
    Parse YAML or TOML text, keeping the line of every key.

    :param text: The document.
    :param fmt: ``"yaml"`` or ``"toml"``.
    :param source: Name used in error messages.
    :return: The parsed document (an empty YAML document is an empty mapping).
    :raises ConfigError: On a syntax error (with its line) or a duplicated key.
    :raises ValueError: For another ``fmt``.
    """
    if fmt == "yaml":
        return _parse_yaml(text, source)
    if fmt == "toml":
        return _parse_toml(text, source)
    raise ValueError(f"Unknown configuration format {fmt!r}: use 'yaml' or 'toml'.")


#: Floats as YAML 1.2 spells them: PyYAML's YAML 1.1 resolver reads ``5e-2`` or ``1e3`` (no dot) as strings.
_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _yaml_loader() -> type:
    """A safe YAML loader that also resolves YAML 1.2 floats."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    return Loader


def _parse_yaml(text: str, source: str) -> LocatedDocument:
    import yaml

    loader = _yaml_loader()
    try:
        root = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:  # marked errors carry the position; reader errors (bad characters) do not
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(
            f"YAML syntax error: {problem}", line=mark.line + 1 if mark else None, source=source
        ) from None
    lines: dict[KeyPath, int] = {}

    def walk(node: Any, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    raise ConfigError(
                        "duplicated key: keep one", format_key((*path, key)), key_node.start_mark.line + 1, source
                    )
                seen.add(key)
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return LocatedDocument({} if data is None else data, lines, source)


def _parse_toml(text: str, source: str) -> LocatedDocument:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        raise ConfigError(
            f"TOML syntax error: {exc}", line=int(match.group(1)) if match else None, source=source
        ) from None
    return LocatedDocument(data, _toml_lines(text), source)


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (quotes respected)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text.strip()))


def _bracket_balance(text: str) -> int:
    quote, depth = None, 0
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return depth


def _toml_lines(text: str) -> dict[KeyPath, int]:
    """
    Line of every key of a TOML document that parsed: table headers, arrays of tables (by index), ``key = value``
    lines with dotted keys, the first level of inline tables and inline tables listed one per line in an array.
    """
    lines: dict[KeyPath, int] = {}
    counters: dict[KeyPath, int] = {}  # array-of-tables path -> index of its current element
    prefix: KeyPath = ()
    open_array: KeyPath | None = None  # key path of a multi-line array value being read
    open_items, depth = 0, 0

    def resolve(parts: tuple[str, ...]) -> KeyPath:
        path: KeyPath = ()
        for part in parts:
            path = (*path, part)
            if path in counters:
                path = (*path, counters[path])
        return path

    def inline_keys(path: KeyPath, text: str, number: int) -> None:
        body = text.strip()
        if body.startswith("{"):
            for key in re.findall(r"[{,]\s*([A-Za-z0-9_\-\"']+)\s*=", body):
                lines.setdefault((*path, key.strip("\"'")), number)

    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if depth > 0:
            if open_array is not None and depth == 1 and line.startswith("{"):
                lines[(*open_array, open_items)] = number
                inline_keys((*open_array, open_items), line, number)
                open_items += 1
            depth += _bracket_balance(line)
            continue
        if not line:
            continue
        if match := re.fullmatch(r"\[\[\s*(.+?)\s*\]\]", line):
            *parents, last = _split_key(match.group(1))
            base = (*resolve(tuple(parents)), last)
            counters[base] = counters.get(base, -1) + 1
            lines.setdefault(base, number)
            prefix = (*base, counters[base])
            lines[prefix] = number
        elif match := re.fullmatch(r"\[\s*(.+?)\s*\]", line):
            prefix = resolve(_split_key(match.group(1)))
            lines.setdefault(prefix, number)
        elif match := re.match(r"([A-Za-z0-9_\-\"'. ]+?)\s*=(.*)$", line):
            path = (*prefix, *_split_key(match.group(1)))
            for end in range(len(prefix) + 1, len(path) + 1):
                lines.setdefault(path[:end], number)
            value = match.group(2)
            inline_keys(path, value, number)
            depth = _bracket_balance(value)
            open_array, open_items = (path, 0) if depth > 0 and value.strip().startswith("[") else (None, 0)
    return lines
