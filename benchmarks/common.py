"""What the benchmark scripts share: the commit a result came from, their runs files, means with their standard error,
and per-image PSNR split by whether an image's label is shared in its client batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.metrics import shared_labels
from art_gifd.store import ResultsFile, shape_problem, source_commit


def git_commit() -> str | None:
    """Commit of the art-gifd checkout (with ``-dirty`` when tracked files changed), or ``None``."""
    git = source_commit()
    return None if git is None else git["commit"][:12] + ("-dirty" if git["dirty"] else "")


def read_runs(path: Path, shape: dict[str, Any], repair: bool = False) -> list[dict[str, Any]]:
    """
    The records of a benchmark's runs file (append-only JSONL, one line per finished run) that have ``shape``; a
    torn, foreign or damaged line is skipped with a warning naming it. ``repair`` truncates a torn last line, so that
    the next append starts on a fresh line.
    """
    return ResultsFile(path).read(repair=repair, check=lambda record: shape_problem(record, shape))[1]


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
