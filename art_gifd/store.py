"""
Where results are kept: the append-only JSON-lines results file that the benchmark runner, the audit and the capture
audit share, atomic file writes, and the provenance (environment, source commit) every results document records.

A :class:`ResultsFile` holds one JSON object per line, each written in one call, flushed and fsynced, so a record is
either entirely in the file or not at all; a line torn by a crash during the write is discarded (and, when reading
to append, cut off) the next time the file is read. A rerun skips the records already there, so killing a run at any
moment and starting it again loses and duplicates nothing. Arrays that belong to a record (reconstructions) are
written atomically to their own ``.npz`` before the record's line, so a record never points at a missing file; one
that was damaged anyway (a disk fault, a hand edit) reads as missing, and only its record is done again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ atomic files


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """
    Write ``data`` to ``path`` atomically: a temporary file in the same folder, flushed and fsynced, then renamed over
    ``path``, so a reader sees the old file or the new one, never a torn one (readable by others, mode 0644).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_slug(text: str, limit: int = 60) -> str:
    """
    ``text`` as a part of a file name: letters, digits and ``_.+-`` kept, other runs of characters replaced by ``-``.
    When anything was replaced, or the result is empty or longer than ``limit``, a short hash of ``text`` is appended
    (the part before it cut to fit), so that distinct texts never share a file name.
    """
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")
    if slug == text and 0 < len(slug) <= limit:
        return slug
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{slug[: limit - len(digest) - 1]}-{digest}".lstrip("-")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """
    Write JSON to ``path`` atomically (see :func:`write_bytes_atomic`). NaN and infinite numbers (e.g. the standard
    error of a single value) are written as ``null``: Python's bare ``NaN`` is not JSON, and other readers (jq,
    JavaScript, most JSON libraries) refuse the whole file.
    """
    write_bytes_atomic(path, (json.dumps(_finite(payload), indent=2, allow_nan=False) + "\n").encode())


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts, lists and tuples, replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of a compressed ``.npz`` file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, npz_bytes(arrays))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if it is missing, unreadable or not an object."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def read_npz(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` file, or ``None`` if it is missing or damaged (a warning names a damaged one)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        logger.warning("%s is damaged: its record's arrays cannot be read (a resumed run does the record again)", path)
        return None


# ----------------------------------------------------------------------------------------------------- record shapes

#: A JSON number (``bool`` excluded, see :func:`shape_problem`).
NUMBER = (int, float)
#: JSON ``null``.
NULL = type(None)
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    NULL: "null",
    dict: "an object",
    list: "a list",
}


def shape_problem(value: Any, shape: Any, name: str = "") -> str | None:
    """
    What makes a JSON value differ from the shape its writer gives it, for records read back from a file that may
    have been edited by hand or written by another program.

    :param value: The value (a record, or part of one).
    :param shape: A type (``bool`` is not accepted as a number); a dict of the keys the value must hold and their
                  shapes, a key ending in ``?`` being optional; a one-item list, the shape of every item of a list;
                  or a tuple of such alternatives (``(NULL, {...})``: null or that object).
    :param name: Where ``value`` lies in the record (``result.per_image``), for the message.
    :return: ``None`` if the value has the shape, else one phrase naming the first difference, e.g.
             ``"result.per_image.psnr[0] is "x", expected a number"``.
    """
    for option in shape if isinstance(shape, tuple) else (shape,):
        if isinstance(option, dict) and isinstance(value, dict):
            for key, item in option.items():
                field = key.removesuffix("?")
                where = f"{name}.{field}" if name else field
                if field not in value:
                    if key.endswith("?"):
                        continue
                    return f"{where} is missing"
                problem = shape_problem(value[field], item, where)
                if problem is not None:
                    return problem
            return None
        if isinstance(option, list) and isinstance(value, list):
            return next(
                (p for i, v in enumerate(value) if (p := shape_problem(v, option[0], f"{name}[{i}]")) is not None),
                None,
            )
        if isinstance(option, type) and isinstance(value, option) and (option is bool or not isinstance(value, bool)):
            return None
    kinds = dict.fromkeys(
        "an object" if isinstance(o, dict) else "a list" if isinstance(o, list) else _KIND_NAMES.get(o, o.__name__)
        for o in (shape if isinstance(shape, tuple) else (shape,))
    )
    if "a number" in kinds:
        kinds.pop("an integer", None)
    text = json.dumps(value)
    return f"{name or 'the record'} is {text if len(text) <= 40 else text[:39] + '…'}, expected {' or '.join(kinds)}"


# --------------------------------------------------------------------------------------------------------- provenance


def environment(seed: int | list[int], device: str) -> dict[str, Any]:
    """Versions, device and seed, for reproducibility sections."""
    import art
    import torch

    from art_gifd import __version__

    return {
        "art_gifd": __version__,
        "torch": torch.__version__,
        "art": art.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "seed": seed,
    }


def checkout_commit(root: Path) -> dict[str, Any] | None:
    """
    The commit of the git checkout whose top level is ``root``, and whether tracked files differ from it; ``None``
    where ``root`` is not the top level of a checkout (an installed copy, also one inside another repository).
    """
    try:
        top = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True, text=True, timeout=10
        )
        lines = top.stdout.split()
        if top.returncode or len(lines) != 2 or Path(lines[0]).resolve() != root:
            return None
        head = lines[1]
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head, "dirty": bool(status.stdout.strip())}


#: Read when this module is imported, with the code the process runs: a long run that records it at its end must not
#: name a commit (or a dirty tree) that the checkout moved to while it ran.
_SOURCE_COMMIT = checkout_commit(Path(__file__).resolve().parents[1])


def source_commit() -> dict[str, Any] | None:
    """
    The commit of the art-gifd checkout this process imported its code from, and whether tracked files differed from
    it then; ``None`` for an installed copy, also one inside another git repository (a virtual environment in a
    user's project).
    """
    return dict(_SOURCE_COMMIT) if _SOURCE_COMMIT is not None else None


# ------------------------------------------------------------------------------------------------------- results file


#: Skipped lines of a results file that a read names one by one; it counts the rest in one warning.
MAX_LINE_WARNINGS = 5


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """
    SIGTERM (``kill``) raises ``KeyboardInterrupt`` in the main thread, so that a run appending to a results file stops
    as at Ctrl-C: workers stopped, no line torn, finished records kept for the resume.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ResultsBusy(RuntimeError):
    """Another process is writing the results file."""


def _is_record(line: bytes) -> bool:
    """Whether ``line`` is one whole JSON object (a record), not the start of one cut by an interrupted write."""
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


class ResultsFile:
    """
    An append-only JSON-lines results file (see the module documentation).

    Records of ``"type": "run"`` are run headers; every other record is keyed by its ``job_id``.
    """

    def __init__(self, path: str | Path, arrays_dir: str | Path | None = None) -> None:
        """
        :param path: The ``.jsonl`` file (created with its folder on the first append).
        :param arrays_dir: Folder of the records' ``.npz`` files (default: ``<file stem>.recon`` beside the file).
        """
        self.path = Path(path)
        self.arrays_dir = Path(arrays_dir) if arrays_dir is not None else self.path.with_name(self.path.stem + ".recon")
        if self.arrays_dir == self.path:
            raise ValueError(
                f"'{self.path}' would also be the folder of its records' arrays: give the results file another "
                f"suffix, e.g. '{self.path.with_suffix('.jsonl')}'."
            )

    def read(
        self, repair: bool = False, check: Callable[[dict[str, Any]], str | None] | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """
        Read the run headers and job records, in file order.

        A line that is not a results record is skipped with a warning naming it; after :data:`MAX_LINE_WARNINGS`
        of them the rest are counted in one warning, so that a file of another kind does not print one per line.

        :param repair: Truncate a torn last line (an interrupted write) from the file, so that appends start on a
                       fresh line; otherwise it is only skipped.
        :param check: What is wrong with a record (``None``: nothing), e.g. :func:`shape_problem` against the
                      shape its writer gives it; a record it finds fault with is skipped like a damaged line.
        :return: ``(runs, jobs)``.
        """
        if not self.path.exists():
            return [], []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data) and _is_record(data[len(complete) :]):
            complete = data + b"\n"  # a whole last record without its newline (an editor's save): kept
        if len(complete) < len(data):
            logger.warning(
                "%s: discarding a torn last line (%d bytes) left by an interrupted write",
                self.path,
                len(data) - len(complete),
            )
            if repair:
                with self.path.open("r+b") as handle:
                    handle.truncate(len(complete))
                    handle.flush()
                    os.fsync(handle.fileno())
        runs, jobs = [], []
        skipped = 0
        for number, line in enumerate(complete.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:  # strict: a damaged byte inside a string must not pass as a replacement character
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "a line that is not UTF-8 text"
            except json.JSONDecodeError:
                problem = "a line that is not JSON"
            else:
                if not isinstance(record, dict) or not isinstance(record.get("job_id", ""), str):
                    problem = "a line that is not a results record"
                elif check is not None and (damage := check(record)) is not None:
                    problem = f"a damaged record ({damage})"
                else:
                    problem = None
            if problem is None:
                (runs if record.get("type") == "run" else jobs).append(record)
                continue
            skipped += 1
            if skipped <= MAX_LINE_WARNINGS:
                logger.warning("%s:%d: skipping %s", self.path, number, problem)
        if skipped > MAX_LINE_WARNINGS:
            logger.warning(
                "%s: skipped %d more lines that are not results records", self.path, skipped - MAX_LINE_WARNINGS
            )
        return runs, jobs

    @contextlib.contextmanager
    def lock(self, what: str = "art-gifd bench", other: str = "another --results file") -> Iterator[None]:
        """
        Hold the file's writer lock (an advisory ``flock`` on ``<file>.lock``) for the duration of the block.

        :param what: The kind of run that writes the file, for the error message.
        :param other: How to give a second run its own file, for the error message.
        :raises ResultsBusy: If another process holds it: a second run on the same file would run every job again.
        """
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise ResultsBusy(
                    f"'{self.path}' is being written by another {what} (pid {owner}): wait for it to finish, "
                    f"or give this run {other}."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def latest(
        self,
        config_hash: str | None = None,
        repair: bool = False,
        check: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """
        The last record of every job id (a job rerun supersedes its earlier line).

        :param config_hash: Keep only records of this configuration (their ``config_hash``).
        :param repair: As in :meth:`read`.
        :param check: As in :meth:`read`: a record of the wrong shape (edited by hand, written by another program) is
                      skipped with a warning naming its line, and its job is done again.
        """
        latest = {}
        for record in self.read(repair=repair, check=check)[1]:
            if "job_id" in record and config_hash in (None, record.get("config_hash")):
                latest[record["job_id"]] = record
        return latest

    def append(self, record: dict[str, Any]) -> None:
        """
        Append one record as a single line, flushed and fsynced before returning; after a torn last line (an
        interrupted write that no repairing read removed) it starts on a fresh line, so the record stays readable.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, allow_nan=True) + "\n").encode("utf-8")
        with self.path.open("a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            if end:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def arrays_path(self, job_id: str) -> Path:
        """Where the arrays of ``job_id`` are kept."""
        return self.arrays_dir / f"{job_id}.npz"

    def save_arrays(self, job_id: str, arrays: dict[str, np.ndarray]) -> Path:
        """Write a record's arrays atomically (before its line is appended); return the file."""
        path = self.arrays_path(job_id)
        write_npz_atomic(path, arrays)
        return path

    def load_arrays(self, job_id: str) -> dict[str, np.ndarray] | None:
        """A record's arrays, or ``None`` if they were never saved or are damaged."""
        return read_npz(self.arrays_path(job_id))

    def clear(self) -> None:
        """Delete the file and the arrays of its records (the lock file stays: a run may hold it)."""
        self.path.unlink(missing_ok=True)
        if self.arrays_dir.is_dir():
            for path in self.arrays_dir.glob("*.npz"):
                path.unlink()
