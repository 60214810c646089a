"""
What a defence costs the federated training: gradient fidelity and accuracy after a short FedSGD run.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from art_gifd.defenses.base import DefenseLike, make_generator
from art_gifd.federated import TargetModel, check_input_scale, defended_gradients
from art_gifd.validation import MAX_RATE, MAX_SEED, check_flag, check_integer, check_number, to_numpy

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.configfile import Checker, KeyPath

#: Training and test data: ``(x_train, y_train, x_test, y_test)``, images in the estimator's input range.
UtilityData = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


#: Most FedSGD rounds and cosine probe batches a utility run takes (each is one client gradient; far beyond what
#: "a short training run" needs, and what finishes on a CPU within a day for the small models this is meant for).
MAX_ROUNDS = 1_000_000
MAX_PROBE_BATCHES = 100_000


@dataclass
class UtilityResult:
    """
    Utility of a defence.

    :param gradient_cosine: Mean cosine between the defended and the clean update (all parameters together) over the
                            probe batches, at the estimator's weights.
    :param gradient_cosine_std: Standard deviation of that cosine over the probe batches.
    :param accuracy: Test accuracy after the FedSGD run under the defence (eval mode).
    :param initial_accuracy: Test accuracy of the estimator's weights.
    :param rounds: FedSGD rounds (one client batch each).
    :param batch_size: Client batch size.
    :param learning_rate: Server learning rate.
    :param seed: Seed of batch sampling and of the defence's randomness.
    :param seconds: Wall-clock time of the measurement.
    """

    gradient_cosine: float
    gradient_cosine_std: float
    accuracy: float
    initial_accuracy: float
    rounds: int
    batch_size: int
    learning_rate: float
    seed: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        return asdict(self)


def measure_utility(
    defense: DefenseLike | None,
    estimator: PyTorchClassifier,
    data: UtilityData | None = None,
    rounds: int = 300,
    batch_size: int = 32,
    learning_rate: float = 0.05,
    probe_batches: int = 8,
    seed: int = 0,
    train_mode: bool = False,
    verbose: bool = False,
) -> UtilityResult:
    """
    Measure a defence's utility: the cosine between defended and clean updates, and the test accuracy after a short
    seeded FedSGD run in which every round one client shares its defended update of one batch and the server takes a
    gradient step ``w ← w − learning_rate · update``. Training runs on a copy of the model from the estimator's weights;
    the estimator and its model are left unchanged. ``defense=None`` gives the undefended baseline.

    :param defense: Client-side defence, or ``None``.
    :param estimator: ART ``PyTorchClassifier`` of the FL model (its weights are the starting point).
    :param data: ``(x_train, y_train, x_test, y_test)``, the images finite and in the estimator's ``clip_values``;
                 ``None`` uses the embedded MNIST digits,
                 ``load_mnist32("train")`` and ``load_mnist32("heldout")`` (needs a 1×32×32 input).
    :param rounds: FedSGD rounds, at most :data:`MAX_ROUNDS`.
    :param batch_size: Client batch size, also used for the cosine probes.
    :param learning_rate: Server learning rate.
    :param probe_batches: Batches over which the gradient cosine is averaged, at most :data:`MAX_PROBE_BATCHES`.
    :param seed: Seed of batch sampling and of the defence's randomness, in ``[0, 2**63 - 1]``.
    :param train_mode: Compute client gradients with the model in train mode (accuracy is measured in eval mode).
    :param verbose: Show a progress bar over the rounds.
    :return: The measured utility.
    :raises ValueError: On a bad parameter, or data of the wrong shape, non-finite or outside ``clip_values``.
    """
    start = time.perf_counter()
    rounds = check_integer("rounds", rounds, 0, MAX_ROUNDS)
    batch_size = check_integer("batch_size", batch_size, 1)
    probe_batches = check_integer("probe_batches", probe_batches, 1, MAX_PROBE_BATCHES)
    learning_rate = check_number("learning_rate", learning_rate, 0.0, MAX_RATE, closed="right")
    seed = check_integer("seed", seed, 0, MAX_SEED)
    verbose = check_flag("verbose", verbose)
    target = TargetModel(estimator, train_mode=train_mode)
    x_train, y_train, x_test, y_test = _utility_data(data, target)
    if batch_size > len(x_train):
        raise ValueError(f"batch_size must be at most the {len(x_train)} training samples, got {batch_size}.")
    rng = np.random.default_rng(seed)
    generator = make_generator(seed, target.device)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.choice(len(x_train), size=batch_size, replace=False)
        x = torch.as_tensor(x_train[idx], dtype=torch.float32, device=target.device)
        return x, target.labels_to_indices(y_train[idx])

    cosines = []
    for _ in range(probe_batches):
        x, labels = batch()
        clean = torch.cat([g.flatten() for g in target.gradients(x, labels)])
        defended = torch.cat([g.flatten() for g in defended_gradients(target, x, labels, defense, generator)])
        cosines.append(float(torch.nn.functional.cosine_similarity(clean, defended, dim=0)))
    # accuracy is measured in eval mode whatever mode the clients train in (a train-mode module would score dropout's
    # random masks and each test chunk's batch statistics)
    evaluator = TargetModel(estimator, device=target.device) if train_mode else target
    initial_accuracy = _accuracy(evaluator, target.params, x_test, y_test)
    for round_ in tqdm(range(rounds), desc="utility rounds", unit="round", disable=not verbose, leave=False):
        try:
            update = defended_gradients(target, *batch(), defense, generator)
        except ValueError as err:
            if round_ == 0:
                raise
            raise ValueError(
                f"The FedSGD run diverged in round {round_ + 1} of {rounds}: the gradient of the trained weights is "
                f"not finite ({' '.join(str(err).split())[:80]}…). Lower learning_rate (now {learning_rate:g}), or a "
                "defence's noise."
            ) from None
        with torch.no_grad():
            for param, g in zip(target.params.values(), update, strict=True):
                param.sub_(learning_rate * g)
        if not all(bool(p.isfinite().all()) for p in target.params.values()):
            raise ValueError(
                f"The FedSGD run diverged in round {round_ + 1} of {rounds}: the model's weights became NaN or "
                f"infinite. Lower learning_rate (now {learning_rate:g}), or a defence's noise."
            )
    return UtilityResult(
        gradient_cosine=float(np.mean(cosines)),
        gradient_cosine_std=float(np.std(cosines)),
        accuracy=_accuracy(evaluator, target.params, x_test, y_test),
        initial_accuracy=initial_accuracy,
        rounds=rounds,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        seconds=time.perf_counter() - start,
    )


def _utility_data(data: UtilityData | None, target: TargetModel) -> UtilityData:
    if data is None:
        from art_gifd.data import load_mnist32

        if target.input_shape != (1, 32, 32):
            raise ValueError(
                f"The embedded utility data are 1×32×32 MNIST digits but the estimator expects {target.input_shape}: "
                "pass data=(x_train, y_train, x_test, y_test)."
            )
        return (*load_mnist32("train"), *load_mnist32("heldout"))
    if not isinstance(data, tuple | list) or len(data) != 4:
        raise ValueError(f"data must be a tuple (x_train, y_train, x_test, y_test), got {type(data).__name__}.")
    x_train, y_train, x_test, y_test = (to_numpy(a) for a in data)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.shape[1:] != target.input_shape or len(x) != len(y) or not len(x):
            raise ValueError(
                f"data: the {name} images must have shape (N, {', '.join(map(str, target.input_shape))}) with N > 0 "
                f"and one label each, got images {x.shape} and {len(y)} labels."
            )
        check_input_scale(f"data: x_{name}", x, target.estimator)
    return x_train, y_train, x_test, y_test


def _accuracy(
    evaluator: TargetModel, params: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray, chunk: int = 500
) -> float:
    """Test accuracy of ``params`` in ``evaluator``'s eval-mode module (dropout off, BatchNorm's running statistics)."""
    from torch.func import functional_call

    labels = evaluator.labels_to_indices(y)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            batch = evaluator.preprocess(
                torch.as_tensor(x[i : i + chunk], dtype=torch.float32, device=evaluator.device)
            )
            logits = functional_call(evaluator.module, (params, evaluator.buffers), (batch,))
            correct += int((logits.argmax(dim=1) == labels[i : i + chunk]).sum())
    return correct / len(x)


#: The keys of a configuration's ``[utility]`` table (audit and benchmark) that are :func:`measure_utility`'s
#: arguments, with its defaults.
UTILITY_KEYS = ("rounds", "batch_size", "learning_rate", "probe_batches")


def read_utility_table(check: Checker, table: Mapping[str, Any], path: KeyPath) -> dict[str, Any]:
    """
    The :data:`UTILITY_KEYS` of a ``[utility]`` table whose keys the caller has checked, with
    :func:`measure_utility`'s defaults; a bad value is a problem recorded on ``check`` (its value then ``None``).
    """
    from art_gifd.configfile import integer, number

    defaults = inspect.signature(measure_utility).parameters
    convert = {
        "rounds": integer(0, MAX_ROUNDS),
        "batch_size": integer(1),
        "learning_rate": number(0, MAX_RATE, low_open=True),
        "probe_batches": integer(1, MAX_PROBE_BATCHES),
    }
    return {key: check.get(table, path, key, convert[key], defaults[key].default) for key in UTILITY_KEYS}
