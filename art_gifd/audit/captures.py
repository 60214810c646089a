"""
Auditing a captured federated run: every captured client update of the chosen rounds, attacked with the client
protocol that was really used, and the leakage reported round by round.

An audit config whose ``[federated]`` table names a ``source`` (a capture folder written by
:class:`art_gifd.integrations.flower.CaptureStrategy`) is a capture audit; ``art-gifd audit`` runs it with
:func:`run_capture_audit`. The other tables are those of :mod:`art_gifd.audit.config` (``[model]``,
``[budget]``, ``[priors.<name>]``, ``[[attacks]]``, ``[report]``, ``title``, ``output``, ``device``, ``seeds``); there
is no ``[data]``, ``[[defenses]]`` or ``[utility]``: the updates are what the deployment shared, its defences included::

    [federated]
    source = "captures/"                   # the capture folder
    rounds = [1, 5]                        # rounds to attack (default: every captured round)
    updates_per_search = 8                 # updates of one local training attacked in one batched search
    mix_rounds = false                     # true: batches may mix rounds (faster; equal only up to float rounding)
    clients = [17, 23]                     # client node ids (default: every captured client)
    client_data = "my_app.task:partition"  # optional ground truth: a callable(partition_id) -> (images, labels);
                                           # modules beside the config file are importable
    partition_key = "partition-id"         # the reply metric that names the client's partition (default)
    learning_rate = 0.05                   # local-training keys override the captured train configuration

**Client protocol.** Each update is attacked as a FedAvg update of :class:`~art_gifd.federated.LocalTraining` built
from the train configuration the server sent (:data:`~art_gifd.integrations.captures.CONFIG_ALIASES`: ``lr``,
``local-epochs``, ``batch-size``, …), with the ``[federated]`` keys winning, at the client's reported number of
examples. A client that shuffles its data with its own generator has an order the attacker does not know: the default
(``shuffle = true`` without ``shuffle_seed``) says so.

**Labels** are inferred from each update (:func:`~art_gifd.labels.infer_labels`); with ``labels = "known"`` in an
``[[attacks]]`` table they come from ``client_data``.

**Scores.** With ``client_data``, each reconstruction is matched to the client's images and scored (PSNR, SSIM, risk
as in the audit report). Without it, there is no ground truth: the report shows the reconstructions and the
ground-truth-free indicator *update explained*, ``1 − d`` for the attack's final matching distance ``d`` (cosine
distance: 1 means the reconstruction reproduces the update's direction exactly); it says so.

Results are kept in ``<output>/captures-state/``: one JSON-lines record per (client update, attack, seed), appended
and fsynced when it finishes, and its images; an interrupted audit resumes with what finished.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.attacks.registry import build_attack
from art_gifd.audit.config import (
    _TOP,
    AttackSetting,
    _digest,
    _hash_arrays,
    _read_attacks,
    _read_model,
    boolean,
    int_list,
    integer,
    locked_output,
    open_config,
    read_common,
    read_report,
    string,
)
from art_gifd.audit.run import AuditRunError, prepare_output
from art_gifd.experiment import chance_ssim
from art_gifd.federated import (
    TRAINING_KEYS,
    LocalTraining,
    check_input_scale,
    clip_range,
    describe_training,
    local_training_from_config,
)
from art_gifd.integrations.captures import (
    CapturedUpdate,
    CaptureError,
    CaptureFolder,
    estimator_at,
    parameter_update,
    training_values,
)
from art_gifd.metrics import evaluate_batch
from art_gifd.models import import_callable
from art_gifd.report.audit import chance_share, highest_risk, risk_rating
from art_gifd.report.figures import plain_text, pyplot, reconstruction_grid
from art_gifd.store import (
    NULL,
    NUMBER,
    ResultsFile,
    environment,
    shape_problem,
    source_commit,
    write_bytes_atomic,
    write_json_atomic,
)
from art_gifd.validation import check_gradient, nonfinite_entries, to_numpy

logger = logging.getLogger(__name__)

SCHEMA = "art-gifd/capture-audit/v1"
STATE_DIR = "captures-state"
FIGURE = "leakage_over_rounds.png"
GRID = "reconstructions.png"
#: The files of a capture audit's report (``report.json`` last).
REPORT_FILES = ("report.html", "summary.md", FIGURE, GRID, "report.json")
_FEDERATED = (
    "source",
    "rounds",
    "clients",
    "client_data",
    "partition_key",
    "updates_per_search",
    "mix_rounds",
    *TRAINING_KEYS,
)
_CAPTURE_TOP = tuple(k for k in _TOP if k not in ("data", "defenses", "utility", "images_per_setting"))


def is_capture_audit(config: str | Path | Mapping[str, Any]) -> bool:
    """Whether an audit config names a capture folder (``[federated] source``)."""
    federated = open_config(config)[1].document.data.get("federated")
    return isinstance(federated, Mapping) and "source" in federated


@dataclass
class CaptureAuditConfig:
    """A validated capture audit: its normalised settings and what was built from them."""

    source: Path | None
    settings: dict[str, Any]
    estimator: Any
    model: dict[str, Any]
    captures: CaptureFolder
    updates: list[CapturedUpdate]
    #: The local training of each update, by :attr:`CapturedUpdate.name`.
    trainings: dict[str, LocalTraining]
    client_data: Callable[..., Any] | None
    #: Each update's private images and labels from ``client_data`` (empty without it), by update name.
    ground_truth: dict[str, tuple[np.ndarray, np.ndarray]]
    attacks: tuple[AttackSetting, ...]
    #: The loaded generators of the generative attacks and their facts, by ``[priors]`` name.
    priors: dict[str, Any]
    prior_info: dict[str, dict[str, Any]]
    config_hash: str

    @property
    def output(self) -> Path:
        return Path(self.settings["output"])


def load_capture_audit(config: str | Path | Mapping[str, Any]) -> CaptureAuditConfig:
    """
    Read and validate a capture audit (see the module documentation): the model is built, the capture folder checked
    against it (names and shapes), every selected update's local training built and the attacks built.

    :raises AuditConfigError: Listing every problem, with its key and line.
    """
    source, check = open_config(config)
    base = check.base
    top = check.table(check.document.data, (), _CAPTURE_TOP)
    settings = read_common(check, top)
    device = settings["device"]
    settings["model"], estimator, model_facts = _read_model(check, top.get("model"), device)
    path = ("federated",)
    federated = check.table(top.get("federated"), path, _FEDERATED)
    folder = check.get(federated, path, "source", lambda v: check.path(v, "dir"))
    rounds = check.get(federated, path, "rounds", int_list(1), None)
    clients = check.get(federated, path, "clients", int_list(0), None)
    spec = check.get(federated, path, "client_data", string(), None)
    partition_key = check.get(federated, path, "partition_key", string(), "partition-id")
    together = check.get(federated, path, "updates_per_search", integer(1), 8)
    mix_rounds = check.get(federated, path, "mix_rounds", boolean, False)
    client_data = None
    if spec is not None:
        try:  # a module beside the config (the FL app's own task module) is importable
            client_data = import_callable(spec, base)
        except ValueError as err:
            check.add((*path, "client_data"), str(err))
    attack_settings, attacks, priors, prior_info = _read_attacks(check, top, device, None)
    settings.update(attack_settings)
    for attack in attacks:
        if attack.labels_known and spec is None:
            check.add(
                ("attacks", attack.index, "labels"), "'known' needs the clients' labels: set [federated] client_data."
            )
    settings["report"] = read_report(check, top.get("report"))
    captures, updates, trainings = None, [], {}
    if folder is not None:
        try:
            captures = CaptureFolder(folder)
            if estimator is not None:
                captures.check_model(estimator.model)
            updates = captures.select(rounds, clients)
        except CaptureError as err:
            check.add((*path, "source"), str(err))
    overrides = {k: federated[k] for k in TRAINING_KEYS if k in federated}
    unsaid = []  # updates whose local training only a default (one full-batch epoch) would fill in
    for update in updates:
        if update.num_examples is None:
            check.add(
                (*path, "source"),
                f"{captures.folder / update.file}: the client did not report its number of "
                "examples (metric 'num-examples'), which the attack needs as its batch size.",
            )
            continue
        if update.num_examples == 0:
            check.add(
                (*path, "clients"),
                f"update {update.name}: the client reported 0 training examples, so its update holds no private "
                f"data to attack: leave node {update.node_id} out of [federated] clients.",
            )
            continue
        values = training_values(update, overrides)
        if not {"epochs", "steps"} & set(values) or "local_batch_size" not in values:
            unsaid.append(update.name)
        training, problems = local_training_from_config(values, "fedavg", [update.num_examples])
        for key, message in problems:
            if key is None or key in overrides:
                hint = ""
            elif key in values:  # present in the capture, but unusable
                hint = " (from the captured train configuration: set it in [federated] to override it)"
            else:
                hint = " (not in the captured train configuration: set it)"
            check.add((*path, key) if key else path, f"update {update.name}: {message}{hint}")
        if training is not None:
            trainings[update.name] = training
    if unsaid:
        check.add(
            path,
            f"the captured train configuration of {len(unsaid)} update(s) (e.g. {unsaid[0]}) does not say how many "
            "local epochs (or steps) the clients ran and in which batch size: set epochs (or steps) and "
            "local_batch_size in [federated], as the clients' own run configuration has them.",
        )
    settings["federated"] = {
        "source": None if folder is None else str(folder),
        "rounds": sorted({u.server_round for u in updates}),
        "clients": sorted({u.node_id for u in updates}),
        "client_data": spec,
        "partition_key": partition_key,
        "updates_per_search": together,
        "mix_rounds": mix_rounds,
        "overrides": overrides,
    }
    truths = {}
    if captures is not None and estimator is not None and not check.failed_under((*path, "source")):
        truths = _check_updates(check, captures, updates, estimator, client_data, partition_key)
    check.raise_problems()
    assert captures is not None and estimator is not None
    # how many updates share a search changes no result beyond float rounding: a resumed run may change it
    searched = {k: v for k, v in settings["federated"].items() if k not in ("updates_per_search", "mix_rounds")}
    fingerprint = {
        "settings": {
            **{k: v for k, v in settings.items() if k not in ("output", "title")},
            "federated": searched,
        },
        "index": hashlib.sha256(json.dumps(captures.index, sort_keys=True).encode()).hexdigest(),
        "model_sha256": model_facts.get("model_sha256"),
        "prior_sha256": {name: facts.get("sha256") for name, facts in prior_info.items()},
        # what client_data returns, not only its name: a fixed partition() must not resume scores of the old one
        "ground_truth": {name: _hash_arrays(*truth) for name, truth in sorted(truths.items())},
    }
    return CaptureAuditConfig(
        source=source,
        settings=settings,
        estimator=estimator,
        model=model_facts,
        captures=captures,
        updates=updates,
        trainings=trainings,
        client_data=client_data,
        ground_truth=truths,
        attacks=tuple(attacks),
        priors=priors,
        prior_info=prior_info,
        config_hash=_digest(fingerprint),
    )


def _check_updates(
    check: Any,
    captures: CaptureFolder,
    updates: list[CapturedUpdate],
    estimator: Any,
    client_data: Callable[..., Any] | None,
    partition_key: str,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """
    Load every selected update and its round's global arrays, and ask ``client_data`` for each client's images, so
    that an update that cannot be attacked (zero, NaN, another shape) or a ground truth that cannot be scored is named
    now, not after the searches; return the ground truths by update name.
    """
    module = estimator.model
    names, shapes = zip(*[(n, tuple(p.shape)) for n, p in module.named_parameters()], strict=True)
    for server_round in sorted({u.server_round for u in updates}):
        try:
            arrays = captures.global_arrays(server_round)
            broken = nonfinite_entries(arrays)
            if broken:  # a diverged round: its model gives every candidate a NaN gradient
                check.add(
                    ("federated", "rounds"),
                    f"round {server_round}: its captured global weights hold NaN or infinite values (in "
                    f"{broken[:3]}), so no update of it can be attacked: leave it out with [federated] rounds.",
                )
                continue
            estimator_at(estimator, arrays)
        except (ValueError, RuntimeError) as err:  # CaptureError is a ValueError; torch's load_state_dict
            message = " ".join(str(err).split())[:300]
            check.add(
                ("federated", "source"), f"round {server_round}: its global arrays do not fit the model: {message}"
            )
    truths = {}
    for update in updates:
        where = f"update {update.name} ({captures.folder / update.file})"
        try:
            check_gradient(parameter_update(module, captures.update_arrays(update), str(update.file)), names, shapes)
        except ValueError as err:
            check.add(("federated", "source"), f"{where}: {err} Leave it out with [federated] clients or rounds.")
        if client_data is not None and update.num_examples is not None:
            try:
                truths[update.name] = _ground_truth(client_data, update, partition_key, estimator)
            except ValueError as err:
                check.add(("federated", "client_data"), f"{where}: {err}")
    return truths


def _ground_truth(
    client_data: Callable[..., Any], update: CapturedUpdate, key: str, estimator: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The client's private images and labels from ``client_data``, checked against its reported size and the model."""
    if key not in update.metrics:
        raise ValueError(
            f"the client reported no metric {key!r} naming its partition, so client_data cannot be asked for its "
            "images. Report it from the ClientApp, or set [federated] partition_key."
        )
    partition = update.metrics[key]
    try:
        returned = client_data(partition)
    except Exception as err:  # the user's function: any failure is theirs to see, named
        raise ValueError(f"client_data({partition!r}) raised {type(err).__name__}: {err}") from None
    if not isinstance(returned, tuple | list) or len(returned) != 2:
        raise ValueError(
            f"client_data({partition!r}) returned {type(returned).__name__}: it must return (images, labels), "
            "e.g. numpy arrays (N, C, H, W) in the model's input range and (N,) class indices."
        )
    x, y = (to_numpy(a) for a in returned)
    if x.dtype == object or y.dtype == object:
        raise ValueError(f"client_data({partition!r}) must return arrays of numbers, not of objects.")
    shape = tuple(estimator.input_shape)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or y.shape != (len(x),):
        raise ValueError(
            f"client_data({partition!r}) returned images {x.shape} and labels {y.shape}: the model needs images "
            f"(N, {', '.join(map(str, shape))}) and one label each."
        )
    if len(x) != update.num_examples:
        raise ValueError(
            f"client_data({partition!r}) returned {len(x)} images; the client reported {update.num_examples} examples."
        )
    check_input_scale(f"client_data({partition!r}) images", x, estimator)
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= estimator.nb_classes:
        raise ValueError(
            f"client_data({partition!r}) labels must be class indices in [0, {estimator.nb_classes - 1}], got "
            f"{y.dtype} values in [{y.min()}, {y.max()}]."
        )
    return x.astype(np.float32), y.astype(np.int64)


def _search_together(
    cfg: CaptureAuditConfig,
    attack: AttackSetting,
    seed: int,
    jobs: list[tuple[CapturedUpdate, Any, list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]],
) -> list[tuple[dict, dict]]:
    """
    Attack captured updates of one local training and size in one batched search (each ``(update, its round's
    estimator, observed update, ground truth)``); the record and images of each, in order.
    """
    update = jobs[0][0]
    training = cfg.trainings[update.name]
    search = build_attack(
        attack.name,
        jobs[0][1],
        cfg.priors.get(attack.prior),
        attack.budget,
        update.num_examples,
        seed,
        training=training,
        device=cfg.settings["device"],
        verbose=False,
        **attack.params,
    )
    start = time.perf_counter()
    results = search.reconstruct_many(
        [observed for _, _, observed, _ in jobs],
        labels=[truth[1] if attack.labels_known and truth is not None else None for *_, truth in jobs],
        estimators=[estimator for _, estimator, _, _ in jobs],
        max_together=len(jobs),
    )
    seconds = (time.perf_counter() - start) / len(jobs)
    return [
        _record(
            cfg,
            job_update,
            result,
            truth,
            attack,
            seed,
            seconds,
            len(jobs),
            _update_explained(estimator, observed, result, training, search.distance),
            None if truth is None else chance_ssim(search, *truth, result, clip_range(cfg.estimator), seed),
        )
        for (job_update, estimator, observed, truth), result in zip(jobs, results, strict=True)
    ]


def _update_explained(estimator: Any, observed: list[np.ndarray], result: Any, training: Any, distance: str) -> float:
    """
    1 − the cosine distance between the reconstruction's replayed update and the observed one, whatever distance the
    attack matched with (its own loss under the L2 distance is on another scale, near 0 for any small update).
    """
    import torch

    from art_gifd.attacks.core import GradientMatcher
    from art_gifd.federated import TargetModel

    if distance == "cosine":
        return float(1.0 - result.best_loss)
    target = TargetModel(estimator)
    labels = torch.as_tensor(np.asarray(result.labels), dtype=torch.long, device=target.device)
    matcher = GradientMatcher(target, target.as_gradient_list(observed), labels, "cosine", training=training)
    images = torch.as_tensor(result.images, device=target.device)
    return float(1.0 - matcher.loss(images).detach()[0])


def _record(
    cfg: CaptureAuditConfig,
    update: CapturedUpdate,
    result: Any,
    truth: tuple[np.ndarray, np.ndarray] | None,
    attack: AttackSetting,
    seed: int,
    seconds: float,
    together: int,
    explained: float,
    chance: list[float] | None,
) -> tuple[dict, dict]:
    """
    The record and images of one attacked update (``seconds``: its share of a search of ``together`` updates;
    ``explained``: :func:`_update_explained`; ``chance``: the SSIM of the attack's decoys against the ground truth,
    :func:`~art_gifd.experiment.chance_ssim`).
    """
    training = cfg.trainings[update.name]
    record: dict[str, Any] = {
        "id": update.name,
        "round": update.server_round,
        "node_id": update.node_id,
        "num_examples": update.num_examples,
        "attack": attack.label,
        "attack_name": attack.name,
        "seed": seed,
        "prior": cfg.prior_info[attack.prior]["name"] if attack.prior is not None else None,
        "training": training.describe(),
        "protocol": describe_training(training),
        "labels_known": attack.labels_known,
        "matching_loss": float(result.best_loss),
        "update_explained": explained,
        "seconds": seconds,
        "searched_together": together,
        **{f"run_{k}": v for k, v in cfg.captures.round_metrics(update.server_round).items()},
    }
    images = {"reconstructions": result.images}
    if truth is not None:
        scores = evaluate_batch(result.images, truth[0], result.labels, truth[1], data_range=clip_range(cfg.estimator))
        threshold = cfg.settings["report"]["recognisable_ssim"]
        recognisable = int(sum(s >= threshold for s in scores["per_image"]["ssim"]))
        record.update(
            psnr=scores["psnr"],
            ssim=scores["ssim"],
            label_accuracy=scores["label_accuracy"],
            per_image=scores["per_image"],
            recognisable_share=recognisable / len(truth[0]),
            chance_share=chance_share(chance, threshold),
        )
        record["risk"] = risk_rating(
            record["recognisable_share"],
            cfg.settings["report"]["high_share"],
            cfg.settings["report"]["medium_share"],
            record["chance_share"],
        )
        images = {"originals": truth[0], "reconstructions": result.images[np.asarray(scores["assignment"])]}
    return record, images


#: What the report reads of a resumed record (see :func:`~art_gifd.store.shape_problem`) ...
RECORD_SHAPE = {
    "id": str,
    "round": int,
    "node_id": int,
    "attack": str,
    "seed": int,
    "update_explained": NUMBER,
    "matching_loss": NUMBER,
    "seconds": NUMBER,
    "images": str,
}
#: ... and, when the clients' data were given, of its scores.
SCORES_SHAPE = {
    "psnr": NUMBER,
    "ssim": NUMBER,
    "label_accuracy": NUMBER,
    "recognisable_share": NUMBER,
    "chance_share": (NULL, *NUMBER),
    "risk": str,
    "per_image": {"psnr": [NUMBER], "ssim": [NUMBER]},
}


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a record read back for a resume (``None``: intact)."""
    return shape_problem(record, {**RECORD_SHAPE, **(SCORES_SHAPE if "psnr" in record else {})})


def _job_id(cfg: CaptureAuditConfig, update: CapturedUpdate, attack: AttackSetting, seed: int) -> str:
    """The record and image-file name of one attack on one update: another configuration's never collide with it."""
    return f"{update.name}-{attack.slug}-s{seed}-{cfg.config_hash[:12]}"


def run_capture_audit(
    config: str | Path | Mapping[str, Any] | CaptureAuditConfig,
    overwrite: bool = False,
    resume: bool = True,
    verbose: bool = True,
) -> dict[str, Path]:
    """
    Attack every selected captured update with every attack and seed, then write the report (``report.json``,
    ``summary.md``, ``report.html``, the leakage-over-rounds figure and the reconstruction grid).

    :param overwrite: Replace a report already in the output folder, discarding every earlier result there.
    :param resume: Reuse the records a run of the same configuration finished (``False``: attack all again).
    :return: The paths of the report's files.
    :raises AuditConfigError: For an invalid configuration, or an output folder that holds a report while
                              ``overwrite`` is false (before any attack runs).
    """
    cfg = config if isinstance(config, CaptureAuditConfig) else load_capture_audit(config)
    state = cfg.output / STATE_DIR
    store = ResultsFile(state / "records.jsonl", arrays_dir=state)
    with locked_output(store, cfg.source):
        done = prepare_output(cfg.output, REPORT_FILES, store, overwrite, resume, cfg.source, _record_problem)
        return _attack_captures(cfg, store, done, verbose)


def _attack_captures(
    cfg: CaptureAuditConfig, store: ResultsFile, done: dict[str, dict[str, Any]], verbose: bool
) -> dict[str, Path]:
    from tqdm.auto import tqdm

    progress = tqdm(
        total=len(cfg.updates) * len(cfg.attacks) * len(cfg.settings["seeds"]),
        desc="captured updates",
        unit="attack",
        disable=not verbose,
    )
    finished: dict[tuple[str, str, int], dict] = {}
    # updates of the same local training and size are searched together, per attack and seed (and round, unless
    # mix_rounds: one round's updates share its weights, so their search is the computation of one at a time, bit
    # for bit for FedSGD and for the replays measured), in batches of at most updates_per_search (what an
    # interruption can lose)
    groups: dict[tuple, list[CapturedUpdate]] = {}
    for update in cfg.updates:
        for attack in cfg.attacks:
            for seed in cfg.settings["seeds"]:
                key = (update.name, attack.label, seed)
                job_id = _job_id(cfg, update, attack, seed)
                # its reconstructions read back too: a damaged file names itself and the update is searched again
                if job_id in done and store.load_arrays(job_id) is not None:
                    finished[key] = done[job_id]
                    continue
                training = json.dumps(cfg.trainings[update.name].describe(), sort_keys=True, default=str)
                batch_round = None if cfg.settings["federated"]["mix_rounds"] else update.server_round
                groups.setdefault((attack.label, seed, training, update.num_examples, batch_round), []).append(update)
    progress.update(len(finished))
    together = cfg.settings["federated"]["updates_per_search"]
    estimators: dict[int, Any] = {}
    by_label = {attack.label: attack for attack in cfg.attacks}
    for (label, seed, *_), pending in groups.items():
        attack = by_label[label]
        for i in range(0, len(pending), together):
            batch = pending[i : i + together]
            rounds = {u.server_round for u in batch}
            estimators = {  # one copy of the model per round, kept while the next batch needs it
                r: estimators[r] if r in estimators else estimator_at(cfg.estimator, cfg.captures.global_arrays(r))
                for r in rounds
            }
            jobs = []
            for update in batch:
                estimator = estimators[update.server_round]
                observed = parameter_update(estimator.model, cfg.captures.update_arrays(update), str(update.file))
                jobs.append((update, estimator, observed, cfg.ground_truth.get(update.name)))
            try:
                searched = _search_together(cfg, attack, seed, jobs)
            except (ValueError, RuntimeError, MemoryError) as err:  # a search that diverged or ran out of memory
                raise AuditRunError(
                    f"attack '{label}' (seed {seed}) on update(s) {', '.join(u.name for u in batch)} failed: {err} "
                    f"The {len(finished)} attack(s) finished before it are kept: fix the cause and run the same "
                    "command again to resume."
                ) from err
            for update, (record, images) in zip(batch, searched, strict=True):
                job_id = _job_id(cfg, update, attack, seed)
                images_file = store.save_arrays(job_id, images)
                record.update(job_id=job_id, config_hash=cfg.config_hash, images=images_file.name)
                store.append(record)
                finished[(update.name, attack.label, seed)] = record
                progress.update()
                logger.info(
                    "%s %s seed %d: update explained %.3f", update.name, attack.label, seed, record["update_explained"]
                )
    records = [finished[(u.name, a.label, s)] for u in cfg.updates for a in cfg.attacks for s in cfg.settings["seeds"]]
    progress.close()
    return write_capture_report(cfg, records)


def _summary_rows(records: list[dict[str, Any]], scored: bool) -> list[dict[str, Any]]:
    """One row per (round, attack): the mean over clients and seeds, and the worst client."""
    rows = []
    for key in sorted({(r["round"], r["attack"]) for r in records}):
        group = [r for r in records if (r["round"], r["attack"]) == key]
        metric = "psnr" if scored else "update_explained"
        worst = max(group, key=lambda r: r[metric])
        row = {
            "round": key[0],
            "attack": key[1],
            "clients": len({r["node_id"] for r in group}),
            "update_explained": float(np.mean([r["update_explained"] for r in group])),
            "most_exposed_client": worst["node_id"],
            **{k: v for k, v in group[0].items() if k.startswith("run_")},
        }
        if scored:
            row.update(
                psnr=float(np.mean([r["psnr"] for r in group])),
                ssim=float(np.mean([r["ssim"] for r in group])),
                label_accuracy=float(np.mean([r["label_accuracy"] for r in group])),
                worst_psnr=worst["psnr"],
                recognisable_share=float(np.mean([r["recognisable_share"] for r in group])),
                chance_share=None
                if group[0]["chance_share"] is None
                else float(np.mean([r["chance_share"] for r in group])),
            )
        rows.append(row)
    return rows


@plain_text
def _figure(rows: list[dict[str, Any]], scored: bool, path: Path) -> Path:
    import matplotlib.ticker

    plt = pyplot()

    metric, label = ("psnr", "PSNR (dB), mean over clients") if scored else ("update_explained", "update explained")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for attack in sorted({r["attack"] for r in rows}):
        mine = [r for r in rows if r["attack"] == attack]
        ax.plot([r["round"] for r in mine], [r[metric] for r in mine], marker="o", label=attack)
    ax.set_xlabel("server round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(label)
    accuracy = sorted({(r["round"], r["run_evaluate_accuracy"]) for r in rows if "run_evaluate_accuracy" in r})
    if accuracy:
        twin = ax.twinx()
        twin.plot([a for a, _ in accuracy], [b for _, b in accuracy], "k--", label="accuracy (run's evaluation)")
        twin.set_ylabel("model accuracy")
        twin.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_capture_report(cfg: CaptureAuditConfig, records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the capture audit's report files from its records (see :func:`run_capture_audit`)."""
    from art_gifd.report.html import png_data_uri, template_environment

    out = cfg.output
    out.mkdir(parents=True, exist_ok=True)
    scored = cfg.client_data is not None
    rows = _summary_rows(records, scored)
    for row in rows:  # what capturing the round cost the run (in the capture's own accounting)
        row["capture_seconds"] = cfg.captures.rounds_info.get(row["round"], {}).get("capture_seconds")
    metric = "psnr" if scored else "update_explained"
    worst = max(records, key=lambda r: r[metric])
    document = {
        "schema": SCHEMA,
        "title": cfg.settings["title"] or f"Audit of the captured run in {cfg.captures.folder.name}",
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": cfg.settings,
        "model": cfg.model,
        "prior": cfg.prior_info,
        "capture": {"folder": str(cfg.captures.folder), **cfg.captures.index["metadata"]},
        "ground_truth": scored,
        "threat_model": _threat_model(cfg),
        "rows": rows,
        "records": records,
        "worst": {k: worst[k] for k in ("id", "round", "node_id", "attack", metric)},
        "summary": {"highest_risk": highest_risk(r["risk"] for r in records) if scored else None},
        "environment": environment(cfg.settings["seeds"][0], cfg.settings["device"]),
        "commit": source_commit(),
    }
    figure = _figure(rows, scored, out / FIGURE)
    grid_rows = []
    for record in sorted(records, key=lambda r: -r[metric])[:8]:
        # the update's best image, labelled with its own score (without ground truth: the first, and the update's)
        best = int(np.argmax(record["per_image"]["psnr"])) if scored else 0
        with np.load(out / STATE_DIR / record["images"]) as data:
            reconstruction = data["reconstructions"][best]
            original = data["originals"][best] if "originals" in data.files else None
        score = record["per_image"]["psnr"][best] if scored else record[metric]
        label = textwrap.fill(f"{record['id']} {record['attack']}", 20) + f"\n{metric} {score:.2f}"
        grid_rows.append((label, original, {"reconstruction": reconstruction}))
    grid = reconstruction_grid(grid_rows, ["reconstruction"], out / GRID, clip_range(cfg.estimator))
    paths = {"json": out / "report.json", "markdown": out / "summary.md", "html": out / "report.html"}
    markdown = template_environment(markdown=True).get_template("captures.md").render(doc=document)
    html = (
        template_environment()
        .get_template("captures.html")
        .render(doc=document, figure=png_data_uri(figure), grid=png_data_uri(grid))
    )
    write_bytes_atomic(paths["markdown"], markdown.encode())
    write_bytes_atomic(paths["html"], html.encode())
    write_json_atomic(paths["json"], document)
    return {**paths, "figure": figure, "grid": grid}


def _threat_model(cfg: CaptureAuditConfig) -> list[str]:
    """What the attacker (the server) saw and knew, one sentence each."""
    protocols = sorted({describe_training(t) for t in cfg.trainings.values()})
    lines = [
        "The attacker is the server (or anyone who reads its traffic): it sees each captured client's update "
        "(global − returned arrays) and the global model it sent, as captured from the run.",
        f"Client protocol replayed: {'; '.join(protocols)} (from the captured train configuration"
        + (
            f", with the audit's overrides {cfg.settings['federated']['overrides']})"
            if cfg.settings["federated"]["overrides"]
            else ")"
        ),
        "Labels: "
        + (
            "given to the attacker from client_data."
            if all(a.labels_known for a in cfg.attacks)
            else "inferred from each update by the attacker."
            if not any(a.labels_known for a in cfg.attacks)
            else "given from client_data to "
            + ", ".join(a.label for a in cfg.attacks if a.labels_known)
            + "; inferred from each update by the others."
        ),
    ]
    captured = cfg.captures.select()
    if len(cfg.updates) < len(captured):  # [federated] rounds / clients chose some of them

        def listed(values: set[int]) -> str:
            return ", ".join(map(str, sorted(values)))

        lines.append(
            f"Attacked {len(cfg.updates)} of the {len(captured)} captured updates: clients "
            f"{listed({u.node_id for u in cfg.updates})} of {listed({u.node_id for u in captured})}, rounds "
            f"{listed({u.server_round for u in cfg.updates})} of {listed({u.server_round for u in captured})}. "
            "'Most exposed' and the means are over the attacked updates only."
        )
    budgets = "; ".join(
        f"{a.label}: {a.budget.total_steps} steps per restart ({a.budget.stages} stages × {a.budget.steps_per_stage} "
        f"for GIFD), {a.budget.num_restarts} restart(s)"
        + (f", prior {cfg.prior_info[a.prior]['name']}" if a.prior is not None else "")
        for a in cfg.attacks
    )
    lines.append(
        f"Attack budgets: {budgets}. A stronger search can recover more: a low rating is not a proof of privacy."
    )
    report = cfg.settings["report"]
    if cfg.client_data is None:
        lines.append(
            "No ground truth: the clients' data were not given (client_data), so no PSNR/SSIM/risk is reported; the "
            "reconstructions and 'update explained' (1 − the cosine distance between the reconstruction's replayed "
            "update and the captured one) are shown instead."
        )
    else:
        lines.append(
            f"Risk: an image is recognisable at SSIM ≥ {report['recognisable_ssim']:g}; chance c is the recognisable "
            "share of the attack's decoys (random draws of its prior, matched as the reconstructions are; 0 for an "
            "attack that starts from noise); from the recognisable share s, k = (s − c) / (1 − c), an update is rated "
            f"high when k ≥ {report['high_share']:g}, medium above {report['medium_share']:g}, else low. LPIPS is not "
            "computed in capture audits."
        )
    return lines
