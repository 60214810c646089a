"""
The audit configuration: what system is audited (model, data, federated setting, defences), by which attacks, and
where the report goes.

An audit is described in one TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) file and loaded with
:func:`load_audit_config`, which validates the **whole** file before any attack runs: it imports the model factory,
loads the weights, runs the model once on a zero batch, loads the data, builds every defence and runs it once on one
private image, loads the prior and builds every attack. All problems are collected and raised together as one
:class:`AuditConfigError`; each names its key (``model.weights``, ``defenses[2].params.epsilon``, …) and, where it
can be found, the line of the file.

Relative paths in a file resolve against the folder of that file (for a mapping passed from Python: against the current
directory).

**Format.** A complete TOML example (``examples/audit_mnist.toml`` ships a runnable one)::

    title = "LeNet on MNIST, FedSGD"   # optional, shown in the report
    output = "audit-out"               # output folder (default "audit-out")
    device = "cpu"                     # torch device: "cpu", "cuda", "cuda:1" (default "cpu")
    images_per_setting = 4             # private images attacked per setting (a multiple of every batch size)
    seeds = [0]                        # every setting runs once per seed; results pool all seeds (default [0])

    [model]
    factory = "my_package.models:build_net"   # "module:callable" returning a torch.nn.Module ...
    factory_kwargs = { num_classes = 10 }     # ... called with these keyword arguments (default {})
    weights = "net.pt"                        # optional state dict, loaded with torch.load(weights_only=True)
    weights_key = "model_state_dict"          # optional: entry of the checkpoint holding the state dict
    # torchscript = "net.ts.pt"               # instead of factory: a TorchScript file (see below)
    input_shape = [1, 32, 32]                 # (C, H, W) of one input image
    num_classes = 10                          # must equal the model's output width (checked)
    loss = "cross_entropy"                    # the clients' training loss (only "cross_entropy")
    clip_values = [0.0, 1.0]                  # pixel range of raw input images (default [0, 1])
    preprocessing = { mean = [0.1307], std = [0.3081] }   # optional per-channel standardisation before the model
    train_mode = false                        # clients compute their gradient in train mode (BatchNorm batch stats)

    [data]                                    # the clients' private images: exactly one of embedded / image_folder
    embedded = "mnist32"                      # a data set of art_gifd.data.load_dataset ("mnist32", "digits32", …)
    split = "heldout"                         # its split (default "heldout": images no embedded prior saw)
    # image_folder = "private-images"         # or a folder with one sub-folder per class, all images one size
    offset = 0                                # index of the first attacked image (default 0)

    [federated]
    algorithm = "fedsgd"                      # "fedsgd": one gradient of one client batch is shared (default);
                                              # "fedavg": the weight update of local training (keys below)
    batch_sizes = [1, 4]                      # client batch sizes (FedAvg: private samples per client) to audit
    # learning_rate = 0.05                    # fedavg: the server's local learning rate (required)
    # epochs = 1                              # fedavg: local epochs (default 1) ... or:
    # steps = 4                               # fedavg: local steps (instead of epochs)
    # local_batch_size = 2                    # fedavg: local mini-batch size (default: all the client's samples)
    # optimizer = "sgd"                       # fedavg: "sgd" (default) or "adam"; momentum, weight_decay too
    # shuffle = true                          # fedavg: visit the samples in a random order each epoch (default)
    # shuffle_seed = 0                        # fedavg: that order is known to the attacker (default: unknown)

    [[defenses]]                              # zero or more; the undefended baseline "none" is always included
    type = "prune"
    params = { ratio = 0.9 }
    adaptive = true                           # the attacker knows the defence and replays it (default false;
                                              # [false, true]: both attackers)
    label = "pruning 90%"                     # optional; unique name in the report (default: type and params)

    [[defenses]]
    type = "gaussian"
    params = { sigma = [1e-3, 1e-2] }         # one parameter may be a list: the strength grid, one setting each

    [[defenses]]
    type = "dp"
    params = { epsilon = 8.0, delta = 1e-5, max_grad_norm = 1.0, sample_rate = 0.01, steps = 1000 }

    [budget]                                  # the step budget of every attack (default 100, 4, 2)
    steps_per_stage = 100                     # Adam steps per GIFD stage
    stages = 4                                # GIFD stages; other attacks run stages * steps_per_stage steps
    num_restarts = 2                          # random restarts per reconstruction

    [priors.mnist]                            # the generators of the generative attacks, by name
    type = "embedded"                         # art_gifd.priors.registry.PRIOR_TYPES (embedded, face-dcgan, dcgan, …)
    name = "mnist32"

    [[attacks]]                               # one or more; the benchmark runner's [[attacks]] tables
    name = "gifd"                             # any of ATTACK_NAMES
    prior = "mnist"                           # generative attacks: a name under [priors]
    params = { l1_radius = 0.1 }              # optional extra constructor arguments
    labels = "inferred"                       # "inferred" from the update (default) or "known" to the attacker
    # label = "gifd r=0.1"                    # optional: its unique name in the report (default: the name)
    # budget = { num_restarts = 4 }           # optional: this attack's own budget fields
    # defenses = ["none"]                     # optional: run it under these defence labels only

    [utility]                                 # what each defence costs the training (measure_utility's defaults)
    rounds = 300                              # FedSGD rounds of the short training run (0: gradient cosine only)
    batch_size = 32                           # client batch size of that run
    learning_rate = 0.05                      # server learning rate
    probe_batches = 8                         # batches over which the defended/clean gradient cosine is averaged
    test_fraction = 0.2                       # share of the data set held out to measure accuracy

    [report]
    recognisable_ssim = 0.5                   # a reconstruction with SSIM >= this counts as recognisable (> 0)
    high_share = 0.5                          # risk "high": recognisable share beyond chance >= high_share
    medium_share = 0.0                        # risk "medium": beyond chance > medium_share (default: any); else "low"

The same in YAML uses the same keys (``defenses`` is a list of mappings).

Model
    ``factory`` + optional ``weights``: the factory builds the architecture, the weights file (a state dict; a
    checkpoint with the state dict under ``weights_key``) is loaded strictly with ``torch.load(weights_only=True)``;
    without ``weights`` the factory's own initialisation is audited (the report says so). ``torchscript``: a file
    written by ``torch.jit.save``, loaded with ``torch.jit.load`` and converted to an equivalent eager graph module
    (the attacks differentiate through the model with ``torch.func``, which TorchScript does not support); the
    conversion is checked against the TorchScript module's own outputs, and eval mode is baked in (``train_mode``
    must be false). The model's output for a zero batch of ``input_shape`` must have ``num_classes`` columns.

Data
    ``embedded``: a data set name of :data:`art_gifd.data.DATASETS` and its ``split``. ``image_folder``: class
    sub-folders (sorted names are labels ``0, 1, …``) of images of one size equal to ``input_shape`` (grey or RGB
    after conversion to its channel count). The attacked images are ``images_per_setting`` images from ``offset``
    on; the utility run trains on a seeded share ``1 - test_fraction`` of the other images (split or folder) and
    tests on the rest.

Defences (``[[defenses]]`` ``type`` → class of :mod:`art_gifd.defenses`, ``params`` → its arguments)
    ``prune`` (:class:`~art_gifd.defenses.Prune`: ``ratio``, ``scope``), ``clip`` (:class:`~art_gifd.defenses.Clip`:
    ``max_norm``), ``gaussian`` (:class:`~art_gifd.defenses.GaussianNoise`: ``sigma``), ``laplace``
    (:class:`~art_gifd.defenses.LaplacianNoise`: ``sigma``), ``quantize`` (:class:`~art_gifd.defenses.Quantize`:
    ``bits``), ``sign`` (:class:`~art_gifd.defenses.SignCompression`), ``soteria``
    (:class:`~art_gifd.defenses.Soteria`: ``layer``, ``ratio``), ``dp`` (:class:`~art_gifd.defenses.DPSGD`: either
    ``epsilon`` — the noise multiplier is then found by Opacus for that target — or ``noise_multiplier``, plus
    ``max_grad_norm``, ``sample_rate``, ``steps``, ``delta`` and optional ``accountant``; the report states the
    accountant's (epsilon, delta) for the declared ``sample_rate`` and ``steps`` of the client's whole training),
    ``compose`` (:class:`~art_gifd.defenses.Compose`: ``params = { defenses = [{ type = "clip", params = {...} }, …] }``
    applied in order), and ``none`` (the baseline, added automatically; list it to give it a label).

Attacks (:func:`art_gifd.attacks.registry.read_attack_section`, the same tables as a benchmark's)
    Each ``[[attacks]]`` ``name`` is one of :data:`ATTACK_NAMES` (:data:`art_gifd.attacks.registry.ATTACK_REGISTRY`):
    ``gifd``, ``latent-only`` and ``pixel`` (Inverting Gradients) and the baselines ``dlg``, ``idlg``, ``gi`` (needs
    BatchNorm), ``ggl``, ``gias``. All run at the ``[budget]`` unless their own ``budget`` table changes a field;
    ``params`` adds constructor arguments (e.g. GIFD's ``l1_radius``, ``learning_rate``, ``distance``; see each class
    in :mod:`art_gifd.attacks`). ``prior`` names the ``[priors.<name>]`` table a generative attack
    (:data:`~art_gifd.attacks.registry.GENERATIVE_ATTACKS`) searches: ``type = "embedded"`` with a ``name`` of
    :data:`art_gifd.priors.embedded.EMBEDDED_PRIORS`, ``type = "face-dcgan"`` (the 64×64 face DCGAN of the
    ``gan-face-generate`` package), or a checkpoint of :data:`art_gifd.priors.registry.PRIOR_TYPES`: e.g. a DCGAN
    ``{ type = "dcgan", weights = "g.pt", nz = 64, ngf = 64, nc = 1, image_size = 32, key = "netG", training_domain =
    "…" }``, a StyleGAN2 ``{ type = "stylegan2", weights = "sg2.pt", size = 64 }`` or a BigGAN ``{ type = "biggan",
    weights = "biggan-deep-128/" }``. Its image shape must equal the model's ``input_shape``. A class-conditional
    prior maps each task label to the generator class of the same index. ``labels = "known"`` gives that attack the
    true labels (the worst case); by default it infers them from each update.

Report
    Thresholds of the per-setting risk rating (see :mod:`art_gifd.report.audit`): the share ``s`` of recognisable
    reconstructions (SSIM at least ``recognisable_ssim``) beyond the chance level ``c`` of the attack's decoys,
    ``(s − c) / (1 − c)``, is rated ``high`` at ``high_share`` or more, ``medium`` above ``medium_share``, else
    ``low``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from art_gifd.attacks.registry import ATTACK_REGISTRY, Budget, build_attack, read_attack_section
from art_gifd.configfile import (
    Checker,
    ConfigError,
    ConfigProblem,
    boolean,
    int_list,
    integer,
    mapping,
    number,
    string,
)
from art_gifd.configfile import open_config as open_config_file
from art_gifd.data import DATASETS, SINGLE_SPLIT, load_dataset, load_image_folder
from art_gifd.defenses import Defense, describe_defense
from art_gifd.defenses.registry import format_value
from art_gifd.federated import (
    LocalTraining,
    TargetModel,
    check_accounted_steps_of,
    client_gradients,
    client_update,
    dropout_layers,
    read_federated_table,
)
from art_gifd.models import ModelLoadError, check_model, load_user_model
from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.embedded import warn_if_prior_saw
from art_gifd.store import ResultsBusy, ResultsFile, file_slug, terminate_as_interrupt
from art_gifd.utility import UTILITY_KEYS, read_utility_table
from art_gifd.validation import (
    GRADIENT_NORM_RANGE,
    MAX_SEED,
    check_device,
    check_output_folder,
    inside_image_folder,
)

#: Attack names an audit accepts (those of :data:`art_gifd.attacks.registry.ATTACK_REGISTRY`).
ATTACK_NAMES = tuple(ATTACK_REGISTRY)
LOSSES: dict[str, Callable[[], nn.Module]] = {"cross_entropy": nn.CrossEntropyLoss}


class AuditConfigError(ConfigError):
    """An audit config (or its output folder) is invalid; :attr:`problems` lists every problem found."""

    what = "audit config"


@dataclass
class DefenseSetting:
    """One defence of the audit: its report label, config name and parameters, and the built defence."""

    label: str
    name: str
    params: dict[str, Any]
    adaptive: bool
    #: ``None`` for the undefended baseline.
    defense: Defense | None
    #: Position in the config's ``defenses`` list (``None`` for the implicit baseline).
    index: int | None = None

    def describe(self) -> dict[str, Any]:
        """Label, name, parameters, (epsilon, delta) and whether the attacker replays it, for the report."""
        return {"label": self.label, "config_name": self.name, **describe_defense(self.defense, self.adaptive)}


@dataclass
class AuditConfig:
    """A validated audit: the normalised settings (as recorded in the report) and the objects built from them."""

    #: The config file (``None`` for a mapping).
    source: Path | None
    #: Normalised, JSON-serialisable settings with every default filled in.
    settings: dict[str, Any]
    estimator: Any
    #: Model facts for the report (source, class, parameter count, weights and their SHA-256).
    model: dict[str, Any]
    #: The attacked images and labels (``images_per_setting`` images).
    x: np.ndarray
    y: np.ndarray
    #: ``(x_train, y_train, x_test, y_test)`` of the utility run.
    utility_data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    #: Data facts for the report (source, split, sizes, classes).
    data: dict[str, Any]
    defenses: list[DefenseSetting]
    attacks: tuple[AttackSetting, ...]
    #: The loaded generators of the generative attacks, by ``[priors]`` name.
    priors: dict[str, LayeredGenerator]
    #: Their facts for the report (name, architecture, training domain, SHA-256), by ``[priors]`` name.
    prior_info: dict[str, dict[str, Any]]
    config_hash: str
    #: The clients' local training under ``algorithm = "fedavg"`` (``None``: FedSGD).
    training: LocalTraining | None = None
    #: What every setting's numbers depend on (model, attacked data, protocol, seeds, device), hashed into each
    #: setting's and each utility measurement's key together with their own inputs.
    fingerprint: dict[str, Any] | None = None

    @property
    def output(self) -> Path:
        """The output folder."""
        return Path(self.settings["output"])

    @property
    def device(self) -> str:
        """The torch device."""
        return str(self.settings["device"])

    def setting_key(self, batch_size: int, defense: DefenseSetting, attack: AttackSetting) -> str:
        """
        Hash of everything one setting's numbers depend on: the audit's model, attacked images, protocol, seeds and
        device, the batch size, the defence (type, parameters, whether the attacker replays it) and the attack (name,
        parameters, budget, prior and its weights, label mode). Report names, thresholds, the utility run and the
        other settings are left out, so that editing them keeps a finished setting.
        """
        prior = self.settings["priors"].get(attack.prior) if attack.prior is not None else None
        return _digest(
            {
                "common": self.fingerprint,
                "batch_size": batch_size,
                "defense": {"type": defense.name, "params": defense.params, "adaptive": defense.adaptive},
                "attack": {
                    "name": attack.name,
                    "params": attack.params,
                    "budget": attack.budget,
                    "labels_known": attack.labels_known,
                    "prior": prior,
                    "prior_sha256": self.prior_info.get(attack.prior, {}).get("sha256") if prior else None,
                },
            }
        )

    def utility_key(self, defense: DefenseSetting) -> str:
        """Hash of what a defence's utility measurement depends on: the model, the utility run and the defence."""
        return _digest(
            {
                "model": self.fingerprint["model"] if self.fingerprint else None,
                "utility": self.settings["utility"],
                "utility_sha256": _hash_arrays(*self.utility_data),
                "seed": self.settings["seeds"][0],
                "device": self.device,
                "defense": {"type": defense.name, "params": defense.params},
            }
        )


def _digest(value: Any) -> str:
    """SHA-256 of a JSON rendering of ``value`` (keys sorted; dataclasses and paths as text)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Reading the file and locating keys


def _device(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a torch device string such as 'cpu' or 'cuda', got {value!r}.")
    device = check_device(value)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device type '{device.type}': use 'cpu' or 'cuda[:N]'.")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Sections

_TOP = (
    "title",
    "output",
    "device",
    "images_per_setting",
    "seeds",
    "model",
    "data",
    "federated",
    "defenses",
    "budget",
    "priors",
    "attacks",
    "utility",
    "report",
)
_MODEL = (
    "factory",
    "factory_kwargs",
    "weights",
    "weights_key",
    "torchscript",
    "input_shape",
    "num_classes",
    "loss",
    "clip_values",
    "preprocessing",
    "train_mode",
)
_DATA = ("embedded", "split", "image_folder", "offset")
_UTILITY = (*UTILITY_KEYS, "test_fraction")
_REPORT = ("recognisable_ssim", "high_share", "medium_share")


def _read_model(check: Checker, raw: Any, device: str | None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Model settings, the built estimator (``None`` after a problem) and the model facts for the report."""
    path = ("model",)
    if raw is None:
        check.add(path, "missing (required): the [model] table names the model under audit.")
        return {}, None, {}
    table = check.table(raw, path, _MODEL)
    factory = check.get(table, path, "factory", string(), None)
    torchscript = check.get(table, path, "torchscript", check.path, None)
    if factory is None and torchscript is None and not check.failed_under(path):
        check.add(path, 'give factory = "module:callable" (plus optional weights) or torchscript = "file".')
    if "factory" in table and "torchscript" in table:
        check.add((*path, "torchscript"), "give either factory (with weights) or torchscript, not both.")
    settings = {
        "factory": factory,
        "factory_kwargs": check.get(table, path, "factory_kwargs", mapping, {}),
        "weights": check.get(table, path, "weights", check.path, None),
        "weights_key": check.get(table, path, "weights_key", string(), None),
        "torchscript": torchscript,
        "input_shape": check.get(
            table, path, "input_shape", int_list(1, 3, unique=False), hint="e.g. [1, 32, 32] (C, H, W)."
        ),
        "num_classes": check.get(table, path, "num_classes", integer(2)),
        "loss": check.get(table, path, "loss", string(tuple(LOSSES)), "cross_entropy"),
        "clip_values": check.get(table, path, "clip_values", _clip_values, [0.0, 1.0]),
        "preprocessing": check.get(table, path, "preprocessing", mapping, None),
        "train_mode": check.get(table, path, "train_mode", boolean, False),
    }
    for key in ("weights", "weights_key", "factory_kwargs"):  # they would be ignored beside a TorchScript file
        if key in table and "torchscript" in table:
            check.add((*path, key), f"{key} belongs to a factory model; a TorchScript file carries its own weights.")
    if settings["torchscript"] is not None and settings["train_mode"]:
        check.add((*path, "train_mode"), "a TorchScript model is converted in eval mode: train_mode must be false.")
    preprocessing = _read_preprocessing(
        check, settings["preprocessing"], settings["input_shape"], settings["clip_values"]
    )
    settings["preprocessing"] = preprocessing
    for name in ("weights", "torchscript"):
        if settings[name] is not None:
            settings[name] = str(settings[name])
    if check.failed_under(path) or device is None:
        return settings, None, {}
    module, facts = _build_module(check, settings)
    if module is None:
        return settings, None, facts
    if not _check_output(check, module, settings):
        return settings, None, facts
    from art.estimators.classification import PyTorchClassifier

    extra = {} if preprocessing is None else {"preprocessing": (preprocessing["mean"], preprocessing["std"])}
    estimator = PyTorchClassifier(
        model=module,
        loss=LOSSES[settings["loss"]](),
        input_shape=tuple(settings["input_shape"]),
        nb_classes=settings["num_classes"],
        clip_values=tuple(settings["clip_values"]),
        device_type="gpu" if device.startswith("cuda") else "cpu",
        **extra,
    )
    try:  # the model as every client and attack will check it: logits of the right shape, trainable, float32
        target = TargetModel(estimator, train_mode=settings["train_mode"])
    except ValueError as err:
        check.add(path, str(err))
        return settings, None, facts
    dropout = dropout_layers(module) if settings["train_mode"] else []
    if not dropout and target.forward_is_random():
        mode = "train" if settings["train_mode"] else "eval"
        check.add(
            (*path, "train_mode") if settings["train_mode"] else path,
            f"two forward passes of the model on one batch differ ({mode} mode): its forward draws random numbers "
            "(functional dropout, added noise), which an attacker can neither know nor replay. Make the forward "
            "deterministic" + (", or set train_mode = false." if settings["train_mode"] else "."),
        )
        return settings, None, facts
    if dropout:
        check.add(
            (*path, "train_mode"),
            f"the model has dropout layers ({dropout[:3]}), whose masks in train mode an attacker "
            "cannot know or replay: set train_mode = false.",
        )
        return settings, None, facts
    return settings, estimator, facts


def _clip_values(value: Any) -> list[float]:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    if not ok or not value[0] < value[1]:
        raise ValueError(f"must be [min, max] with min < max, got {value!r}.")
    return [float(value[0]), float(value[1])]


def _read_preprocessing(
    check: Checker, raw: dict[str, Any] | None, shape: list[int] | None, clip: list[float] | None
) -> dict | None:
    """
    The ``mean`` / ``std`` standardisation: finite, one value or one per channel, a positive std, and on the scale of
    ``clip_values`` (constants for 0–255 pixels applied to [0, 1] images would feed the model a near-constant input).
    """
    if raw is None:
        return None
    path = ("model", "preprocessing")
    table = check.table(raw, path, ("mean", "std"))
    channels = shape[0] if shape else None
    values = {}
    for name in ("mean", "std"):
        value = table.get(name)
        ok = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )
        if not ok or len(value) not in (1, channels):
            count = "1 number" if channels == 1 else f"1 or {channels} numbers"
            check.add((*path, name), f"must be a list of {count} (one per channel), got {value!r}.")
        elif name == "std" and min(value) <= 0:
            check.add((*path, name), f"must be positive, got {value!r}.")
        else:
            values[name] = [float(v) for v in value]
    if len(values) != 2:
        return None
    if clip is not None:
        low, high = clip
        width = high - low
        if any(not low - width <= m <= high + width for m in values["mean"]) or max(values["std"]) > 10 * width:
            check.add(
                path,
                f"mean {values['mean']} and std {values['std']} are not on the scale of clip_values "
                f"[{low:g}, {high:g}]: the model would see almost the same input for every image. Give them in the "
                "images' units (constants for 0-255 pixels divided by 255 for images in [0, 1]), or set clip_values "
                "to the images' range.",
            )
            return None
    return values


def _build_module(check: Checker, settings: dict[str, Any]) -> tuple[nn.Module | None, dict[str, Any]]:
    """The user's module (:func:`art_gifd.models.load_user_model`); a problem names the key at fault."""
    try:
        return load_user_model(
            factory=settings["factory"],
            factory_kwargs=settings["factory_kwargs"],
            weights=settings["weights"],
            weights_key=settings["weights_key"],
            torchscript=settings["torchscript"],
            input_shape=tuple(settings["input_shape"]),
            search=check.base,
        )
    except ModelLoadError as err:
        check.add(("model", err.key), str(err))
        return None, {}


def _check_output(check: Checker, module: nn.Module, settings: dict[str, Any]) -> bool:
    """The model runs on ``input_shape`` and gives ``num_classes`` outputs (:func:`art_gifd.models.check_model`)."""
    try:
        check_model(module, tuple(settings["input_shape"]), settings["num_classes"])
    except ModelLoadError as err:
        check.add(("model", err.key), str(err))
        return False
    return True


def _read_data(
    check: Checker, raw: Any, model: dict[str, Any]
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None, dict[str, Any]]:
    """Data settings, all images and labels of the chosen source (``None`` after a problem) and the data facts."""
    path = ("data",)
    if raw is None:
        check.add(path, "missing (required): the [data] table names the clients' private images.")
        return {}, None, {}
    table = check.table(raw, path, _DATA)
    settings = {
        "embedded": check.get(table, path, "embedded", string(DATASETS), None),
        "split": check.get(table, path, "split", string(), None),
        "image_folder": check.get(table, path, "image_folder", lambda v: str(check.path(v, "folder")), None),
        "offset": check.get(table, path, "offset", integer(0), 0),
    }
    given = [name for name in ("embedded", "image_folder") if name in table]
    if len(given) != 1:
        check.add(path, 'give exactly one of embedded = "<name>" or image_folder = "<folder>".')
    if "image_folder" in table and "split" in table:
        check.add((*path, "split"), "applies to embedded data sets only; an image folder is used whole.")
    if settings["embedded"] in SINGLE_SPLIT and "split" in table:
        check.add((*path, "split"), f"{settings['embedded']} has a single split (all its images): remove data.split.")
    if settings["embedded"] is not None and settings["split"] is None and settings["embedded"] not in SINGLE_SPLIT:
        settings["split"] = "heldout"
    if check.failed_under(path):
        return settings, None, {}
    shape = model.get("input_shape")
    try:
        if settings["embedded"] is not None:
            x, y = load_dataset(settings["embedded"], settings["split"])
            facts = {"source": "embedded", "name": settings["embedded"], "split": settings["split"], "classes": None}
        else:
            channels = shape[0] if shape and shape[0] in (1, 3) else 1
            size = tuple(shape[1:]) if shape and len(shape) == 3 else None
            x, y, classes = load_image_folder(settings["image_folder"], channels=channels, image_size=size)
            facts = {"source": "image_folder", "folder": settings["image_folder"], "classes": classes}
    except ValueError as err:
        check.add((*path, "split" if "split" in str(err).lower() else given[0]), str(err))
        return settings, None, {}
    except (FileNotFoundError, OSError) as err:
        check.add((*path, given[0]), str(err))
        return settings, None, {}
    facts.update(available_images=len(x), image_shape=list(x.shape[1:]))
    if shape and tuple(x.shape[1:]) != tuple(shape):
        check.add(
            (*path, given[0]),
            f"the images have shape {tuple(x.shape[1:])} but model.input_shape is {tuple(shape)}: resize the data "
            "or fix model.input_shape.",
        )
        return settings, None, facts
    clip = model.get("clip_values")
    if clip and len(x):
        lo, hi = float(x.min()), float(x.max())
        inside = lo >= clip[0] - 1e-6 and hi <= clip[1] + 1e-6
        if not inside or (hi - lo) < 0.1 * (clip[1] - clip[0]):
            check.add(
                ("model", "clip_values"),
                f"the images span [{lo:.4g}, {hi:.4g}], {'outside' if not inside else 'a tenth or less of'} "
                f"model.clip_values {clip}: set clip_values to the images' range (e.g. [0, 1] for images scaled "
                "to [0, 1]) or scale the images.",
            )
            return settings, None, facts
    classes = model.get("num_classes")
    if classes and len(y) and int(y.max()) >= classes:
        check.add((*path, given[0]), f"labels go up to {int(y.max())} but model.num_classes is {classes}.")
        return settings, None, facts
    return settings, (x, y), facts


def _read_defenses(check: Checker, raw: Any) -> list[DefenseSetting]:
    """
    The undefended baseline first (``none``, or the label of a listed ``none`` table), then every point of every
    ``[[defenses]]`` table (:func:`art_gifd.defenses.registry.read_defense_table`: each value of its strength grid,
    under each attacker), each under its own label.
    """
    from art_gifd.defenses.registry import cached_defense, check_one_baseline, read_defense_table

    path: tuple[Any, ...] = ("defenses",)
    entries: list[tuple[int, dict[str, Any]]] = []
    if raw is not None:
        with check.section():
            entries = check.each(raw, path, lambda value, at: (at[-1], read_defense_table(check, value, at)), False)
    check_one_baseline(check, [(index, entry["type"]) for index, entry in entries], path)
    baseline = DefenseSetting("none", "none", {}, False, None)
    out: list[DefenseSetting] = []
    for index, entry in entries:
        if entry["type"] == "none":
            baseline = DefenseSetting(entry["label"] or "none", "none", {}, False, None, index)
            continue
        both = len({point["adaptive"] for point in entry["points"]}) > 1
        for point in entry["points"]:
            label = entry["label"] or _default_label(entry["type"], point["params"])
            if entry["label"] and entry["grid"]:
                label += f" {entry['grid']}={format_value(point['strength'])}"
            if both and point["adaptive"]:
                label += " (adaptive)"
            defense = cached_defense(entry["type"], point["params"])
            out.append(DefenseSetting(label, entry["type"], point["params"], point["adaptive"], defense, index))
    settings = [baseline, *out]
    labels = [s.label for s in settings]
    for i, setting in enumerate(settings):
        if labels.index(setting.label) != i:
            check.add(
                (*path, setting.index or 0, "label"),
                f"label '{setting.label}' is used twice: give each defence a unique label.",
            )
    return settings


def _default_label(name: str, params: Mapping[str, Any]) -> str:
    """A short label: DP-SGD by its target epsilon (or noise multiplier) and delta, others by all their parameters."""
    if name == "dp":
        shown = {"ε": params.get("epsilon"), "σ": params.get("noise_multiplier"), "δ": params.get("delta")}
    else:
        shown = dict(params)
    return f"{name}(" + ", ".join(f"{k}={format_value(v)}" for k, v in shown.items() if v is not None) + ")"


@dataclass(frozen=True)
class AttackSetting:
    """One ``[[attacks]]`` entry of an audit: the attack, its name in the report and what it runs with."""

    label: str
    name: str
    budget: Budget
    params: dict[str, Any]
    #: Its position in the file's ``[[attacks]]`` list (problems found later name it).
    index: int = 0
    labels_known: bool = False
    #: The ``[priors]`` name of its generator (generative attacks), else ``None``.
    prior: str | None = None
    #: The labels of the defences it runs under (``None``: every defence).
    defenses: tuple[str, ...] | None = None

    @property
    def slug(self) -> str:
        """The label as a file-name part for setting identifiers and image files (:func:`~art_gifd.store.file_slug`)."""
        return file_slug(self.label)


def _read_attacks(
    check: Checker, top: Mapping[str, Any], device: str | None, defenses: list[DefenseSetting] | None
) -> tuple[dict[str, Any], list[AttackSetting], dict[str, LayeredGenerator], dict[str, dict]]:
    """
    The ``[budget]``, ``[priors.<name>]`` and ``[[attacks]]`` tables
    (:func:`art_gifd.attacks.registry.read_attack_section`), the attacks, the priors they use (loaded) and the prior
    facts for the report, by prior name.
    """
    from art_gifd.priors.registry import load_prior, prior_facts

    restrictions: dict[str, list[str] | None] = {}
    if defenses is not None:  # a capture audit has none: its updates carry the deployment's own
        restrictions["defenses"] = None if check.failed_under(("defenses",)) else [d.label for d in defenses]
    section = read_attack_section(check, top, restrictions)
    priors: dict[str, LayeredGenerator] = {}
    facts: dict[str, dict] = {}
    for name in sorted({a["prior"] for a in section.attacks if a.get("prior") in section.priors}):
        spec = section.priors[name]
        try:
            priors[name] = load_prior(spec, device or "cpu")
        except (FileNotFoundError, ValueError) as err:
            check.add(("priors", name, "weights") if "weights" in spec else ("priors", name), str(err))
            continue
        facts[name] = prior_facts(spec, priors[name])
    attacks = [
        AttackSetting(
            label=a["label"],
            name=a["name"],
            budget=Budget(**a["budget"]),
            params=a["params"],
            index=index,
            labels_known=a.get("labels") == "known",
            prior=a.get("prior"),
            defenses=tuple(a["defenses"]) if "defenses" in a else None,
        )
        for index, a in zip(section.positions, section.attacks, strict=True)
    ]
    settings = {"budget": section.budget, "priors": section.priors, "attacks": section.attacks}
    return settings, attacks, priors, facts


def _hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(str(array.shape).encode())
    return digest.hexdigest()


def _split_utility(
    x: np.ndarray, y: np.ndarray, attacked: range, test_fraction: float, seed: int
) -> tuple[np.ndarray, ...]:
    """Seeded train/test split of the images the audit does not attack (the ``attacked`` indices are left out)."""
    rest = np.setdiff1d(np.arange(len(x)), np.asarray(attacked))
    order = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_test = max(1, round(test_fraction * len(rest)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def open_config(config: str | Path | Mapping[str, Any]) -> tuple[Path | None, Checker]:
    """The audit config file (``None`` for a mapping) and a checker (:func:`art_gifd.configfile.open_config`)."""
    return open_config_file(config, AuditConfigError)


@contextlib.contextmanager
def locked_output(store: ResultsFile, source: Path | None) -> Iterator[None]:
    """
    Hold the lock of an audit's results file (another audit writing the same output folder is a problem of it), with
    SIGTERM stopping the run as Ctrl-C does.
    """
    if store.path.is_dir():
        problem = f"'{store.path}' is a folder where the audit keeps its results file: remove it, or choose another."
        raise AuditConfigError([ConfigProblem("output", problem)], source)
    made = [p for p in (store.path.parent, *store.path.parent.parents) if not p.exists()]  # deepest first
    try:
        with store.lock("art-gifd audit", "another output folder"), terminate_as_interrupt():
            yield
    except ResultsBusy as busy:
        raise AuditConfigError([ConfigProblem("output", str(busy))], source) from None
    except AuditConfigError:  # refused before any work: the folders the lock made go again
        if made:
            store.path.with_name(store.path.name + ".lock").unlink(missing_ok=True)
            for folder in made:
                with contextlib.suppress(OSError):  # one that holds something stays
                    folder.rmdir()
        raise


def read_common(check: Checker, top: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level keys every audit has: ``title``, ``output`` (resolved), ``device`` and ``seeds``."""
    settings: dict[str, Any] = {
        "title": check.get(top, (), "title", string(), None),
        "output": check.get(top, (), "output", string(), "audit-out"),
        "device": check.get(top, (), "device", _device, "cpu"),
        "seeds": check.get(top, (), "seeds", int_list(0, high=MAX_SEED), [0]),
    }
    if settings["output"] is not None:
        try:
            settings["output"] = str(check_output_folder(check.base / Path(settings["output"]).expanduser()))
        except ValueError as err:
            check.add(("output",), str(err))
    return settings


def read_report(check: Checker, raw: Any) -> dict[str, Any]:
    """The ``[report]`` table: the recognisable-SSIM threshold and the risk rating's shares."""
    report = check.table(raw, ("report",), _REPORT)
    settings = {
        "recognisable_ssim": check.get(report, ("report",), "recognisable_ssim", number(0, 1, low_open=True), 0.5),
        "high_share": check.get(report, ("report",), "high_share", number(0, 1, low_open=True), 0.5),
        "medium_share": check.get(report, ("report",), "medium_share", number(0, 1, high_open=True), 0.0),
    }
    if None not in settings.values() and settings["medium_share"] >= settings["high_share"]:
        check.add(("report", "medium_share"), "must be below report.high_share.")
    return settings


def load_audit_config(config: str | Path | Mapping[str, Any]) -> AuditConfig:
    """
    Read and validate an audit config (see the module documentation for the format).

    Everything is checked before this returns: paths, names, types and ranges, the model (imported, weights loaded,
    run once to check its output width against ``num_classes``), the data (loaded, image sizes and shape checked),
    each defence (built and run once on one private image), the prior and each attack (built for this model).

    :param config: A ``.toml`` / ``.yaml`` file, or the same content as a mapping (relative paths then resolve against
                   the current directory).
    :return: The validated audit.
    :raises AuditConfigError: Listing every problem, each with its key and (for files) line.
    """
    source, check = open_config(config)
    top = check.table(check.document.data, (), _TOP)
    settings = read_common(check, top)
    device = settings["device"]
    settings["images_per_setting"] = check.get(top, (), "images_per_setting", integer(1), 4)
    settings["model"], estimator, model_facts = _read_model(check, top.get("model"), device)
    settings["data"], data, data_facts = _read_data(check, top.get("data"), settings["model"])
    if settings["output"] is not None and settings["data"].get("image_folder") is not None:
        problem = inside_image_folder(settings["output"], settings["data"]["image_folder"])
        if problem is not None:
            check.add(("output",), problem)
    settings["federated"], training = read_federated_table(check, top.get("federated"))
    defenses = _read_defenses(check, top.get("defenses"))
    settings["defenses"] = [
        {"label": d.label, "type": d.name, "params": d.params, "adaptive": d.adaptive} for d in defenses
    ]
    attack_settings, attacks, priors, prior_info = _read_attacks(check, top, device, defenses)
    settings.update(attack_settings)
    if settings["data"].get("embedded") is not None:
        for name, spec in (settings.get("priors") or {}).items():
            warn_if_prior_saw(spec, name, settings["data"]["embedded"], settings["data"]["split"], "data.split")
    utility = check.table(top.get("utility"), ("utility",), _UTILITY)
    settings["utility"] = {
        **read_utility_table(check, utility, ("utility",)),
        "test_fraction": check.get(utility, ("utility",), "test_fraction", number(0, 1, True, True), 0.2),
    }
    settings["report"] = read_report(check, top.get("report"))
    x_attack, y_attack, utility_data = _check_counts(check, settings, data)
    if estimator is not None:
        if x_attack is not None:
            _probe_batches(check, estimator, settings, x_attack, y_attack)
            if not check.failed_under(("federated", "batch_sizes")):  # else every defence would fail the same way
                n = min(settings["federated"]["batch_sizes"] or [1])  # BatchNorm in train mode may need 2 or more
                train_mode = settings["model"]["train_mode"]
                _probe_defenses(check, estimator, defenses, x_attack[:n], y_attack[:n], train_mode, training)
                if training is not None:
                    where = [(("defenses", d.index or 0, "params"), d.defense) for d in defenses]
                    check_accounted_steps_of(check, where, training, settings["federated"]["batch_sizes"] or [])
        _probe_attacks(check, estimator, settings, attacks, priors, training)
    check.raise_problems()
    assert estimator is not None and x_attack is not None and y_attack is not None and utility_data is not None
    fingerprint = {
        "settings": {k: v for k, v in settings.items() if k not in ("output", "title")},
        "model_sha256": model_facts.get("model_sha256"),
        "prior_sha256": {name: facts.get("sha256") for name, facts in prior_info.items()},
        "data_sha256": _hash_arrays(x_attack, y_attack, *utility_data),
    }
    config_hash = _digest(fingerprint)
    common = {
        "model": {**settings["model"], "sha256": model_facts.get("model_sha256")},
        "data_sha256": _hash_arrays(x_attack, y_attack),
        "federated": settings["federated"],
        "seeds": settings["seeds"],
        "device": device,
    }
    data_facts.update(attacked_images=len(x_attack), offset=settings["data"]["offset"])
    data_facts.update(utility_train_images=len(utility_data[0]), utility_test_images=len(utility_data[2]))
    return AuditConfig(
        source=source,
        settings=settings,
        estimator=estimator,
        model=model_facts,
        x=x_attack,
        y=y_attack,
        utility_data=utility_data,
        data=data_facts,
        defenses=defenses,
        attacks=tuple(attacks),
        priors=priors,
        prior_info=prior_info,
        config_hash=config_hash,
        training=training,
        fingerprint=common,
    )


def _check_counts(
    check: Checker, settings: dict[str, Any], data: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[np.ndarray, ...] | None]:
    """Images per setting against the batch sizes and the data; the attacked images and the utility split."""
    n, batch_sizes = settings["images_per_setting"], settings["federated"]["batch_sizes"]
    if n is not None and batch_sizes is not None:
        for i, b in enumerate(batch_sizes):
            if n % b:
                check.add(
                    ("images_per_setting",),
                    f"{n} images cannot be split into client batches of {b} (federated.batch_sizes[{i}]): use a "
                    "multiple of every batch size.",
                )
    if data is None or n is None or settings["data"].get("offset") is None:
        return None, None, None
    x, y = data
    offset = settings["data"]["offset"]
    if offset + n > len(x):
        check.add(("images_per_setting",), f"needs {n} images from data.offset {offset} but the data hold {len(x)}.")
        return None, None, None
    utility = settings["utility"]
    if None in utility.values() or settings["seeds"] is None:
        return x[offset : offset + n], y[offset : offset + n], None
    if len(x) - n < 2:
        check.add(
            ("images_per_setting",),
            f"the data hold {len(x)} images and {n} are attacked: the utility run needs at least 2 others (its "
            "training and test images never include the attacked ones).",
        )
        return x[offset : offset + n], y[offset : offset + n], None
    split = _split_utility(x, y, range(offset, offset + n), utility["test_fraction"], settings["seeds"][0])
    if utility["batch_size"] > len(split[0]):
        check.add(
            ("utility", "batch_size"),
            f"{utility['batch_size']} is more than the {len(split[0])} training images of the utility run.",
        )
    return x[offset : offset + n], y[offset : offset + n], split


def _probe_batches(check: Checker, estimator: Any, settings: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
    """Compute one undefended client gradient at every batch size, so that a model that cannot take one shows now."""
    train_mode = settings["model"]["train_mode"]
    for i, size in enumerate(settings["federated"]["batch_sizes"] or []):
        try:
            client_gradients(estimator, x[:size], y[:size], train_mode=train_mode, seed=0)
        except (ValueError, RuntimeError) as err:
            hint = " (BatchNorm in train mode needs batches of 2 or more, or train_mode = false)" if train_mode else ""
            check.add(
                ("federated", "batch_sizes", i), f"the model cannot compute a gradient of {size} image(s): {err}{hint}"
            )


def _probe_defenses(
    check: Checker,
    estimator: Any,
    defenses: list[DefenseSetting],
    x: np.ndarray,
    y: np.ndarray,
    train_mode: bool,
    training: LocalTraining | None,
) -> None:
    """Run every defence once on the private batch ``x``, so that model-specific failures show before the audit."""
    probe = LocalTraining(training.learning_rate, steps=1) if training is not None else None
    for setting in defenses:
        if setting.defense is None:
            continue
        where = ("defenses", setting.index or 0, "params")
        try:
            if probe is None:
                shared = client_gradients(estimator, x, y, defense=setting.defense, train_mode=train_mode, seed=0)
            else:  # a FedAvg client applies DP-SGD on each local step: probe one
                shared = client_update(estimator, x, y, probe, defense=setting.defense, train_mode=train_mode, seed=0)
        except (ValueError, RuntimeError) as err:
            check.add(where, f"defence '{setting.label}' fails on this model: {err}")
            continue
        norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in shared))
        low, high = GRADIENT_NORM_RANGE
        if not low <= norm <= high:  # the attacks would refuse every update of this setting
            check.add(
                where,
                f"defence '{setting.label}' makes the shared update's norm {norm:.3g}, outside [{low:g}, {high:g}] "
                "where float32 gradient matching works: no attack could be run on it; choose a strength of a "
                "realistic scale.",
            )


def _probe_attacks(
    check: Checker,
    estimator: Any,
    settings: dict[str, Any],
    attacks: list[AttackSetting],
    priors: dict[str, LayeredGenerator],
    training: LocalTraining | None,
) -> None:
    """Build every attack for this model (their parameter checks run), without running them."""
    batch_sizes = settings["federated"]["batch_sizes"]
    # attacks are built for the first batch size: one the model cannot take is named there, once
    if batch_sizes is None or check.failed_under(("priors",)) or check.failed_under(("federated", "batch_sizes")):
        return
    shape = tuple(settings["model"]["input_shape"])
    for name, prior in priors.items():
        if tuple(prior.image_shape) != shape:
            check.add(
                ("priors", name),
                f"the prior generates images of shape {tuple(prior.image_shape)} but model.input_shape is {shape}: "
                "use a prior trained at the model's resolution and channels.",
            )
    if check.failed_under(("priors",)):
        return
    no_head = None
    try:
        _ = TargetModel(estimator, device=settings["device"]).classifier_head
    except ValueError as err:
        no_head = str(err)
    for attack in attacks:
        if no_head is not None and not attack.labels_known:
            check.add(
                ("attacks", attack.index, "name"),
                f"attack '{attack.label}' infers the labels from each update, which needs the classifier head, the "
                f"nn.Linear layer that produces the model's {estimator.nb_classes} outputs ({no_head} A TorchScript "
                'model converts to a graph without nn modules): set labels = "known" on this attack, or give the '
                "model as a factory.",
            )
            continue
        try:
            for size in dict.fromkeys((batch_sizes[0], max(batch_sizes))):  # the largest replays the most
                built = build_attack(
                    attack.name,
                    estimator,
                    priors.get(attack.prior),  # type: ignore[arg-type]  # None only for the non-generative attacks
                    attack.budget,
                    size,
                    0,
                    train_mode=settings["model"]["train_mode"],
                    device=settings["device"],
                    verbose=False,
                    training=training,
                    **attack.params,
                )
            built.check_replay_memory()
        except ValueError as err:
            key = ("attacks", attack.index, "params" if attack.params else "name")
            check.add(key, f"attack '{attack.label}' cannot run on this model with these parameters: {err}")
