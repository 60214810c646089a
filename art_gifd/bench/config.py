"""
Benchmark configuration: parse a YAML or TOML file, validate it and normalise it into a :class:`BenchConfig`.

Every problem is named with the file, the line and the key at fault and how to fix it; one pass over the file finds
them all (:class:`art_gifd.configfile.Checker`, as for an audit config) and raises them together as a
:class:`ConfigError`.
The schema (see ``art_gifd/bench/profiles/*.toml`` for complete examples)::

    name = "quick"                    # profile name (default results file: bench-out/<name>.jsonl)
    device = "cpu"                    # torch device of every job
    seeds = [0, 1]                    # each job runs once per seed (model weights, attack and defence randomness)
    models = ["lenet", "convnet"]     # art_gifd.models.build_model names

    [federated]                       # optional, one setting for every job; an audit's [federated] table, read by
                                      # art_gifd.federated.read_federated_table
    batch_sizes = [1]                 # client batch sizes (FedAvg: private samples per client); every data set's
                                      # num_images must be a multiple (default [1])
    algorithm = "fedsgd"              # "fedsgd" (default): each client shares one gradient of its batch; "fedavg":
                                      # the weight update of its local training, set by the keys below
                                      # (art_gifd.federated.TRAINING_KEYS)
    # learning_rate = 0.05            # fedavg: the local learning rate (required)
    # epochs = 2                      # fedavg: local epochs (default 1) ... or:
    # steps = 4                       # fedavg: local steps (instead of epochs)
    # local_batch_size = 1            # fedavg: local mini-batch size (default: all the client's samples)
    # optimizer = "sgd"               # fedavg: "sgd" (default) or "adam"; momentum, weight_decay too
    # shuffle_seed = 0                # fedavg: the attacker knows the order (or shuffle = false; default: unknown)

    [budget]                          # equal step budget, per attack overridable (default 100, 4, 2)
    steps_per_stage = 50
    stages = 4
    num_restarts = 2

    [resources]                       # what one job asks of an executor: CPU threads (and GPUs, Ray only)
    cpus = 1
    gpus = 0

    [utility]                         # art_gifd.utility.measure_utility settings; enabled = false skips it
    rounds = 300

    [[datasets]]                      # embedded (mnist32, digits32) or a local image folder (source = "folder")
    name = "mnist"
    source = "mnist32"
    num_images = 2

    [priors.mnist]                    # generators the generative attacks use, by name
    type = "embedded"

    [[attacks]]                       # art_gifd.attacks.registry.build_attack names; params go to the constructor
    name = "gifd"
    prior = "mnist"
    params = { l1_radius = 0.2 }
    # labels = "known"                # the attacker is given the true labels (default "inferred")

    [[defenses]]                      # the keys of an audit's [[defenses]]; one parameter may be a list: the grid
    type = "gaussian"
    label = "noise"                   # the row name (default: the type)
    params = { sigma = [1e-3, 1e-2] } # or a [defenses.params] table

Defence types are ``none`` and the names of :data:`art_gifd.defenses.registry.DEFENSES` (``prune``, ``clip``,
``gaussian``, ``laplace``, ``quantize``, ``sign``, ``soteria``, ``dp`` with ``epsilon`` or ``noise_multiplier``,
``compose``) with their constructor parameters in ``params``; ``adaptive = [false, true]`` also runs the attacker that
replays the defence. A folder data set is ``source = "folder"``, ``root`` (class sub-folders of images of one size) and
``channels``; its seeded 20 % held-out part is attacked and the rest trains the utility run. Priors: ``embedded``,
``face-dcgan``, ``dcgan``, ``stylegan2``, ``biggan`` (see :data:`art_gifd.priors.registry.PRIOR_TYPES`), the same
tables as an audit's. ``[budget]``, ``[priors.<name>]`` and ``[[attacks]]`` are read by
:func:`art_gifd.attacks.registry.read_attack_section`, as an audit's are; attacks may be restricted with ``datasets``,
``models`` and ``defenses`` lists, and override the ``budget``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art_gifd.configfile import (
    Checker,
    ConfigError,
    KeyPath,
    LocatedDocument,
    Stop,
    boolean,
    check_unique,
    int_list,
    integer,
    number,
    open_config,
    string,
    string_list,
)
from art_gifd.configfile import parse_document as parse_document  # re-exported: parse a configuration string
from art_gifd.priors.checkpoints import sha256_of
from art_gifd.priors.embedded import warn_if_prior_saw
from art_gifd.validation import MAX_SEED, MAX_THREADS

FOLDER_SPLITS = ("heldout", "train", "all")


# ------------------------------------------------------------------------------------------------------ validation


@dataclass
class BenchConfig:
    """A validated, normalised benchmark configuration (plain JSON-serialisable values)."""

    name: str
    description: str
    device: str
    seeds: list[int]
    batch_sizes: list[int]
    budget: dict[str, int]
    resources: dict[str, float]
    utility: dict[str, Any] | None
    datasets: list[dict[str, Any]]
    models: list[str]
    priors: dict[str, dict[str, Any]]
    attacks: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    #: The clients' local training (``LocalTraining`` fields) under ``[federated] algorithm = "fedavg"``; ``None``:
    #: FedSGD.
    federated: dict[str, Any] | None = None
    source: str = "<config>"
    #: Lines of the keys in the source file, for errors found after validation (e.g. shape checks).
    document: LocatedDocument | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The normalised configuration (what :attr:`config_hash` hashes; FedSGD configurations omit ``federated``)."""
        federated = {"federated": self.federated} if self.federated is not None else {}
        return {
            **federated,
            "name": self.name,
            "description": self.description,
            "device": self.device,
            "seeds": self.seeds,
            "batch_sizes": self.batch_sizes,
            "budget": self.budget,
            "resources": self.resources,
            "utility": self.utility,
            "datasets": self.datasets,
            "models": self.models,
            "priors": self.priors,
            "attacks": self.attacks,
            "defenses": self.defenses,
        }

    @property
    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`as_dict`."""
        return canonical_hash(self.as_dict())

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A :class:`ConfigError` located in the source file when the key is known."""
        document = self.document or LocatedDocument(None, {}, self.source)
        return document.error(path, message)


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_hash(value: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


#: Where the profiles ship: inside the package (``art_gifd/bench/profiles/<name>.toml``), installed with it.
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


def resolve_config_path(name: str | Path) -> Path:
    """
    A configuration path, or a profile name (``smoke``, ``quick``, ``full``) of :data:`PROFILES_DIR`.

    :raises FileNotFoundError: If it is neither an existing file nor a known profile.
    """
    path = Path(name)
    if path.is_file():
        return path
    profile = PROFILES_DIR / f"{name}.toml"
    if not path.suffix and profile.is_file():
        return profile
    known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml")) if PROFILES_DIR.is_dir() else []
    raise FileNotFoundError(
        f"Benchmark configuration '{name}' not found: give a .toml/.yaml file"
        + (f" or a profile name ({', '.join(known)})." if known else ".")
    )


def load_config(path: str | Path) -> BenchConfig:
    """
    Read, parse and validate a benchmark configuration file (``.toml``, ``.yaml`` or ``.yml``).

    :param path: The file.
    :return: The validated configuration.
    :raises ConfigError: Listing every problem found, each with the file, line and key.
    """
    path = Path(path)
    return validate_config(open_config(path)[1].document, base_dir=path.parent)


TOP_LEVEL_KEYS = (
    "name",
    "description",
    "device",
    "seeds",
    "budget",
    "resources",
    "utility",
    "datasets",
    "models",
    "priors",
    "attacks",
    "defenses",
    "federated",
)


def validate_config(document: LocatedDocument, base_dir: str | Path = ".") -> BenchConfig:
    """
    Validate a parsed document and normalise it (numbers as floats or ints, paths absolute, defaults filled in).

    :param document: The parsed document.
    :param base_dir: Folder against which relative data and weights paths are resolved.
    :raises ConfigError: Listing every problem found, each with its key and line.
    """
    from art_gifd.attacks.registry import read_attack_section
    from art_gifd.defenses.registry import cached_defense, check_one_baseline
    from art_gifd.federated import check_accounted_steps_of, read_federated_table
    from art_gifd.models import MODELS

    v = Checker(document, Path(base_dir))
    data = document.data
    if isinstance(data, dict) and "batch_sizes" in data:  # where profiles before version 0.1 had it
        v.add(("batch_sizes",), "is set under [federated] (batch_sizes = [1, 4]), as in an audit: move it there.")
        data = {key: value for key, value in data.items() if key != "batch_sizes"}
    top = v.table(data, (), TOP_LEVEL_KEYS, required=("name", "datasets", "models"))
    config = BenchConfig(
        name=v.get(top, (), "name", file_name, "unnamed"),
        description=str(top.get("description", "")),
        device=v.get(top, (), "device", string(), "cpu"),
        seeds=v.get(top, (), "seeds", int_list(0, high=MAX_SEED), [0]),
        batch_sizes=[1],
        budget={},
        resources={},
        utility=None,
        datasets=[],
        models=v.get(top, (), "models", string_list(MODELS), []),
        priors={},
        attacks=[],
        defenses=[],
        source=document.source,
        document=document,
    )
    with v.section():
        config.resources = _resources(v, top.get("resources"), ("resources",))
    with v.section():
        config.utility = _utility(v, top.get("utility"), ("utility",))
    if "datasets" in top:
        with v.section():
            config.datasets = v.each(top["datasets"], ("datasets",), _dataset(v))
    with v.section():
        federated, training = read_federated_table(v, top.get("federated"))
        config.batch_sizes = federated["batch_sizes"]
        if training is not None:  # FedSGD configurations have none (their job identifiers predate FedAvg)
            config.federated = federated["training"]
            config.federated.pop("order_known")
    check_unique(v, config.datasets, ("datasets",), "name")
    for index, dataset in enumerate(config.datasets):
        for batch in config.batch_sizes or []:
            if dataset["num_images"] % batch:
                v.add(
                    ("datasets", index, "num_images"),
                    f"{dataset['num_images']} images cannot be split into client batches of {batch} "
                    "(federated.batch_sizes): use a multiple of every batch size.",
                )
    with v.section():
        config.defenses = v.each(top.get("defenses", [{"type": "none"}]), ("defenses",), _defense(v))
    check_unique(v, config.defenses, ("defenses",), "name", "label")
    if not v.failed_under(("defenses",)):
        check_one_baseline(v, [(index, entry["type"]) for index, entry in enumerate(config.defenses)], ("defenses",))
        _check_rows(v, config.defenses)
    if training is not None and not v.failed_under(("defenses",)):
        where = [
            (("defenses", index, "params"), cached_defense(entry["type"], point["params"]))
            for index, entry in enumerate(config.defenses)
            for point in entry["points"]
        ]
        check_accounted_steps_of(v, where, training, config.batch_sizes or [])
    restrictions = {
        "datasets": [d["name"] for d in config.datasets],
        "models": config.models,
        "defenses": [d["name"] for d in config.defenses],
    }
    # a list whose own entries have problems is not checked against: those problems are reported already
    section = read_attack_section(
        v, top, {key: None if v.failed_under((key,)) else names for key, names in restrictions.items()}
    )
    config.budget, config.priors, config.attacks = section.budget, section.priors, section.attacks
    for i, dataset in enumerate(config.datasets):
        for name, spec in config.priors.items():
            warn_if_prior_saw(spec, name, dataset["source"], dataset["split"], f"datasets[{i}].split")
    for spec in config.priors.values():  # a weights file replaced at the same path changes the job identifiers
        if "weights" in spec and "sha256" not in spec and Path(spec["weights"]).is_file():
            spec["sha256"] = sha256_of(spec["weights"])
    v.raise_problems()
    return config


def file_name(value: Any) -> str:
    """A name that is also a file name (the default results file is ``bench-out/<name>.jsonl``)."""
    name = string()(value)
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"must be a plain name (it names the results file), without / or \\, got {name!r}.")
    return name


def _resources(v: Checker, value: Any, path: KeyPath) -> dict[str, float]:
    table = v.strict_table(value, path, ("cpus", "gpus"))
    return {
        "cpus": v.need(table.get("cpus", 1), (*path, "cpus"), integer(1, MAX_THREADS)),
        "gpus": v.need(table.get("gpus", 0), (*path, "gpus"), number(0.0)),
    }


def _utility(v: Checker, value: Any, path: KeyPath) -> dict[str, Any] | None:
    from art_gifd.utility import UTILITY_KEYS, read_utility_table

    table = v.strict_table(value, path, ("enabled", *UTILITY_KEYS))
    if not v.need(table.get("enabled", True), (*path, "enabled"), boolean):
        return None
    return read_utility_table(v, table, path)


def _dataset(v: Checker) -> Callable[[Any, KeyPath], dict[str, Any]]:
    """Validator of one ``[[datasets]]`` entry."""
    from art_gifd.data import DATASETS, image_folder_digest

    def check(value: Any, path: KeyPath) -> dict[str, Any]:
        keys = ("name", "source", "split", "offset", "num_images", "root", "channels")
        table = v.strict_table(value, path, keys, required=("name", "source", "num_images"))
        source = v.need(table["source"], (*path, "source"), string([*DATASETS, "folder"]))
        spec: dict[str, Any] = {
            "name": v.need(table["name"], (*path, "name"), string()),
            "source": source,
            "split": v.need(table.get("split", "heldout"), (*path, "split"), string()),
            "offset": v.need(table.get("offset", 0), (*path, "offset"), integer(0)),
            "num_images": v.need(table["num_images"], (*path, "num_images"), integer(1)),
        }
        if source == "folder":
            what = "a local image folder with one sub-folder per class, all images of the model's input size"
            spec["root"] = v.existing(table.get("root"), (*path, "root"), "folder", what)
            spec["channels"] = v.need(table.get("channels", 3), (*path, "channels"), integer(1))
            if spec["channels"] not in (1, 3):
                raise Stop((*path, "channels"), f"must be 1 (grey) or 3 (RGB), got {spec['channels']}.")
            spec["split"] = v.need(spec["split"], (*path, "split"), string(FOLDER_SPLITS))
            # in the job identifiers: results of an edited folder are not taken for the new images'
            spec["content_sha256"] = image_folder_digest(spec["root"])
        else:
            for key in ("root", "channels"):
                if key in table:
                    raise Stop((*path, key), f"only folder data sets take {key}; {source} is embedded.")
        return spec

    return check


def defense_label(defense: dict[str, Any]) -> str:
    """The row of a defence setting in reports and job labels: ``noise(sigma=0.01)``, ``prune(ratio=0.9)+adaptive``."""
    from art_gifd.defenses.registry import format_value

    label = defense["name"]
    if defense["grid"] is not None:
        label += f"({defense['grid']}={format_value(defense['strength'])})"
    return label + ("+adaptive" if defense["adaptive"] else "")


def _check_rows(v: Checker, defenses: list[dict[str, Any]]) -> None:
    """Name a defence setting whose row (label, grid value, attacker) another setting already has."""
    rows: dict[str, int] = {}
    for index, entry in enumerate(defenses):
        for point in entry["points"]:
            row = defense_label({"name": entry["name"], "grid": entry["grid"], **point})
            if rows.setdefault(row, index) != index:
                v.add(
                    ("defenses", index, "label"),
                    f"gives the row '{row}', which defenses[{rows[row]}] gives too: choose labels that keep every "
                    "setting's row apart.",
                )


def _defense(v: Checker) -> Callable[[Any, KeyPath], dict[str, Any]]:
    """Validator of one ``[[defenses]]`` entry (:func:`art_gifd.defenses.registry.read_defense_table`); the row
    name is its ``label``, by default its type."""
    from art_gifd.defenses.registry import read_defense_table

    def check(value: Any, path: KeyPath) -> dict[str, Any]:
        entry = read_defense_table(v, value, path)
        return {"name": entry.pop("label") or entry["type"], **entry}

    return check
