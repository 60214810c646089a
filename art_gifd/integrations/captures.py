"""
Capture folders: what the server of a real federated run sent each round and what every selected client sent back.

A capture folder is written while the run trains (by :class:`art_gifd.integrations.flower.CaptureStrategy`, or by
anything that uses :class:`CaptureWriter`) and read by the audit without the FL framework installed::

    index.json               the run's metadata and one entry per captured client-round (rewritten atomically)
    round-0003/global.npz    the global arrays the server sent in round 3, keyed by their state-dict names
    round-0003/node-17.npz   the update of client node 17 in round 3: global − returned, for every float array

Every file is written atomically (a temporary file, fsynced, then renamed), and a file enters the index only after
it is complete, with its SHA-256: an interrupted capture leaves the files of the finished client-rounds and no torn
file, and a file damaged later is refused by name. Updates follow :func:`~art_gifd.federated.client_update`'s sign
(``w_before − w_after``), so an attack reads them like any other client update.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import math
import re
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.federated import TRAINING_KEYS
from art_gifd.store import NULL, NUMBER, npz_bytes, shape_problem, write_bytes_atomic, write_json_atomic

#: Format tag of ``index.json``.
CAPTURE_FORMAT = "art-gifd-capture/1"
INDEX = "index.json"

#: Train-configuration keys read from the captured configuration, for each ``[federated]`` training key: Flower apps
#: name them freely, so the usual spellings are recognised (the first one present wins).
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_rate", "learning-rate", "lr"),
    "epochs": ("epochs", "local_epochs", "local-epochs"),
    "steps": ("steps", "local_steps", "local-steps"),
    "local_batch_size": ("local_batch_size", "local-batch-size", "batch_size", "batch-size"),
    "optimizer": ("optimizer",),
    "momentum": ("momentum",),
    "weight_decay": ("weight_decay", "weight-decay"),
}


class CaptureError(ValueError):
    """A capture folder that cannot be read as asked: the message names the file and the fix."""


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write ``arrays`` atomically as a compressed ``.npz``; its SHA-256."""
    data = npz_bytes(arrays)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy of a configuration or metric value (numpy scalars and byte strings included)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _round_dir(server_round: int) -> str:
    return f"round-{server_round:04d}"


class CaptureWriter:
    """
    Writes a capture folder one file at a time; kept in memory between calls: the index and the current round's global
    arrays (each update subtracts them).

    :param out: The capture folder (created). An existing index is continued, so a restarted run appends to it; it
                must be the index of the same run: the same metadata, and (checked by :meth:`write_global`) the same
                array names and shapes, and no round after the first one it captures again (a run that starts over
                after more rounds were captured is another trajectory: its rounds would mix with the earlier ones).
    :param metadata: Facts about the run stored in the index (strategy, framework version, …).
    :raises ValueError: If ``out`` is a file or cannot be written.
    :raises CaptureError: If ``out`` holds the capture of a run with other metadata.
    """

    def __init__(self, out: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
        from art_gifd.validation import check_output_folder

        self.out = Path(out)
        check_output_folder(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        #: The round and global arrays of the last :meth:`write_global`: the updates of that round subtract them.
        self._sent: tuple[int, dict[str, np.ndarray]] | None = None
        #: Seconds of the last index rewrite, not yet counted in a round's ``capture_seconds``.
        self._unsaved = 0.0
        #: Rounds whose global arrays this writer recorded (the others in the index are an earlier session's).
        self._written: set[int] = set()
        index = self.out / INDEX
        # As stored: JSON turns tuples into lists, so that a restart's metadata compares equal to the index's.
        plain = json.loads(json.dumps(_plain(dict(metadata or {}))))
        if index.exists():
            self.index = read_index(self.out)
            held = self.index["metadata"]
            if held != plain:
                differ = sorted(k for k in {*held, *plain} if held.get(k) != plain.get(k))
                found = ", ".join(f"{k} {held.get(k)!r}, not {plain.get(k)!r}" for k in differ[:3])
                raise CaptureError(f"{self.out} holds another run ({found}): use a new folder, or delete it.")
        else:
            self.index = {
                "format": CAPTURE_FORMAT,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "metadata": plain,
                "rounds": {},  # any object: round number -> its entry
                "updates": [],
            }
            write_json_atomic(index, self.index)

    def _save(self, server_round: int, start: float) -> None:
        """
        Rewrite the index, with the seconds the capture spent on ``server_round`` so far (``capture_seconds``: the
        writes since ``start``, and those before; each index rewrite is counted at the next one).
        """
        entry = self.index["rounds"].setdefault(str(server_round), {})
        entry["capture_seconds"] = entry.get("capture_seconds", 0.0) + self._unsaved + time.perf_counter() - start
        began = time.perf_counter()
        write_json_atomic(self.out / INDEX, self.index)
        self._unsaved = time.perf_counter() - began

    def write_global(self, server_round: int, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        """
        Record the global arrays and the train configuration the server sends in ``server_round``; updates recorded
        for that round before (by an earlier, interrupted run) are dropped from the index.

        :raises CaptureError: If the rounds the folder holds have other array names or shapes (another model's run).
        """
        start = time.perf_counter()
        later = sorted(int(n) for n, e in self.index["rounds"].items() if "global" in e and int(n) > server_round)
        later = [n for n in later if n not in self._written]
        if later:  # a new run (Flower starts at round 1 again): continuing would mix its rounds with the earlier ones
            raise CaptureError(
                f"{self.out} holds rounds {later[0]}–{later[-1]} of an earlier run, and capturing round {server_round} "
                "again would mix this run's rounds with them: capture into a new folder, or delete this one (its "
                "rounds are kept as they are)."
            )
        file = Path(_round_dir(server_round)) / "global.npz"
        sent = {name: np.asarray(a) for name, a in arrays.items()}
        shapes = {name: list(a.shape) for name, a in sent.items()}
        self._check_same_model(server_round, shapes)
        digest = _write_npz(self.out / file, sent)
        self._sent = (server_round, sent)
        self._written.add(server_round)
        # A round captured again (a restarted run) starts afresh: earlier updates were relative to other arrays.
        self.index["updates"] = [u for u in self.index["updates"] if u["round"] != server_round]
        self.index["rounds"][str(server_round)] = {
            "global": str(file),
            "sha256": digest,
            "config": _plain(dict(config)),
            "shapes": shapes,
            "sent_at": time.time(),  # with the next round's: the round's wall-clock time, beside capture_seconds
        }
        self._save(server_round, start)

    def _check_same_model(self, server_round: int, shapes: dict[str, list[int]]) -> None:
        """Refuse arrays other than those of the rounds already held: the folder is another run's."""
        for number, entry in self.index["rounds"].items():
            held = entry.get("shapes")
            if held is None or held == shapes:
                continue
            differ = sorted(n for n in {*held, *shapes} if held.get(n) != shapes.get(n))
            found = ", ".join(f"{n!r} {held.get(n)} there, {shapes.get(n)} now" for n in differ[:3])
            raise CaptureError(
                f"{self.out} holds another run (round {number}'s arrays differ from round {server_round}'s: {found}): "
                "use a new folder, or delete it."
            )

    def write_update(
        self,
        server_round: int,
        node_id: int,
        returned: Mapping[str, np.ndarray],
        num_examples: int | None,
        metrics: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Record one client's reply in ``server_round`` as its update (global − returned, float arrays only).

        :param returned: The arrays the client sent back, by name (those of the round's global arrays).
        :param num_examples: The number of training examples the client reported (``None``: not reported).
        :param config: The train configuration sent to this client, where it differs from the round's.
        :raises CaptureError: If the round's global arrays were not recorded first, or the names or shapes differ.
        """
        start = time.perf_counter()
        if self._sent is None or self._sent[0] != server_round:
            raise CaptureError(f"round {server_round}: write_global must record the global arrays before any update.")
        sent = self._sent[1]
        if sorted(sent) != sorted(returned):
            raise CaptureError(
                f"round {server_round}, node {node_id}: the reply's arrays {sorted(returned)} are not those sent "
                f"({sorted(sent)})."
            )
        update = {}
        for name, before in sent.items():
            after = np.asarray(returned[name])
            if before.shape != after.shape:
                raise CaptureError(
                    f"round {server_round}, node {node_id}: array {name!r} came back with shape {after.shape}, "
                    f"sent with {before.shape}."
                )
            if np.issubdtype(before.dtype, np.floating):
                update[name] = (before.astype(np.float64) - after.astype(np.float64)).astype(before.dtype)
        file = Path(_round_dir(server_round)) / f"node-{node_id}.npz"
        digest = _write_npz(self.out / file, update)
        self.index["updates"] = [
            u for u in self.index["updates"] if (u["round"], u["node_id"]) != (server_round, int(node_id))
        ]
        self.index["updates"].append(
            {
                "round": server_round,
                "node_id": int(node_id),
                "file": str(file),
                "sha256": digest,
                "num_examples": None if num_examples is None else int(num_examples),
                "metrics": _plain(dict(metrics or {})),
                "config": _plain(dict(config)) if config is not None else None,
            }
        )
        self._save(server_round, start)

    def write_round_metrics(self, server_round: int, kind: str, metrics: Mapping[str, Any]) -> None:
        """Record the aggregated ``kind`` (``"train"`` or ``"evaluate"``) metrics of a round, e.g. its accuracy."""
        start = time.perf_counter()
        entry = self.index["rounds"].setdefault(str(server_round), {})
        entry[f"{kind}_metrics"] = _plain(dict(metrics))
        self._save(server_round, start)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the index, refusing a key given twice (``json`` keeps the last one silently)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key {repeated[0]!r} is given twice in one object")
    return dict(pairs)


def read_index(folder: str | Path) -> dict[str, Any]:
    """
    The index of a capture folder.

    :raises CaptureError: If the folder or its index is missing, unreadable or of another format.
    """
    folder = Path(folder)
    index = folder / INDEX
    if not folder.is_dir():
        raise CaptureError(
            f"{folder}: no such capture folder. Point [federated] source at the folder CaptureStrategy "
            "wrote (its out= argument)."
        )
    if not index.is_file():
        raise CaptureError(
            f"{index}: missing. {folder} is not a capture folder, or its capture never finished a "
            "round: capture the run again."
        )
    try:
        data = json.loads(index.read_text(), object_pairs_hook=_unique_keys)
    except (OSError, ValueError) as err:  # ValueError: not JSON, not UTF-8 text, or a key given twice
        raise CaptureError(f"{index}: unreadable ({err}). Capture the run again.") from err
    if not isinstance(data, dict) or data.get("format") != CAPTURE_FORMAT:
        raise CaptureError(f"{index}: not an art-gifd capture index (format {CAPTURE_FORMAT!r} expected).")
    problem = shape_problem(data, _INDEX_SHAPE)
    for number, entry in data["rounds"].items() if problem is None else []:
        if not re.fullmatch(r"0|[1-9][0-9]*", number):  # as the writer spells it: "01" would be round 1 again
            problem = f"rounds holds the key {number!r}, not a round number"
            break
        # an entry without global arrays holds only round metrics and timings
        shape = _ROUND_SHAPE if isinstance(entry, dict) and "global" in entry else _ROUND_METRICS_SHAPE
        problem = shape_problem(entry, shape, f"rounds.{number}")
        if problem is not None:
            break
    seen: set[tuple[int, int]] = set()
    for update in data["updates"] if problem is None else []:
        if (update["round"], update["node_id"]) in seen:
            problem = f"round {update['round']}, node {update['node_id']} is listed twice"
        elif update.get("num_examples") is not None and update["num_examples"] < 0:
            problem = f"update {update['file']} has num_examples {update['num_examples']}, expected at least 0"
        elif "global" not in data["rounds"].get(str(update["round"]), {}):
            problem = f"update {update['file']} is of round {update['round']}, whose global weights were not captured"
        if problem is not None:
            break
        seen.add((update["round"], update["node_id"]))
    if problem is not None:
        raise CaptureError(f"{index}: damaged ({problem}). Restore the file or capture the run again.")
    return data


#: What an index entry holds (as :class:`CaptureWriter` writes it), checked when a folder is read.
_INDEX_SHAPE = {
    "metadata?": dict,
    "rounds": {},  # any object: round number -> its entry
    "updates": [
        {
            "round": int,
            "node_id": int,
            "file": str,
            "sha256": str,
            "num_examples?": (NULL, int),
            "metrics?": dict,
            "config?": (NULL, dict),
        }
    ],
}


#: What every round entry may hold: the run's aggregated metrics and what capturing the round cost.
_ROUND_METRICS_SHAPE = {"capture_seconds?": NUMBER, "evaluate_metrics?": dict, "train_metrics?": dict}
#: What a round entry with global arrays holds.
_ROUND_SHAPE = {"global": str, "sha256": str, "shapes?": dict, "config?": dict, **_ROUND_METRICS_SHAPE}


@dataclass(frozen=True)
class CapturedUpdate:
    """One client's update in one round of a captured run."""

    folder: Path
    server_round: int
    node_id: int
    #: Training examples the client reported (``None``: not reported).
    num_examples: int | None
    #: The train configuration the server sent it.
    config: dict[str, Any]
    #: The metrics the client reported with its update.
    metrics: dict[str, Any]
    file: str
    sha256: str

    @property
    def name(self) -> str:
        """Short name for tables and file names, e.g. ``"r3-n17"``."""
        return f"r{self.server_round}-n{self.node_id}"


class CaptureFolder:
    """
    A capture folder opened for reading (see the module documentation for its layout).

    :param folder: The folder.
    :raises CaptureError: If it is not a readable capture folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.rounds_info: dict[int, dict[str, Any]] = {int(r): e for r, e in self.index["rounds"].items()}
        self.updates = [
            CapturedUpdate(
                folder=self.folder,
                server_round=int(u["round"]),
                node_id=int(u["node_id"]),
                num_examples=u.get("num_examples"),
                config=u.get("config") or self.rounds_info.get(int(u["round"]), {}).get("config", {}),
                metrics=u.get("metrics", {}),
                file=u["file"],
                sha256=u["sha256"],
            )
            for u in self.index["updates"]
        ]
        if not self.updates:
            raise CaptureError(
                f"{self.folder / INDEX}: no client update was captured. Check the rounds= and clients= "
                "of the CaptureStrategy, and that the run trained at least one round."
            )

    @property
    def rounds(self) -> list[int]:
        """The rounds with at least one captured update, ascending."""
        return sorted({u.server_round for u in self.updates})

    def select(self, rounds: Sequence[int] | None = None, nodes: Sequence[int] | None = None) -> list[CapturedUpdate]:
        """
        The captured updates of the given rounds and client nodes (``None``: all), by round then node.

        :raises CaptureError: For a round or node that was not captured (the message lists those that were).
        """
        missing = sorted(set(rounds or []) - set(self.rounds))
        if missing:
            raise CaptureError(
                f"{self.folder}: round(s) {missing} were not captured; captured rounds: {self.rounds}. "
                "Choose among those, or capture the run again with those rounds in rounds=."
            )
        captured_nodes = sorted({u.node_id for u in self.updates})
        missing = sorted(set(nodes or []) - set(captured_nodes))
        if missing:
            raise CaptureError(
                f"{self.folder}: client node(s) {missing} were not captured; captured nodes: {captured_nodes}."
            )
        chosen = [
            u
            for u in self.updates
            if (rounds is None or u.server_round in rounds) and (nodes is None or u.node_id in nodes)
        ]
        if not chosen:  # clients train in some rounds only: each list can name captured ones that never meet
            raise CaptureError(
                f"{self.folder}: no captured update is of round(s) {sorted(rounds or self.rounds)} and client "
                f"node(s) {sorted(nodes or captured_nodes)} at once: choose rounds in which those clients trained."
            )
        return sorted(chosen, key=lambda u: (u.server_round, u.node_id))

    def _load(self, file: str, sha256: str, what: str) -> dict[str, np.ndarray]:
        path = self.folder / file
        if not path.is_file():
            raise CaptureError(f"{path}: missing ({what}). Restore the file or capture the run again.")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CaptureError(
                f"{path}: damaged or truncated ({what}: its SHA-256 differs from the index). Restore "
                "the file or capture the run again."
            )
        try:
            with np.load(io.BytesIO(data)) as arrays:
                return {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise CaptureError(f"{path}: unreadable ({what}: {err}). Capture the run again.") from err

    def global_arrays(self, server_round: int) -> dict[str, np.ndarray]:
        """The global arrays the server sent in ``server_round``, by state-dict name."""
        entry = self.rounds_info.get(server_round)
        if entry is None or "global" not in entry:
            raise CaptureError(f"{self.folder}: the global arrays of round {server_round} were not captured.")
        return self._load(entry["global"], entry["sha256"], f"global arrays of round {server_round}")

    def update_arrays(self, update: CapturedUpdate) -> dict[str, np.ndarray]:
        """The update (global − returned) of one client-round, by state-dict name."""
        return self._load(update.file, update.sha256, f"update of node {update.node_id} in round {update.server_round}")

    def round_metrics(self, server_round: int) -> dict[str, Any]:
        """
        The aggregated metrics the run reported for a round (``evaluate_…`` and ``train_…`` keys), those that are
        finite numbers: a metric a framework reports as text or a list, or NaN (stored as null), is left out.
        """
        entry = self.rounds_info.get(server_round, {})
        return {
            f"{kind}_{key}": value
            for kind in ("evaluate", "train")
            for key, value in entry.get(f"{kind}_metrics", {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }

    def check_model(self, module: Any) -> None:
        """
        Check that the captured arrays are those of ``module``: the same state-dict names and shapes.

        :raises CaptureError: Naming the index and the first names or shapes that differ.
        """
        expected = {name: list(t.shape) for name, t in module.state_dict().items()}
        for server_round, entry in sorted(self.rounds_info.items()):
            shapes = entry.get("shapes")
            if shapes is None:
                continue
            if sorted(shapes) != sorted(expected):
                extra, lacking = sorted(set(shapes) - set(expected)), sorted(set(expected) - set(shapes))
                raise CaptureError(
                    f"{self.folder / INDEX}: round {server_round} holds arrays of another model (captured but not in "
                    f"the audited model: {extra[:5]}; in the model but not captured: {lacking[:5]}). Audit the "
                    "captures with the model the run trained ([model] of the config)."
                )
            wrong = [n for n in expected if shapes[n] != expected[n]]
            if wrong:
                n = wrong[0]
                raise CaptureError(
                    f"{self.folder / INDEX}: round {server_round}: array {n!r} has shape {shapes[n]} in the capture "
                    f"and {expected[n]} in the audited model. Audit the captures with the model the run trained."
                )


def training_values(update: CapturedUpdate, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """
    The ``[federated]`` local-training keys of a captured client-round: those recognised in the captured train
    configuration (:data:`CONFIG_ALIASES`), with ``overrides`` (the audit configuration's keys) winning.
    """
    values: dict[str, Any] = {}
    for key, aliases in CONFIG_ALIASES.items():
        found = next((update.config[a] for a in aliases if a in update.config), None)
        if found is not None:
            values[key] = found
    values.update({k: v for k, v in overrides.items() if k in TRAINING_KEYS})
    return values


def estimator_at(estimator: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """A copy of an ART estimator whose model holds ``arrays`` (a state dict by name); ``estimator`` is untouched."""
    import torch

    copied = copy.deepcopy(estimator)
    state = {name: torch.as_tensor(np.asarray(a)) for name, a in arrays.items()}
    copied.model.load_state_dict(state, strict=True)
    return copied


def parameter_update(module: Any, update: Mapping[str, np.ndarray], where: str) -> list[np.ndarray]:
    """
    A captured update in ``module.parameters()`` order, as the attacks take it (buffers such as BatchNorm running
    statistics are not parameters and are left out).

    :raises CaptureError: If a parameter is missing from the update (``where`` names the file).
    """
    names = [name for name, _ in module.named_parameters()]
    missing = [n for n in names if n not in update]
    if missing:
        raise CaptureError(f"{where}: the update lacks parameter(s) {missing[:5]}. Capture the run again.")
    return [np.asarray(update[n], dtype=np.float32) for n in names]
