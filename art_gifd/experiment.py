"""
Attack experiments: run attacks on FL client gradients of known images and score the reconstructions.

This is what the demo (and the benchmarks) run: for every model, data set and batch size, the client gradient of
each private batch is computed with :func:`~art_gifd.federated.client_gradients`, every attack reconstructs it at
the same step budget with labels inferred from the gradient, and the reconstructions are scored against the true
images after Hungarian matching. Results follow the ``art-gifd/results/v1`` schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_gifd.attacks.core import ReconstructionResult
from art_gifd.attacks.registry import ATTACK_REGISTRY, LOOP_PARAMS, Budget, build_attack
from art_gifd.data import load_dataset
from art_gifd.defenses.base import Defense, describe_defense
from art_gifd.federated import (
    LocalTraining,
    client_gradients,
    client_update,
    clip_range,
    describe_protocol,
    local_training,
)
from art_gifd.metrics import LPIPSMetric, evaluate_batch
from art_gifd.models import build_model, make_classifier
from art_gifd.priors.base import LayeredGenerator
from art_gifd.validation import MAX_SEED, check_device, check_flag, check_integer

logger = logging.getLogger(__name__)

SCHEMA = "art-gifd/results/v1"


@dataclass
class Case:
    """A set of private images attacked in batches: one row group of the results."""

    model: str
    dataset: str
    batch_size: int
    num_images: int
    split: str = "heldout"
    offset: int = 0
    #: The clients' defence (``None``: none), applied with a seed derived from the experiment's.
    defense: Defense | None = None
    #: Whether the attacker knows the defence and replays it on its dummy gradients where it can.
    adaptive: bool = False
    #: Images ``(N, C, H, W)`` in ``[0, 1]`` and labels to draw from instead of ``load_dataset(dataset, split)``
    #: (e.g. a user's image folder); ``dataset`` then only names them in the results.
    data: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    #: Number of classes of the FL model.
    num_classes: int = 10
    #: State dict loaded into the FL model after it is built (e.g. a model past the first FL rounds); ``None``: the
    #: freshly initialised model.
    weights: dict[str, Any] | None = field(default=None, repr=False)
    #: The clients' local training (FedAvg; the attacker knows it); ``None``: each client shares one FedSGD gradient.
    training: LocalTraining | None = None

    def __post_init__(self) -> None:
        self.batch_size = check_integer("Case.batch_size", self.batch_size, 1)
        self.num_images = check_integer("Case.num_images", self.num_images, 1)
        self.offset = check_integer("Case.offset", self.offset, 0)
        self.num_classes = check_integer("Case.num_classes", self.num_classes, 2)
        if check_flag("Case.adaptive", self.adaptive) and self.defense is None:
            raise ValueError("Case.adaptive=True needs a defence for the attacker to replay: give defense=.")


@dataclass
class Experiment:
    """A grid of cases × attacks on one prior at one budget."""

    cases: list[Case]
    attacks: tuple[str, ...]
    budget: Budget
    seed: int = 0
    device: str = "cpu"
    verbose: bool = True
    #: Extra constructor arguments of the attacks, by attack name, e.g. ``{"gifd": {"l1_radius": 0.1}}``.
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Give the attacks the true labels (else they infer them from each update).
    labels_known: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.attacks, str):
            raise ValueError(f"Experiment.attacks is the string {self.attacks!r}: give a tuple of attack names.")
        self.seed = check_integer("Experiment.seed", self.seed, 0, MAX_SEED)
        unknown = sorted(set(self.attack_params) - set(self.attacks))
        if unknown:
            raise ValueError(
                f"Experiment.attack_params names attacks the experiment does not run: {unknown} (attacks: "
                f"{list(self.attacks)}); check the spelling."
            )
        check_device(self.device)
        if not self.cases or not self.attacks:
            empty = "cases" if not self.cases else "attacks"
            raise ValueError(f"Experiment.{empty} is empty: give at least one, or there is nothing to run.")
        repeated = sorted({a for a in self.attacks if list(self.attacks).count(a) > 1})
        if repeated:
            raise ValueError(f"Experiment.attacks repeats {repeated}: each attack runs once per case and seed.")


def batch_seed(seed: int, start: int) -> int:
    """
    Seed of the client's defence and of the attack for the client batch starting at image ``start`` under the run
    seed ``seed``: the one definition every path uses (demo, audit, bench), so that a setting and a seed give the
    same numbers through each.
    """
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0] >> 1)


def attack_batches(
    estimator: Any,
    x_all: np.ndarray,
    y_all: np.ndarray,
    attack_name: str,
    prior: LayeredGenerator | None,
    budget: Budget,
    batch_size: int,
    seed: int,
    defense: Defense | None = None,
    adaptive: bool = False,
    labels_known: bool = False,
    train_mode: bool = False,
    device: str = "cpu",
    verbose: bool = False,
    attack_params: dict[str, Any] | None = None,
    lpips: LPIPSMetric | None = None,
    training: LocalTraining | None = None,
    replay_training: bool = True,
    first_index: int = 0,
    chance: bool = False,
) -> Iterator[tuple[np.ndarray, dict[str, Any], ReconstructionResult, np.ndarray]]:
    """
    The one experiment loop: split the private images into client batches, compute each client's update under its
    defence, attack it and score the reconstruction.

    :param estimator: The FL model (ART classifier).
    :param x_all: Private images, a multiple of ``batch_size`` of them, in the estimator's ``clip_values``.
    :param y_all: Their labels.
    :param attack_name: A name of :data:`~art_gifd.attacks.registry.ATTACK_REGISTRY`.
    :param prior: Generator of the generative attacks.
    :param budget: Step budget.
    :param batch_size: Client batch size.
    :param seed: Run seed; the batch of image ``start`` of the private set uses :func:`batch_seed` ``(seed, start)``
                 for its client (defence, shuffle) and its attack.
    :param defense: The client's defence; the attacker replays it if ``adaptive``.
    :param adaptive: Whether the attacker knows the defence.
    :param labels_known: Give the attack the true labels (else it infers them from the update).
    :param train_mode: The client computes its update in train mode.
    :param device: Device of the attack.
    :param verbose: Progress bars of the attacks.
    :param attack_params: Further constructor arguments of the attack.
    :param lpips: LPIPS metric of the scores (``None``: no LPIPS).
    :param training: The clients' local training (FedAvg: each shares its weight update, and the attacker replays the
                     training); ``None``: each client shares one FedSGD gradient.
    :param replay_training: Whether the attacker knows ``training`` and replays it (``False``: it attacks the update as
                            if it were one FedSGD gradient).
    :param first_index: Position of ``x_all[0]`` in the private set (its batches' seeds count from it), so that a slice
                        of the private images gets the seeds it has in the whole.
    :param chance: Also score the chance level (:func:`chance_ssim`, in ``scores["chance_ssim"]``); off by default, so
                   that timings of the attacks hold the attacks only.
    :return: Per batch: the originals, the scores of :func:`~art_gifd.metrics.evaluate_batch`, the attack's result
             and the reconstructions in the originals' order.
    """
    batch_size = check_integer("batch_size", batch_size, 1)
    check_integer("seed", seed, 0, MAX_SEED)
    check_integer("first_index", first_index, 0)
    if np.ndim(y_all) != 1:
        raise ValueError(
            f"The private labels have shape {np.shape(y_all)}: give class indices, one per image (for one-hot rows: "
            "y.argmax(1))."
        )
    if len(x_all) != len(y_all) or not len(x_all) or len(x_all) % batch_size:
        raise ValueError(
            f"The private set has {len(x_all)} images and {len(y_all)} labels: give one label per image, and a "
            f"positive multiple of batch_size={batch_size} images (each client batch is attacked whole)."
        )
    clash = sorted(set(attack_params or {}) & set(LOOP_PARAMS))
    if clash:
        raise ValueError(f"attack_params may not set {clash}: the experiment loop sets them for every batch.")
    lo, hi = clip_range(estimator)
    for start in range(0, len(x_all), batch_size):
        x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]
        here = batch_seed(seed, first_index + start)
        if training is None:
            grads = client_gradients(estimator, x, y, defense=defense, train_mode=train_mode, seed=here)
        else:
            grads = client_update(estimator, x, y, training, defense=defense, train_mode=train_mode, seed=here)
        attack = build_attack(
            attack_name,
            estimator,
            prior,
            budget,
            batch_size,
            here,
            defense=defense if adaptive else None,
            train_mode=train_mode,
            device=device,
            verbose=verbose,
            training=training if replay_training else None,
            **(attack_params or {}),
        )
        result = attack.reconstruct(grads, y if labels_known else None)
        scores = evaluate_batch(result.images, x, result.labels, y, data_range=(lo, hi), lpips=lpips)
        if chance:
            scores["chance_ssim"] = chance_ssim(attack, x, y, result, (lo, hi), here)
        yield x, scores, result, result.images[np.asarray(scores["assignment"])]


#: Decoy batches scored per client batch for the chance level of a generative attack.
CHANCE_DRAWS = 4


def chance_ssim(
    attack: Any, x: np.ndarray, y: np.ndarray, result: ReconstructionResult, data_range: tuple[float, float], seed: int
) -> list[float] | None:
    """
    SSIM of :data:`CHANCE_DRAWS` batches of the attack's decoys
    (:meth:`~art_gifd.attacks.generative.GenerativePriorAttack.decoys`), each matched to the originals as a
    reconstruction is: the chance level of the recognisable share. A class-conditional prior decodes them with the
    result's generator classes where the attacker was given the labels, and with random classes where it inferred them
    from the gradient (that label leak is part of what the gradient gave away, not chance). ``None`` for an attack
    without a prior, whose starting images are noise.
    """
    if not hasattr(attack, "decoys"):
        return None
    labels = None if result.labels_inferred else result.extra.get("generator_labels")
    values: list[float] = []
    for draw in range(CHANCE_DRAWS):
        decoys = attack.decoys(len(x), (seed + 1 + draw) % (MAX_SEED + 1), labels)
        values += evaluate_batch(decoys, x, y, y, data_range=data_range)["per_image"]["ssim"]
    return values


def run_experiment(
    experiment: Experiment,
    prior: LayeredGenerator,
    prior_name: str,
    on_batch: Callable[[Case, str, np.ndarray, np.ndarray], None] | None = None,
) -> list[dict[str, Any]]:
    """
    Run every attack on every case and return one ``runs`` record per (case, attack): :func:`aggregate_run`'s, with
    the images' ``split`` (``None`` for images given as ``Case.data``) and ``offset``, and the experiment's ``seed``.

    :param experiment: The grid.
    :param prior: Generator used by the generative attacks.
    :param prior_name: Name recorded in the results.
    :param on_batch: Called with (case, attack, originals, reconstructions) for every batch, e.g. to draw figures.
    """
    lpips_metric = LPIPSMetric(device=experiment.device)
    runs = []
    total = sum(case.num_images // case.batch_size for case in experiment.cases) * len(experiment.attacks)
    progress = tqdm(total=total, desc="attacks", unit="batch", disable=not experiment.verbose)
    for case in experiment.cases:
        x_all, y_all = case.data if case.data is not None else load_dataset(case.dataset, case.split)
        if np.ndim(x_all) != 4 or np.shape(x_all)[1] not in (1, 3):
            raise ValueError(
                f"{case.dataset}: images of shape {np.shape(x_all)}: give NCHW images (N, C, H, W) with 1 or 3 "
                "channels, e.g. images.transpose(0, 3, 1, 2) for channels-last ones."
            )
        x_all = x_all[case.offset : case.offset + case.num_images]
        y_all = y_all[case.offset : case.offset + case.num_images]
        if len(x_all) < case.num_images or case.num_images % case.batch_size:
            raise ValueError(
                f"{case.dataset}: num_images={case.num_images} from offset {case.offset} must be available "
                f"({len(x_all)} are) and a multiple of batch_size={case.batch_size}."
            )
        model = build_model(case.model, x_all.shape[1], x_all.shape[-1], case.num_classes, seed=experiment.seed)
        if case.weights is not None:
            try:
                model.load_state_dict(case.weights)
            except (RuntimeError, TypeError, AttributeError) as err:
                message = " ".join(str(err).split())[:300]
                raise ValueError(f"Case.weights do not fit model {case.model!r}: {message}") from None
        estimator = make_classifier(model, x_all.shape[1:], nb_classes=case.num_classes, device=experiment.device)
        for attack_name in experiment.attacks:
            per_batch = []
            for x, scores, result, matched in attack_batches(
                estimator,
                x_all,
                y_all,
                attack_name,
                prior,
                experiment.budget,
                case.batch_size,
                experiment.seed,
                defense=case.defense,
                adaptive=case.adaptive,
                labels_known=experiment.labels_known,
                device=experiment.device,
                verbose=experiment.verbose,
                attack_params=experiment.attack_params.get(attack_name),
                lpips=lpips_metric,
                training=case.training,
            ):
                per_batch.append((scores, result))
                if on_batch is not None:
                    on_batch(case, attack_name, x, matched)
                progress.update(1)
            run = aggregate_run(case, attack_name, prior_name, per_batch, lpips_metric)
            # which images and seed: enough to rerun the record (a split only for the embedded data sets)
            run.update(split=case.split if case.data is None else None, offset=case.offset, seed=experiment.seed)
            runs.append(run)
            logger.info("%s", _describe(runs[-1]))
    progress.close()
    return runs


def aggregate_run(case: Case, attack: str, prior_name: str, per_batch: list, lpips_metric: LPIPSMetric) -> dict:
    """
    The run record (schema ``art-gifd/results/v1``) of one attack on one case, from its scored client batches.

    :param case: The attacked case.
    :param attack: The attack name.
    :param prior_name: The prior given to the experiment (recorded only for attacks that search a generator).
    :param per_batch: One ``(scores, result)`` pair per client batch: the scores of
                      :func:`~art_gifd.metrics.evaluate_batch` and the attack's reconstruction result.
    :param lpips_metric: The LPIPS metric that scored them (when unavailable, the record says why).
    :return: Mean and standard deviation of PSNR and SSIM, mean LPIPS and label accuracy, time, steps, the chosen
             stages and final losses, and the per-image scores (with whether each image's label is shared in its
             batch).
    """
    per_image: dict[str, list] = {"psnr": [], "ssim": [], "lpips": [], "shared_label": []}
    scored = all(s.get("chance_ssim") is not None for s, _ in per_batch)
    chance: list[float] | None = [] if scored else None
    for scores, _ in per_batch:
        for key in per_image:
            per_image[key].extend(scores["per_image"][key] or [])
        if chance is not None:
            chance.extend(scores["chance_ssim"])
    results = [r for _, r in per_batch]
    lpips_values = per_image["lpips"] if lpips_metric.available else None
    record = {
        "attack": attack,
        "defense": describe_defense(case.defense, adaptive=case.adaptive),
        "dataset": case.dataset,
        "model": case.model,
        "prior": prior_name if ATTACK_REGISTRY[attack].generative else None,
        "batch_size": case.batch_size,
        "num_images": case.num_images,
        "federated": describe_protocol(case.training),
        "psnr": float(np.mean(per_image["psnr"])),
        "psnr_std": float(np.std(per_image["psnr"])),
        "ssim": float(np.mean(per_image["ssim"])),
        "ssim_std": float(np.std(per_image["ssim"])),
        "lpips": float(np.mean(lpips_values)) if lpips_values else None,
        "lpips_unavailable_reason": None if lpips_metric.available else lpips_metric.reason,
        "label_accuracy": float(np.mean([s["label_accuracy"] for s, _ in per_batch])),
        "seconds": float(sum(r.seconds for r in results)),
        "steps": results[0].steps,
        "num_restarts": int(results[0].stage_losses.shape[1]),
        "chosen_stages": [r.stage_names[r.best_stage] for r in results],
        "final_losses": [r.best_loss for r in results],
        "per_image": {**per_image, "lpips": lpips_values},
        # SSIM of the attack's decoys (images it could output without the gradient): the chance level
        "chance_ssim": chance,
    }
    if any("generator_labels" in r.extra for r in results):  # a class-conditional prior: the classes it was given
        record["task_labels"] = [np.asarray(r.labels).tolist() for r in results]
        record["generator_labels"] = [r.extra.get("generator_labels") for r in results]
    return record


def protocol_label(run: dict[str, Any]) -> str:
    """``"fedsgd"`` or ``"fedavg×4"`` (the local steps) for a run record."""
    federated = run.get("federated") or {"algorithm": "fedsgd"}
    if federated["algorithm"] != "fedavg":
        return "fedsgd"
    return f"fedavg×{local_training(federated).num_steps(run['batch_size'])}"


def _describe(run: dict[str, Any]) -> str:
    return (
        f"{run['model']:8s} {run['dataset']:9s} B={run['batch_size']} {protocol_label(run):9s} {run['attack']:12s} "
        f"PSNR {run['psnr']:6.2f} ± {run['psnr_std']:5.2f} dB  SSIM {run['ssim']:.3f}  "
        f"labels {run['label_accuracy']:.2f}  {run['seconds']:6.1f} s"
    )


def results_table(runs: list[dict[str, Any]]) -> str:
    """A plain-text table of the runs, one line each."""
    header = (
        f"{'model':8s} {'dataset':9s} {'B':>3s} {'protocol':9s} {'attack':12s} {'PSNR (dB)':>16s} {'SSIM':>6s} "
        f"{'labels':>6s} {'s':>7s}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        lines.append(
            f"{r['model']:8s} {r['dataset']:9s} {r['batch_size']:3d} {protocol_label(r):9s} {r['attack']:12s} "
            f"{r['psnr']:7.2f} ± {r['psnr_std']:5.2f} {r['ssim']:6.3f} {r['label_accuracy']:6.2f} {r['seconds']:7.1f}"
        )
    return "\n".join(lines)
