"""
Configuration files in TOML or YAML, parsed together with the line where every key starts, so that a validator can
name the file, line and key of each problem (``budget.stages``, ``defenses[2].sigma``).

:func:`read_document` reads a ``.toml`` / ``.yaml`` / ``.yml`` file, :func:`parse_document` a string; both return a
:class:`LocatedDocument`. Syntax errors and duplicated YAML keys raise :class:`ConfigError` with their line.
:class:`Checker` then reads the document and collects every problem with its key and line, to raise them together.
The audit (:mod:`art_gifd.audit.config`) and the benchmark runner (:mod:`art_gifd.bench.config`) read their files
with both.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from art_gifd.validation import check_integer, check_number

#: A key path inside a configuration, e.g. ``("defenses", 2, "sigma")``.
KeyPath = tuple[str | int, ...]
#: File suffixes → format names of :func:`parse_document`.
FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


@dataclass
class ConfigProblem:
    """One problem of a configuration: the key it concerns, what is wrong (and how to fix it), the line where known."""

    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.key}: {self.message}"


class ConfigError(ValueError):
    """
    An invalid configuration: :attr:`problems` lists every problem found, each with its key and line.

    The message names the file and lists the problems, one per line (``file, line 7: defenses[1].sigma: ...``).
    """

    #: What the configuration is, in the message (``"benchmark configuration"``, ``"audit config"``).
    what = "configuration"

    def __init__(self, problems: list[ConfigProblem], source: str | Path | None = None) -> None:
        """
        :param problems: The problems, each naming its key (at least one).
        :param source: The file, if any.
        """
        self.problems = problems
        self.source = source
        origin = f" '{source}'" if source is not None else ""
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        prefix = f"{source}, " if source is not None else ""
        listed = "\n".join(f"  - {prefix}{p}" for p in problems)
        super().__init__(f"Invalid {self.what}{origin} ({count}):\n{listed}")

    @property
    def keys(self) -> list[str]:
        """The keys named by the problems."""
        return [p.key for p in self.problems]

    @property
    def key(self) -> str:
        """The key of the first problem."""
        return self.problems[0].key

    @property
    def line(self) -> int | None:
        """The line of the first problem."""
        return self.problems[0].line

    @property
    def message(self) -> str:
        """What is wrong, for the first problem."""
        return self.problems[0].message


def file_error(message: str, source: str | Path | None, line: int | None = None) -> ConfigError:
    """A :class:`ConfigError` of the file as a whole (key ``(file)``): missing, unreadable, of another format."""
    return ConfigError([ConfigProblem("(file)", message, line)], source)


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

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        """A :class:`ConfigProblem` of ``path``, located."""
        return ConfigProblem(format_key(path) or "(top level)", message, self.line_of(path))

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A :class:`ConfigError` of one problem of ``path``."""
        return ConfigError([self.problem(path, message)], self.source)


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
        raise file_error(f"unknown configuration format '{suffix}': use a .toml, .yaml or .yml file", str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark some editors write is not content
    except UnicodeDecodeError as err:
        message = f"not a UTF-8 text file ({err.reason} at byte {err.start}): give a TOML or YAML file"
        raise file_error(message, str(path)) from None
    return parse_document(text, FORMATS[suffix], source=str(path))


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


#: The spellings of a boolean in YAML 1.2, and their values.
_YAML12_BOOLEANS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def _yaml_loader() -> type:
    """
    A safe YAML loader that reads numbers and booleans as YAML 1.2 does: ``5e-2`` is a float, ``010`` is ten (PyYAML's
    YAML 1.1 reads it as octal eight), ``1:30`` a string (not the sexagesimal 90), and only ``true`` / ``false`` are
    booleans (``yes``, ``no``, ``on``, ``off`` stay strings, so a label ``no`` is not ``False``).
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def integer(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
        text = loader.construct_scalar(node)
        if ":" in text:
            return text
        if re.fullmatch(r"[-+]?0[0-9_]+", text):
            return int(text.replace("_", ""), 10)
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    def boolean(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool | str:
        text = loader.construct_scalar(node)
        return _YAML12_BOOLEANS.get(text, text)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    Loader.add_constructor("tag:yaml.org,2002:int", integer)
    Loader.add_constructor("tag:yaml.org,2002:bool", boolean)
    return Loader


#: Most values (keys, items and scalars, aliases counted as often as they are used) a YAML configuration may expand to:
#: each alias is walked wherever it is used, so nested aliases could otherwise multiply a short file exponentially.
MAX_YAML_VALUES = 100_000


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """Values ``node`` stands for with every alias expanded, memoised per node (linear in the file's own size)."""
    import yaml

    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_YAML_VALUES + 1  # an alias met again before its anchor is finished: a cycle, refused
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def _parse_yaml(text: str, source: str) -> LocatedDocument:
    import yaml

    loader = _yaml_loader()
    try:
        root = yaml.compose(text, Loader=loader)
        if root is not None and _expanded_size(root, {}) > MAX_YAML_VALUES:
            raise file_error(
                f"YAML aliases expand this file to more than {MAX_YAML_VALUES:,} values, or an alias refers to its "
                "own anchor: write the repeated parts out, or nest fewer aliases.",
                source,
            )
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:  # marked errors carry the position; reader errors (bad characters) do not
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise file_error(f"YAML syntax error: {problem}", source, mark.line + 1 if mark else None) from None
    lines: dict[KeyPath, int] = {}

    def walk(node: Any, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    problem = ConfigProblem(
                        format_key((*path, key)), "duplicated key: keep one", key_node.start_mark.line + 1
                    )
                    raise ConfigError([problem], source)
                seen.add(key)
                lines[(*path, key)] = key_node.start_mark.line + 1
                if key_node.tag.endswith(":int") and re.fullmatch(r"[0-9]+", key):  # read as a number key
                    lines[(*path, int(key))] = key_node.start_mark.line + 1
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
        raise file_error(f"TOML syntax error: {exc}", source, int(match.group(1)) if match else None) from None
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

    string_end: str | None = None  # the closing quotes of a multi-line string being read
    for number, raw in enumerate(text.splitlines(), start=1):
        if string_end is not None:  # inside a multi-line string: no key starts here
            if string_end in raw:
                string_end = None
            continue
        for quotes in ('"""', "'''"):
            if raw.count(quotes) % 2:  # opens a multi-line string that ends on a later line
                string_end = quotes
                raw = raw[: raw.index(quotes)] + '""'
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
        elif match := re.match(r"((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-. ])+?)\s*=(.*)$", line):
            path = (*prefix, *_split_key(match.group(1)))
            for end in range(len(prefix) + 1, len(path) + 1):
                lines.setdefault(path[:end], number)
            value = match.group(2)
            inline_keys(path, value, number)
            depth = _bracket_balance(value)
            open_array, open_items = (path, 0) if depth > 0 and value.strip().startswith("[") else (None, 0)
    return lines


# --------------------------------------------------------------------------------------------------------- checking


def open_config(
    config: str | Path | Mapping[str, Any], error: type[ConfigError] = ConfigError
) -> tuple[Path | None, Checker]:
    """
    Read a configuration file that must hold a table of keys, or take the same content as a mapping, and return the
    file (``None`` for a mapping) and a :class:`Checker` over it. Relative paths resolve against the file's folder
    (for a mapping: the current directory).

    :param config: A ``.toml`` / ``.yaml`` / ``.yml`` file, or a mapping.
    :param error: The :class:`ConfigError` class to raise, here and by the checker.
    :raises ConfigError: (of class ``error``) If the file is missing, of another format, not valid TOML/YAML (with
                         the line), repeats a YAML key, or holds no table.
    """
    if isinstance(config, Mapping):
        return None, Checker(LocatedDocument(dict(config), {}, "<mapping>"), Path.cwd(), error)
    source = Path(config)
    if not source.is_file():
        what = "a folder, not a file" if source.is_dir() else "not found"
        raise error([ConfigProblem("(file)", f"config file '{source}': {what}.")], source)
    try:
        document = read_document(source)
    except ConfigError as err:
        raise error(err.problems, source) from None
    if not isinstance(document.data, dict):
        problem = f"the file must hold a table of keys, got {type(document.data).__name__}."
        raise error([ConfigProblem("(file)", problem)], source)
    return source, Checker(document, source.resolve().parent, error)


class Stop(Exception):
    """Ends the check of one entry or section at its first problem (:meth:`Checker.section` records it)."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


#: The default of :meth:`Checker.get` for a key that must be given.
REQUIRED = object()


class Checker:
    """
    Reads a :class:`LocatedDocument` and collects every problem, each with its key and line, so that one pass over a
    file reports all of them (the audit and the benchmark configurations are both read with it).

    Two styles, both collecting: :meth:`get` and :meth:`table` record a problem and go on (returning ``None`` or the
    default), for keys that nothing else depends on; the raising readers (:meth:`integer`, :meth:`string`, …) end the
    check of one entry at its first problem, inside :meth:`section`, which records it and goes on with the next entry.
    :meth:`raise_problems` raises them all as one :class:`ConfigError`.
    """

    def __init__(self, document: LocatedDocument, base: Path, error: type[ConfigError] = ConfigError) -> None:
        """
        :param document: The parsed configuration.
        :param base: Folder against which relative paths resolve (the file's folder).
        :param error: The :class:`ConfigError` class to raise.
        """
        self.document = document
        self.base = base
        self.error = error
        self.problems: list[ConfigProblem] = []

    # collecting readers

    def add(self, path: KeyPath, message: str) -> None:
        """Record a problem of ``path``."""
        self.problems.append(self.document.problem(path, message))

    def failed_under(self, prefix: KeyPath) -> bool:
        """Whether a problem was recorded for ``prefix`` or a key below it."""
        key = format_key(prefix) or "(top level)"
        return any(p.key == key or p.key.startswith((key + ".", key + "[")) for p in self.problems)

    def table(self, data: Any, path: KeyPath, known: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        """
        ``data`` as a table whose keys must be among ``known`` (an unknown key is a problem, with the closest known
        one suggested) and include ``required``; ``None`` is an empty table, anything else a problem and ``{}``.
        """
        table, problems = _table_problems(data, path, known, required)
        for where, message in problems:
            self.add(where, message)
        return table

    def get(
        self,
        data: Mapping[str, Any],
        path: KeyPath,
        name: str,
        convert: Callable[[Any], Any],
        default: Any = REQUIRED,
        hint: str = "",
    ) -> Any:
        """
        Read and convert a value; a missing required key or a value ``convert`` rejects (``ValueError``) is a problem.

        :return: The converted value, the default, or ``None`` after a problem.
        """
        if name not in data:
            if default is REQUIRED:
                self.add((*path, name), "missing (required)." + (f" {hint}" if hint else ""))
                return None
            return default
        try:
            return convert(data[name])
        except ValueError as err:
            self.add((*path, name), str(err))
            return None

    def path(self, value: Any, kind: str = "file", what: str = "") -> Path:
        """A path string resolved against the config's folder; it must exist as a ``kind`` (file or folder)."""
        if not isinstance(value, str) or not value.strip():
            found = "is empty" if isinstance(value, str) else f"must be a path (a string), got {value!r}"
            raise ValueError(f"{found}." + (f" Set it to {what}." if what else ""))
        resolved = (self.base / Path(value).expanduser()).resolve()
        if not (resolved.is_file() if kind == "file" else resolved.is_dir()):
            other = "folder" if kind == "file" else "file"
            found = (
                f"'{resolved}' is a {other}, not a {kind}" if resolved.exists() else f"{kind} not found: '{resolved}'"
            )
            raise ValueError(f"{found}." + (f" Set it to {what}." if what else ""))
        return resolved

    def raise_problems(self) -> None:
        """Raise every recorded problem as one error, in the order of the file (nothing if there is none)."""
        if self.problems:
            in_file_order = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))
            raise self.error(in_file_order, self.document.source)

    # raising readers, for the entries checked inside section()

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """Record the :class:`Stop` that ends the block's checks, and go on after it."""
        try:
            yield
        except Stop as stop:
            self.add(stop.path, stop.message)

    def need(self, value: Any, path: KeyPath, convert: Callable[[Any], Any]) -> Any:
        """``convert(value)``, or :class:`Stop` with the converter's message."""
        try:
            return convert(value)
        except ValueError as err:
            raise Stop(path, str(err)) from None

    def existing(self, value: Any, path: KeyPath, kind: str, what: str) -> str:
        """:meth:`path` as a string, or :class:`Stop` naming ``what`` the key must be set to."""
        try:
            return str(self.path(value, kind, what))
        except ValueError as err:
            raise Stop(path, str(err)) from None

    def strict_table(self, value: Any, path: KeyPath, known: Sequence[str], required: Sequence[str] = ()) -> dict:
        """:meth:`table`, but :class:`Stop` at its first problem."""
        table, problems = _table_problems(value, path, known, required)
        if problems:
            raise Stop(*problems[0])
        return table

    def each(self, value: Any, path: KeyPath, check: Callable[[Any, KeyPath], Any], non_empty: bool = True) -> list:
        """
        Check every entry of a list, each in its own :meth:`section` (one bad entry does not hide the next one's
        problems); the entries that passed, in order. A value that is not a (non-empty) list is :class:`Stop`.
        """
        if not isinstance(value, list) or (non_empty and not value):
            raise Stop(path, f"must be a{' non-empty' if non_empty else ''} list, got {kind_of(value)}.")
        checked = []
        for index, item in enumerate(value):
            with self.section():
                checked.append(check(item, (*path, index)))
        return checked


def _table_problems(
    data: Any, path: KeyPath, known: Sequence[str], required: Sequence[str]
) -> tuple[dict[str, Any], list[tuple[KeyPath, str]]]:
    """The table of :meth:`Checker.table` and its problems, each ``(key path, message)``."""
    if data is None:
        data = {}
    what = format_key(path) or "the configuration"
    if not isinstance(data, Mapping):
        return {}, [(path, f"must be a table of keys ({', '.join(known)}), got {kind_of(data)}.")]
    problems = []
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(((*path, name), f"unknown key in {what}: {hint}known keys here: {', '.join(known)}."))
    for name in required:
        if name not in data:
            problems.append(((*path, name), f"missing (required): {what} needs the key '{name}'."))
    return dict(data), problems


def kind_of(value: Any) -> str:
    """A value in an error message: tables and lists by type, everything else by type and value."""
    return f"{type(value).__name__} {value!r}" if not isinstance(value, dict | list) else type(value).__name__


# converters for Checker.get and Checker.need: a ValueError names what is wrong


def integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    """An integer in ``[low, high]`` (numpy integers too; no strings, booleans or floats)."""
    return lambda value: check_integer("", value, low, high)


def number(
    low: float = float("-inf"), high: float = float("inf"), low_open: bool = False, high_open: bool = False
) -> Callable[[Any], float]:
    """A finite number in the range (open or closed at each end)."""
    closed = {(False, False): "both", (False, True): "left", (True, False): "right", (True, True): "neither"}
    return lambda value: check_number("", value, low, high, closed=closed[(low_open, high_open)])


def string(choices: Sequence[str] | None = None) -> Callable[[Any], str]:
    """A non-empty string, one of ``choices`` when given (the closest one is suggested)."""

    def convert(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a non-empty string, got {value!r}.")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, list(choices), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown value '{value}'{hint}: choose one of {', '.join(choices)}.")
        return value

    return convert


#: Longest label: it names a row of every table and figure.
MAX_LABEL = 80


def row_label(value: Any) -> str:
    """
    A row label (of an attack or a defence): a non-empty string of one line without control characters, at most
    :data:`MAX_LABEL` characters, its surrounding spaces removed (so that ``"noise "`` and ``"noise"`` are one label
    to the duplicate check, as they look one in a table).
    """
    text = string()(value).strip()
    if not text:
        raise ValueError(f"must hold more than spaces, got {value!r}.")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError(f"must be one line without control characters (a line break, a tab), got {value!r}.")
    if len(text) > MAX_LABEL:
        raise ValueError(f"has {len(text)} characters, more than the {MAX_LABEL} a table row or figure can show.")
    return text


def boolean(value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}.")
    return value


def int_list(
    low: int, length: int | None = None, unique: bool = True, high: int | None = None
) -> Callable[[Any], list[int]]:
    """
    A non-empty list of integers in ``[low, high]`` (of ``length`` entries when given; no repeats when ``unique``).
    """

    def convert(value: Any) -> list[int]:
        ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or any(v < low or (high is not None and v > high) for v in value):
            ok = False
        if not ok or (length is not None and len(value) != length):
            size = f"{length} " if length is not None else "a non-empty list of "
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"must be {size}integers {bound}, got {value!r}.")
        if unique and len(set(value)) != len(value):
            raise ValueError(f"has repeated values: {value!r}.")
        return [int(v) for v in value]

    return convert


def mapping(value: Any) -> dict[str, Any]:
    """A table of keyword arguments."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table of keyword arguments, got {value!r}.")
    return dict(value)


# ------------------------------------------------------------------------------------------- shared validators


def check_unique(check: Checker, entries: list[dict], path: KeyPath, key: str, config_key: str | None = None) -> None:
    """Every entry's ``key`` is its own (a repeat is a problem of the entry's ``config_key``)."""
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry[key] in seen:
            check.add(
                (*path, index, config_key or key),
                f"duplicated {config_key or key} {entry[key]!r}: give each its own.",
            )
        seen.add(entry[key])


def string_list(choices: Sequence[str] | None) -> Callable[[Any], list[str]]:
    """A non-empty list of distinct names (among ``choices`` when given)."""
    name = string(choices)

    def convert(value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            among = f" ({', '.join(choices)})" if choices else ""
            raise ValueError(f"must be a non-empty list of names{among}, got {kind_of(value)}.")
        names = [name(item) for item in value]
        if len(set(names)) != len(names):
            raise ValueError(f"has repeated values: {names}.")
        return names

    return convert
