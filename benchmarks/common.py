"""What the benchmark scripts share: the commit a result came from, the refusal to replace a result file unless asked,
their runs files and the settings they were run with, means with their standard error, and per-image PSNR split by
whether an image's label is shared in its client batch."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.metrics import shared_labels
from art_gifd.store import ResultsFile, shape_problem, source_commit
from art_gifd.validation import check_output_folder


def git_commit() -> str | None:
    """Commit of the art-gifd checkout (with ``-dirty`` when tracked files changed), or ``None``."""
    git = source_commit()
    return None if git is None else git["commit"][:12] + ("-dirty" if git["dirty"] else "")


def refuse_to_replace(
    parser: argparse.ArgumentParser,
    paths: Iterable[Path],
    overwrite: bool,
    elsewhere: str = "another --out",
    appended: Iterable[Path] = (),
) -> None:
    """
    Stop a script before any work when one of the files it will write is already there and ``overwrite`` is false
    (results are committed under the scripts' default paths: a trial run must not replace one without a word), or
    cannot be written at all (a folder stands at its path, or its folder cannot be created or written into), or two
    of its files are one (a summary written over the runs file it resumes from).

    :param parser: The script's parser: the refusal is its one-line usage error (exit status 2).
    :param paths: Every file the run writes, e.g. a report's ``.json`` and ``.md``.
    :param overwrite: The script's ``--overwrite``: replace existing files.
    :param elsewhere: The other way out, as the message names it.
    :param appended: The files it appends to and resumes from (runs files): they may exist, but must differ from
                     ``paths`` and from each other.
    """
    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for path in [*paths, *map(Path, appended)]:
        first = seen.setdefault(path.expanduser().resolve(), path)
        if first is not path:
            parser.error(f"'{path}' is named for two of the files this run writes: give each file its own path.")
    for path in paths:
        if path.is_dir():
            parser.error(f"'{path}' is a folder, not a file the results can be written to: give {elsewhere}.")
        try:
            check_output_folder(path.parent)
        except ValueError as err:
            parser.error(str(err))
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        held = f"{existing[0]} exists" if len(existing) == 1 else f"{', '.join(existing)} exist"
        parser.error(
            f"{held}: pass --overwrite to replace {'it' if len(existing) == 1 else 'them'}, or give {elsewhere}."
        )


def refuse_unread_options(
    parser: argparse.ArgumentParser, argv: Sequence[str], unread: Iterable[str], mode: str
) -> None:
    """
    Stop a script whose command line gives options that its mode does not read: they would stand in the recorded
    command as if they had been used.

    :param argv: The command line's arguments.
    :param unread: The options (``--name``) the mode does not read.
    :param mode: The mode, as the message names it (e.g. ``--mode quality``).
    """
    given = {word.split("=")[0] for word in argv if word.startswith("--")}
    unused = sorted(given & set(unread))
    if unused:
        parser.error(f"{', '.join(unused)}: not read by {mode}; leave {'them' if unused[1:] else 'it'} out.")


def read_json_file(path: Path, shape: Any, what: str, remedy: str, name: str = "") -> Any:
    """
    The JSON value in ``path`` (a record or table a script wrote), checked against ``shape``
    (:func:`~art_gifd.store.shape_problem`, which names the place by ``name``).

    :param what: What the file should be, for the messages (e.g. ``"a quality record"``).
    :param remedy: The way out, for the messages.
    :raises ValueError: Naming the file and what is wrong: unreadable, not JSON, or not of ``shape``.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # unreadable, not UTF-8 or not JSON
        raise ValueError(f"'{path}' cannot be read as {what} ({err}): {remedy}.") from None
    problem = shape_problem(value, shape, name)
    if problem is not None:
        raise ValueError(f"'{path}' is not {what} of this script ({problem}): {remedy}.")
    return value


def read_runs(
    path: Path,
    shape: dict[str, Any],
    repair: bool = False,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> list[dict[str, Any]]:
    """
    The records of a benchmark's runs file (append-only JSONL, one line per finished run) that have ``shape``; a
    torn, foreign or damaged line is skipped with a warning naming it. ``repair`` truncates a torn last line, so that
    the next append starts on a fresh line; ``check`` names what else rules out a record of the right shape (a case
    or attack the script does not know), which is then skipped the same way.
    """

    def problem(record: dict[str, Any]) -> str | None:
        found = shape_problem(record, shape)
        return found if found is not None or check is None else check(record)

    return ResultsFile(path).read(repair=repair, check=problem)[1]


def other_settings(records: Iterable[dict[str, Any]], settings: Mapping[str, tuple[str, Any]]) -> list[str]:
    """
    The settings in which runs records differ from this run's, each as ``"--option held (this run: asked)"``; records
    without a field (written before it was recorded) are not compared on it.

    :param records: The records of a runs file.
    :param settings: Record field -> (the option that sets it, this run's value).
    """
    records = list(records)
    differing = []
    for field, (option, asked) in settings.items():
        held = sorted({r[field] for r in records if r.get(field) is not None} - {asked})
        if held:
            differing.append(f"{option} {' '.join(map(str, held))} (this run: {asked})")
    return differing


def threads_text(count: int) -> str:
    """A torch thread count as the reports state it: ``one torch thread``, ``2 torch threads``."""
    return "one torch thread" if count == 1 else f"{count} torch threads"


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (``nan`` for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    sem = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return float(array.mean()), sem


def psnr_by_label_multiplicity(batches: Iterable[tuple[Sequence[int], Sequence[float]]]) -> dict[str, list[float]]:
    """
    Per-image PSNR of client batches, given as ``(labels, per-image PSNR)`` pairs, split into the images whose label
    is unique in their batch and those that share it (:func:`~art_gifd.metrics.shared_labels`).
    """
    split: dict[str, list[float]] = {"unique": [], "shared": []}
    for labels, psnr in batches:
        for shared, value in zip(shared_labels(np.asarray(labels)), psnr, strict=True):
            split["shared" if shared else "unique"].append(float(value))
    return split
