"""
Benchmark configuration: parse a YAML or TOML file, validate it and normalise it into a :class:`BenchConfig`.

Every error is a :class:`ConfigError` that names the file, the line and the key at fault and says how to fix it.
The schema (see ``art_gifd/bench/profiles/*.toml`` for complete examples)::

    name = "quick"                    # profile name (default results file: bench-out/<name>.jsonl)
    device = "cpu"                    # torch device of every job
    seeds = [0, 1]                    # each job runs once per seed (model weights, attack and defence randomness)
    batch_sizes = [1]                 # client batch sizes (FedAvg: private samples per client); every data set's
                                      # num_images must be a multiple
    models = ["lenet", "convnet"]     # art_gifd.models.build_model names

    [federated]                       # optional, one setting for every job
    algorithm = "fedsgd"              # "fedsgd" (default): each client shares one gradient of its batch; "fedavg":
                                      # the weight update of its local training, set by the keys below, the same as
                                      # an audit's [federated] table (art_gifd.federated.TRAINING_KEYS)
    # learning_rate = 0.05            # fedavg: the local learning rate (required)
    # epochs = 2                      # fedavg: local epochs (default 1) ... or:
    # steps = 4                       # fedavg: local steps (instead of epochs)
    # local_batch_size = 1            # fedavg: local mini-batch size (default: all the client's samples)
    # optimizer = "sgd"               # fedavg: "sgd" (default) or "adam"; momentum, weight_decay too
    # shuffle_seed = 0                # fedavg: the attacker knows the order (or shuffle = false; default: unknown)

    [budget]                          # equal step budget (art_gifd.attacks.registry.Budget), per attack overridable
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

    [[defenses]]                      # one parameter may be a list: the defence's strength grid
    name = "noise"
    type = "gaussian"
    sigma = [1e-3, 1e-2]

Defence types are ``none`` and the names of :data:`art_gifd.defenses.registry.DEFENSES` (``prune``, ``clip``,
``gaussian``, ``laplace``, ``quantize``, ``sign``, ``soteria``, ``dp`` with ``epsilon`` or ``noise_multiplier``,
``compose``) with their constructor parameters; ``adaptive = [false, true]`` also runs the attacker that replays the
defence. A folder data set is ``source = "folder"``, ``root`` (class sub-folders of images of one size) and
``channels``; its seeded 20 % held-out part is attacked and the rest trains the utility run. Priors: ``embedded``,
``face-dcgan``, ``dcgan``, ``stylegan2``, ``biggan`` (see :data:`art_gifd.priors.registry.PRIOR_TYPES`), the same
tables as an audit's ``[attacks] prior``. Attacks may be restricted with ``datasets``, ``models`` and ``defenses``
lists, and override the ``budget``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art_gifd.configfile import ConfigError, KeyPath, LocatedDocument, format_key, read_document
from art_gifd.configfile import parse_document as parse_document  # re-exported: parse a configuration string
from art_gifd.validation import check_integer, check_number

FOLDER_SPLITS = ("heldout", "train", "all")
#: Constructor arguments that the runner sets itself (from the budget, the batch size, the seed, the defence).
RESERVED_ATTACK_PARAMS = (
    "steps_per_stage",
    "num_restarts",
    "batch_size",
    "device",
    "seed",
    "verbose",
    "defense",
    "prior",
    "max_stage",
    "max_iter",
)
BUDGET_KEYS = ("steps_per_stage", "stages", "num_restarts")
UTILITY_DEFAULTS: dict[str, Any] = {"rounds": 300, "batch_size": 32, "learning_rate": 0.05, "probe_batches": 8}


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
        if self.document is not None:
            return self.document.error(path, message)
        return ConfigError(message, format_key(path), None, self.source)


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
    :raises ConfigError: Naming the file, line and key of the first problem found.
    :raises FileNotFoundError: If the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Benchmark configuration '{path}' not found.")
    return validate_config(read_document(path), base_dir=path.parent)


class _Validator:
    """Typed accessors over a :class:`LocatedDocument` that raise located :class:`ConfigError` s."""

    def __init__(self, document: LocatedDocument, base_dir: Path) -> None:
        self.doc = document
        self.base_dir = base_dir

    def fail(self, path: KeyPath, message: str) -> ConfigError:
        return self.doc.error(path, message)

    def table(self, value: Any, path: KeyPath, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
        what = format_key(path) or "the configuration"
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table (mapping) with keys {', '.join(allowed)}, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise self.fail((*path, key), f"unknown key in {what}: {hint}allowed keys are {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(path, f"{what} needs the key '{key}'")
        return value

    def integer(self, value: Any, path: KeyPath, low: int) -> int:
        try:
            return check_integer("", value, low)
        except ValueError as exc:
            raise self.fail(path, str(exc).rstrip(".")) from None

    def number(self, value: Any, path: KeyPath, low: float = float("-inf")) -> float:
        try:
            return check_number("", value, low)
        except ValueError as exc:
            raise self.fail(path, str(exc).rstrip(".")) from None

    def string(self, value: Any, path: KeyPath, choices: Sequence[str] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"must be a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise self.fail(path, f"unknown value {value!r}{hint}: choose one of {', '.join(choices)}")
        return value

    def boolean(self, value: Any, path: KeyPath) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {value!r}")
        return value

    def list_of(self, value: Any, path: KeyPath, item: Callable[[Any, KeyPath], Any], non_empty: bool = True) -> list:
        if not isinstance(value, list) or (non_empty and not value):
            raise self.fail(path, f"must be a{' non-empty' if non_empty else ''} list, got {_kind(value)}")
        return [item(v, (*path, i)) for i, v in enumerate(value)]

    def unique_names(self, entries: list[dict], path: KeyPath, key: str = "name") -> None:
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            if entry[key] in seen:
                raise self.fail((*path, index, key), f"duplicated {key} {entry[key]!r}: every entry needs its own")
            seen.add(entry[key])

    def existing_path(self, value: Any, path: KeyPath, what: str, directory: bool) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"is empty: set it to {what}")
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = self.base_dir / resolved
        if not (resolved.is_dir() if directory else resolved.exists()):
            raise self.fail(path, f"'{resolved}' does not exist: set it to {what}")
        return str(resolved.resolve())


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, dict | list) else type(value).__name__


TOP_LEVEL_KEYS = (
    "name",
    "description",
    "device",
    "seeds",
    "batch_sizes",
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
    :raises ConfigError: Naming the key and its line.
    """
    from art_gifd.models import MODELS

    v = _Validator(document, Path(base_dir))
    top = v.table(document.data, (), TOP_LEVEL_KEYS, required=("name", "budget", "datasets", "models", "attacks"))
    budget = _budget(v, top["budget"], ("budget",))
    config = BenchConfig(
        name=v.string(top["name"], ("name",)),
        description=str(top.get("description", "")),
        device=v.string(top.get("device", "cpu"), ("device",)),
        seeds=v.list_of(top.get("seeds", [0]), ("seeds",), lambda x, p: v.integer(x, p, 0)),
        batch_sizes=v.list_of(top.get("batch_sizes", [1]), ("batch_sizes",), lambda x, p: v.integer(x, p, 1)),
        budget=budget,
        resources=_resources(v, top.get("resources", {}), ("resources",)),
        utility=_utility(v, top.get("utility", {}), ("utility",)),
        datasets=v.list_of(top["datasets"], ("datasets",), _dataset(v)),
        models=v.list_of(top["models"], ("models",), lambda x, p: v.string(x, p, MODELS)),
        priors={},
        attacks=[],
        defenses=[],
        source=document.source,
        document=document,
    )
    config.federated = _federated(v, top.get("federated", {}), ("federated",), config.batch_sizes)
    for name in ("seeds", "batch_sizes", "models"):
        values = getattr(config, name)
        if len(set(values)) != len(values):
            raise v.fail((name,), f"has duplicated entries: {values}")
    v.unique_names(config.datasets, ("datasets",))
    for index, dataset in enumerate(config.datasets):
        for batch in config.batch_sizes:
            if dataset["num_images"] % batch:
                raise v.fail(
                    ("datasets", index, "num_images"),
                    f"{dataset['num_images']} images cannot be split into client batches of {batch} "
                    "(batch_sizes): use a multiple of every batch size",
                )
    priors = top.get("priors", {})
    if not isinstance(priors, dict):
        raise v.fail(("priors",), 'must be a table of named priors, e.g. [priors.mnist] type = "embedded"')
    config.priors = {str(name): _prior(v, spec, ("priors", name)) for name, spec in priors.items()}
    config.defenses = v.list_of(top.get("defenses", [{"name": "none", "type": "none"}]), ("defenses",), _defense(v))
    v.unique_names(config.defenses, ("defenses",))
    config.attacks = v.list_of(top["attacks"], ("attacks",), _attack(v, config))
    v.unique_names(config.attacks, ("attacks",), key="label")
    return config


def _federated(v: _Validator, value: Any, path: KeyPath, batch_sizes: list[int]) -> dict[str, Any] | None:
    """
    ``[federated]``: ``algorithm`` (``"fedsgd"``, the default, or ``"fedavg"``) and FedAvg's local-training keys, the
    same as an audit's (:data:`art_gifd.federated.TRAINING_KEYS`). Returns the ``LocalTraining`` fields, or ``None``.
    """
    from art_gifd.federated import ALGORITHMS, TRAINING_KEYS, local_training_from_config

    table = v.table(value, path, ("algorithm", *TRAINING_KEYS))
    algorithm = v.string(table.get("algorithm", "fedsgd"), (*path, "algorithm"), ALGORITHMS)
    training, problems = local_training_from_config(table, algorithm, batch_sizes)
    if problems:
        key, message = problems[0]
        raise v.fail((*path, key) if key else path, message.rstrip("."))
    if training is None:
        return None
    fields = training.describe()
    fields.pop("order_known")
    return fields


def _budget(v: _Validator, value: Any, path: KeyPath, required: Sequence[str] = BUDGET_KEYS) -> dict[str, int]:
    table = v.table(value, path, BUDGET_KEYS, required=required)
    return {key: v.integer(table[key], (*path, key), 1) for key in BUDGET_KEYS if key in table}


def _resources(v: _Validator, value: Any, path: KeyPath) -> dict[str, float]:
    table = v.table(value, path, ("cpus", "gpus"))
    return {
        "cpus": v.integer(table.get("cpus", 1), (*path, "cpus"), 1),
        "gpus": v.number(table.get("gpus", 0), (*path, "gpus"), 0.0),
    }


def _utility(v: _Validator, value: Any, path: KeyPath) -> dict[str, Any] | None:
    table = v.table(value, path, ("enabled", *UTILITY_DEFAULTS))
    if not v.boolean(table.get("enabled", True), (*path, "enabled")):
        return None
    settings = dict(UTILITY_DEFAULTS)
    for key in ("rounds", "batch_size", "probe_batches"):
        if key in table:
            settings[key] = v.integer(table[key], (*path, key), 0 if key == "rounds" else 1)
    if "learning_rate" in table:
        settings["learning_rate"] = v.number(table["learning_rate"], (*path, "learning_rate"), 0.0)
    return settings


def _dataset(v: _Validator) -> Callable[[Any, KeyPath], dict[str, Any]]:
    """Validator of one ``[[datasets]]`` entry."""
    from art_gifd.data import DATASETS

    def check(value: Any, path: KeyPath) -> dict[str, Any]:
        keys = ("name", "source", "split", "offset", "num_images", "root", "channels")
        table = v.table(value, path, keys, required=("name", "source", "num_images"))
        source = v.string(table["source"], (*path, "source"), [*DATASETS, "folder"])
        spec: dict[str, Any] = {
            "name": v.string(table["name"], (*path, "name")),
            "source": source,
            "split": v.string(table.get("split", "heldout"), (*path, "split")),
            "offset": v.integer(table.get("offset", 0), (*path, "offset"), 0),
            "num_images": v.integer(table["num_images"], (*path, "num_images"), 1),
        }
        if source == "folder":
            spec["root"] = v.existing_path(
                table.get("root"),
                (*path, "root"),
                "a local image folder with one sub-folder per class, all images of the model's input size",
                directory=True,
            )
            spec["channels"] = v.integer(table.get("channels", 3), (*path, "channels"), 1)
            if spec["channels"] not in (1, 3):
                raise v.fail((*path, "channels"), f"must be 1 (grey) or 3 (RGB), got {spec['channels']}")
            spec["split"] = v.string(spec["split"], (*path, "split"), FOLDER_SPLITS)
        else:
            for key in ("root", "channels"):
                if key in table:
                    raise v.fail((*path, key), f"only folder data sets take {key}; {source} is embedded")
        return spec

    return check


def _prior(v: _Validator, value: Any, path: KeyPath) -> dict[str, Any]:
    from art_gifd.priors.registry import INTEGER_KEYS, NUMBER_KEYS, PRIOR_TYPES

    if not isinstance(value, dict) or "type" not in value:
        raise v.fail(path, f"a prior needs a type: one of {', '.join(PRIOR_TYPES)}")
    kind = v.string(value["type"], (*path, "type"), list(PRIOR_TYPES))
    required, optional = PRIOR_TYPES[kind]
    table = v.table(value, path, ("type", *required, *optional), required=required)
    spec: dict[str, Any] = {"type": kind}
    for key in (*required, *optional):
        if key not in table:
            continue
        if key == "weights":
            what = "the generator's weights directory" if kind == "biggan" else "the generator's weights file"
            spec[key] = v.existing_path(table[key], (*path, key), what, directory=kind == "biggan")
        elif key in INTEGER_KEYS:
            spec[key] = v.integer(table[key], (*path, key), 1)
        elif key in NUMBER_KEYS:
            spec[key] = v.number(table[key], (*path, key), 0.0)
        else:
            spec[key] = v.string(table[key], (*path, key))
    if kind == "embedded":
        from art_gifd.priors.embedded import EMBEDDED_PRIORS

        spec["name"] = v.string(table.get("name", "mnist32"), (*path, "name"), list(EMBEDDED_PRIORS))
    return spec


def _defense(v: _Validator) -> Callable[[Any, KeyPath], dict[str, Any]]:
    from art_gifd.bench.components import build_defense
    from art_gifd.defenses import DEFENSES, defense_parameters

    types = ["none", *DEFENSES]

    def check(value: Any, path: KeyPath) -> dict[str, Any]:
        if not isinstance(value, dict) or "type" not in value:
            raise v.fail(path, f"a defence needs a type: one of {', '.join(types)}")
        kind = v.string(value["type"], (*path, "type"), types)
        accepted = defense_parameters(kind) if kind != "none" else []
        table = v.table(value, path, ("name", "type", "adaptive", *accepted), required=("name",))
        params = {k: table[k] for k in accepted if k in table}
        # compose takes a list of defences: it is one setting, never a grid
        grid = [k for k, x in params.items() if isinstance(x, list) and kind != "compose"]
        if len(grid) > 1:
            raise v.fail((*path, grid[1]), f"only one parameter may be a list (the strength grid); {grid[0]} is one")
        adaptive = table.get("adaptive", False)
        adaptive_values = v.list_of(
            adaptive if isinstance(adaptive, list) else [adaptive], (*path, "adaptive"), v.boolean
        )
        strengths = v.list_of(params[grid[0]], (*path, grid[0]), lambda x, p: x) if grid else [None]
        points = []
        for index, strength in enumerate(strengths):
            point = dict(params, **({grid[0]: strength} if grid else {}))
            for key, x in point.items():
                key_path = (*path, key, index) if grid and key == grid[0] else (*path, key)
                if isinstance(x, dict | list) and kind != "compose":
                    raise v.fail(key_path, f"must be a number or a string, got {_kind(x)}")
            try:
                build_defense(kind, point)
            except ValueError as exc:
                raise v.fail((*path, grid[0], index) if grid else path, str(exc)) from None
            for flag in adaptive_values:
                points.append({"params": point, "strength": point[grid[0]] if grid else None, "adaptive": flag})
        name = v.string(table.get("name"), (*path, "name"))
        return {"name": name, "type": kind, "grid": grid[0] if grid else None, "points": points}

    return check


def _attack(v: _Validator, config: BenchConfig) -> Callable[[Any, KeyPath], dict[str, Any]]:
    from art_gifd.attacks.registry import ATTACK_REGISTRY, GENERATIVE_ATTACKS

    restrictions = {
        "datasets": [d["name"] for d in config.datasets],
        "models": config.models,
        "defenses": [d["name"] for d in config.defenses],
    }

    def check(value: Any, path: KeyPath) -> dict[str, Any]:
        keys = ("name", "label", "prior", "params", "budget", *restrictions)
        table = v.table(value, path, keys, required=("name",))
        name = v.string(table["name"], (*path, "name"), list(ATTACK_REGISTRY))
        spec: dict[str, Any] = {"name": name, "label": v.string(table.get("label", name), (*path, "label"))}
        if name in GENERATIVE_ATTACKS:
            if not config.priors:
                raise v.fail(path, f"{name} needs a generator, and none is defined: add [priors.<name>] with a type")
            if "prior" not in table:
                raise v.fail(path, f"{name} searches a generator's latent space: set prior = <a name under [priors]>")
            spec["prior"] = v.string(table["prior"], (*path, "prior"), list(config.priors))
        elif "prior" in table:
            raise v.fail((*path, "prior"), f"{name} does not use a generator: remove prior")
        allowed = [p for p in ATTACK_REGISTRY[name].cls.attack_params if p not in RESERVED_ATTACK_PARAMS]
        params = v.table(table.get("params", {}), (*path, "params"), allowed)
        spec["params"] = copy.deepcopy(params)
        spec["budget"] = {**config.budget, **_budget(v, table.get("budget", {}), (*path, "budget"), required=())}
        for key, names in restrictions.items():
            if key in table:
                spec[key] = v.list_of(table[key], (*path, key), lambda x, p, names=names: v.string(x, p, names))
        return spec

    return check
