"""
What a federated-learning client shares, and the attacker's differentiable view of the same model.

:func:`client_gradients` computes the FedSGD update of one client batch exactly as the client would;
:func:`client_update` runs a FedAvg client's local training (:class:`LocalTraining`) and returns its weight update.
:func:`simulate_update` is the attacker's differentiable replay of that training on candidate images.
:class:`TargetModel` is the shared, validated view of an ART ``PyTorchClassifier`` that both the client side and the
attacks use: a private copy of the module in the right mode, the estimator's loss and differentiable preprocessing,
and the parameter names and shapes that an observed gradient must match.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from art_gifd.defenses.base import (
    Compose,
    Defense,
    DefenseContext,
    DefenseLike,
    as_defense,
    is_gradient_list,
    make_generator,
)
from art_gifd.labels import find_classifier_head
from art_gifd.validation import (
    MATERIALISE,
    MAX_BATCH_SIZE,
    MAX_LOCAL_STEPS,
    MAX_RATE,
    MAX_SEED,
    check_device,
    check_flag,
    check_gradient,
    check_integer,
    check_number,
    meta_entries,
    nonfinite_entries,
    real_array,
    to_numpy,
)

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.configfile import Checker, KeyPath

logger = logging.getLogger(__name__)

#: What an observed gradient may be: arrays/tensors in ``model.parameters()`` order, or a name → array mapping.
GradientInput = Sequence[Any] | Mapping[str, Any]


class TargetModel:
    """
    The FL model under attack, seen through an ART ``PyTorchClassifier``.

    The estimator's module is copied (the user's model is never modified or switched between train and eval mode);
    the copy is frozen, moved to ``device`` and set to eval mode unless ``train_mode`` is true (BatchNorm then uses
    batch statistics and does not update its running statistics).

    The client is a classifier trained with softmax cross-entropy (``nn.CrossEntropyLoss``, reduced by mean or sum):
    label inference reads the gradient that loss leaves on the classifier head, and some attacks evaluate it on soft
    labels, which ``nn.NLLLoss`` does not take. Its weights are float32, the precision every attack computes in.
    """

    def __init__(
        self, estimator: PyTorchClassifier, device: str | torch.device | None = None, train_mode: bool = False
    ):
        """
        :param estimator: ART ``PyTorchClassifier`` wrapping the FL model.
        :param device: Device for the computation (default: the estimator's device).
        :param train_mode: Compute gradients in train mode (as a client with BatchNorm in train mode would).
        """
        from art.estimators.classification import PyTorchClassifier
        from torch.func import replace_all_batch_norm_modules_

        if not isinstance(estimator, PyTorchClassifier):
            raise ValueError(
                f"Expected an ART PyTorchClassifier, got {type(estimator).__name__}: wrap the model with "
                "art_gifd.models.make_classifier(model, input_shape) or ART's PyTorchClassifier."
            )
        check_client_model(estimator)
        if torch.get_default_dtype() != torch.float32:  # every tensor the search creates would come out in it
            raise ValueError(
                f"torch's default dtype is {str(torch.get_default_dtype()).removeprefix('torch.')} "
                "(torch.set_default_dtype): art-gifd computes in float32, as the FL model does; call "
                "torch.set_default_dtype(torch.float32) first."
            )
        self.estimator = estimator
        self.device = check_device(device if device is not None else estimator.device)
        self.train_mode = train_mode = check_flag("train_mode", train_mode)
        if not any(True for _ in estimator.model.parameters()):
            raise ValueError(
                "The FL model has no parameters (buffers only): a client shares the gradient or update of its "
                "parameters, so there is nothing to observe; give the model whose parameters the client trains."
            )
        state = estimator.model.state_dict()
        meta = meta_entries(state)
        if meta:
            raise ValueError(f"The FL model's weights {meta[:3]} are on the meta device (no values): {MATERIALISE}.")
        broken = nonfinite_entries(state)
        if broken:
            raise ValueError(
                f"The FL model's weights hold NaN or infinite values (in {broken[:3]}): load a valid checkpoint."
            )
        module = copy.deepcopy(estimator.model).to(self.device)
        if train_mode:
            replace_all_batch_norm_modules_(module.train())
        else:
            module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        self.params = {n: p.detach() for n, p in module.named_parameters()}
        self.buffers = {n: b.detach() for n, b in module.named_buffers()}
        self.names = list(self.params)
        self.shapes = [tuple(p.shape) for p in self.params.values()]
        self.loss_fn = estimator._loss
        self.nb_classes = int(estimator.nb_classes)
        self.input_shape = tuple(int(s) for s in estimator.input_shape)
        if estimator.preprocessing_operations and not estimator.all_framework_preprocessing:
            raise ValueError(
                "The estimator has preprocessing that is not implemented in PyTorch, so gradients cannot flow through "
                "it. Use PyTorch preprocessing (e.g. preprocessing=(mean, std)) or apply it inside the model."
            )
        self._probe()

    def _probe(self) -> None:
        """
        Run the model on a batch of two inputs through the estimator's preprocessing, one at each end of
        ``clip_values`` (zeros without them): the output must be logits of shape ``(2, nb_classes)``, not
        probabilities, and should differ between the two.
        """
        shape = (2, *self.input_shape)
        ends = clip_range(self.estimator) if self.estimator.clip_values is not None else (0.0, 0.0)
        try:  # the random generators are restored after: a dropout layer in train mode draws from them
            with torch.no_grad(), _forked_rng(self.device):
                x = torch.stack([torch.full(self.input_shape, float(end)) for end in ends]).to(self.device)
                out = self.module(self.preprocess(x))
        except Exception as err:  # any failure of the user's forward pass or of the preprocessing
            raise ValueError(
                f"The FL model fails on a batch of shape {shape} (the estimator's input_shape, after its "
                f"preprocessing): {' '.join(str(err).split())[:200]}. Check the estimator's input_shape and "
                "preprocessing against the model."
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, self.nb_classes):
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"The FL model's output for a batch of 2 is {found}, but the estimator's nb_classes = "
                f"{self.nb_classes} needs one tensor of shape (2, {self.nb_classes}): return the logits only, and "
                "give the estimator the model's number of classes."
            )
        if bool((out >= 0).all() and (out <= 1).all()) and torch.allclose(out.sum(1), torch.ones(2, device=out.device)):
            raise ValueError(
                "The FL model outputs probabilities (every row is non-negative and sums to 1): it ends in a softmax, "
                "but the cross-entropy loss expects logits. Remove the final softmax."
            )
        # a client needs no range (the attacks refuse an estimator without one): then nothing to compare
        if self.estimator.clip_values is not None and torch.allclose(out[0], out[1], rtol=1e-6, atol=1e-9):
            logger.warning(
                "The FL model gives the same output for an image at the low end of clip_values (%g) and one at the "
                "high end (%g): over that range (after the preprocessing) its input has no influence, so any image "
                "fits its gradient and no reconstruction means anything. Check clip_values and preprocessing against "
                "the model's data.",
                *ends,
            )

    def forward_is_random(self) -> bool:
        """
        Whether two forward passes on one batch differ (in this target's mode): randomness inside the forward pass
        (functional dropout, added noise), which an attacker can neither know nor replay. Global generators are
        restored after.
        """
        shape = (2, *self.input_shape)
        with torch.no_grad(), _forked_rng(self.device):
            x = self.preprocess(torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(self.device))
            # a tolerance, not equality: GPU kernels may sum in another order from one pass to the next
            return not torch.allclose(self.module(x), self.module(x), rtol=1e-4, atol=1e-6)

    @functools.cached_property
    def classifier_head(self) -> tuple[int, int | None]:
        """
        Parameter indices of the classifier head's weight and bias (:func:`~art_gifd.labels.find_classifier_head`,
        found by one forward pass on zeros).

        :raises ValueError: If the model has no ``nn.Linear`` layer producing its ``nb_classes`` outputs.
        """
        example = self.preprocess(torch.zeros((2, *self.input_shape), device=self.device))
        return find_classifier_head(self.module, self.nb_classes, example)

    @functools.cached_property
    def inert_parameters(self) -> tuple[str, ...]:
        """
        Names of the parameters whose loss gradient vanishes for every input in this mode: in train mode, a bias that
        feeds a BatchNorm layer (which subtracts the batch mean). What an update holds for them is float round-off,
        which Adam's normalisation or sign compression turns into full-size entries of random sign that no replay
        reproduces. Found on one batch of two random images: a gradient below 1e-6 of the whole gradient's norm.
        Empty in eval mode.
        """
        if not self.train_mode:
            return ()
        lo, hi = clip_range(self.estimator)
        noise = torch.rand((2, *self.input_shape), generator=torch.Generator().manual_seed(0))
        with _forked_rng(self.device):
            grads = self.gradients((lo + (hi - lo) * noise).to(self.device), torch.arange(2, device=self.device) % 2)
        return self._negligible(grads)

    def _negligible(self, grads: Sequence[torch.Tensor]) -> tuple[str, ...]:
        """Names of the parameters whose gradient is at most 1e-6 of the whole gradient's norm."""
        total = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))
        return tuple(n for n, g in zip(self.names, grads, strict=True) if float(g.double().norm()) <= 1e-6 * total)

    def vanishing_as_in_train_mode(self, observed: Sequence[torch.Tensor]) -> tuple[str, ...]:
        """
        For an eval-mode target with BatchNorm: the parameters whose gradient vanishes in train mode only (a bias
        feeding a BatchNorm layer, see :attr:`inert_parameters`), if every one of them is below 1e-6 of ``observed``'s
        norm there, as a train-mode client's update leaves them; else (or in train mode, or without such parameters)
        empty. An eval-mode gradient of those biases is the sum of their layer's output gradients, not zero.
        """
        if self.train_mode or not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.module.modules()
        ):
            return ()
        inert = TargetModel(self.estimator, device=self.device, train_mode=True).inert_parameters
        # an observed gradient is never zero everywhere (as_gradient_list refuses it)
        return inert if inert and set(inert) <= set(self._negligible(observed)) else ()

    def replay_plan(
        self, training: LocalTraining, n: int, max_steps: int | None = None
    ) -> list[tuple[np.ndarray, float]]:
        """
        The steps an attacker replays of ``training`` on ``n`` samples, under this model's loss reduction
        (:meth:`LocalTraining.simulation`).
        """
        return training.simulation(n, max_steps, getattr(self.loss_fn, "reduction", "mean"))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the estimator's preprocessing to ``x`` keeping the graph."""
        if not self.estimator.preprocessing_operations:
            return x
        x_pre, _ = self.estimator._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        return x_pre

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The client's training loss of the (already preprocessed) batch ``x`` under parameters ``params``."""
        from torch.func import functional_call

        return self.loss_fn(functional_call(self.module, (params, self.buffers), (x,)), y)

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Parameter gradients of the loss of the raw batch ``x`` (one FedSGD step), in parameter order."""
        from torch.func import grad

        try:
            g = grad(self.loss)(self.params, self.preprocess(x), y)
        except ValueError as err:
            if "more than 1 value per channel" not in str(err):
                raise
            raise ValueError(
                f"BatchNorm in train mode (train_mode=True) on a batch of {len(x)} sample: the batch statistics of one "
                "sample are undefined, so no client computes this gradient (for a FedAvg client: a local mini-batch "
                "of one, e.g. the last of an epoch). Use batches of 2 or more samples, or train_mode=False."
            ) from None
        except (KeyError, NotImplementedError) as err:  # what torch.func raises for a graph it cannot transform
            raise ValueError(
                f"the model cannot be differentiated with torch.func ({type(err).__name__}: {err}), which every attack "
                "uses: a model with data-dependent control flow (an `if` on tensor values, a converted TorchScript "
                "branch) is the usual cause; remove the branch, or give the model as a factory of plain modules."
            ) from err
        return [g[n] for n in self.names]

    def labels_to_indices(self, y: Any, batch_size: int | None = None) -> torch.Tensor:
        """
        Validate labels (class indices or one-hot rows) and return them as a long tensor on the device.

        :param y: Labels, shape ``(B,)`` or one-hot ``(B, nb_classes)``.
        :param batch_size: Expected number of labels, if known.
        """

        arr = to_numpy(y)
        if arr.dtype.kind not in "iuf":
            raise ValueError(
                f"Labels must be numbers (class indices or one-hot rows), got an array of dtype {arr.dtype}: "
                "convert class names to indices first."
            )
        if arr.ndim == 2 and arr.shape[1] == self.nb_classes:
            # probabilities would name a class by their argmax, but the client's loss took hard labels: refused
            valid = ((arr == 0) | (arr == 1)).all(axis=1) & ((arr == 1).sum(axis=1) == 1)
            if not valid.all():
                bad = int(np.flatnonzero(~valid)[0])
                raise ValueError(
                    f"One-hot label row {bad} is not one-hot ({arr[bad].tolist()}): every row must hold a single 1 "
                    "and 0 elsewhere. Soft labels (probabilities, label smoothing) are not modelled: give the class "
                    "indices the client trained with (e.g. y.argmax(axis=1))."
                )
            arr = arr.argmax(axis=1)
        if arr.ndim != 1:
            raise ValueError(
                f"Labels must be class indices of shape (B,) or one-hot of shape (B, {self.nb_classes}), "
                f"got shape {arr.shape}."
            )
        if not np.all(np.isfinite(arr.astype(float))) or np.any(arr != np.round(arr)):
            raise ValueError("Labels must be whole class indices.")
        if arr.size and (arr.min() < 0 or arr.max() >= self.nb_classes):
            raise ValueError(f"Labels must lie in [0, {self.nb_classes - 1}], got values {sorted(set(arr.tolist()))}.")
        if batch_size is not None and arr.shape[0] != batch_size:
            raise ValueError(
                f"Got {arr.shape[0]} labels for a client batch of {batch_size}: pass one label per private sample "
                "(or set batch_size to the number of labels)."
            )
        return torch.as_tensor(arr.astype(np.int64), device=self.device)

    def as_gradient_list(self, grads: GradientInput) -> list[torch.Tensor]:
        """
        Validate an observed gradient and return it as float32 tensors on the device, in parameter order.

        :param grads: Arrays or tensors in ``model.parameters()`` order, or a mapping parameter name → array.
        :raises ValueError: On a wrong count, name, shape or dtype, non-finite values or a gradient that is zero
                            everywhere (see :func:`~art_gifd.validation.check_gradient`).
        """
        arrays = check_gradient(grads, self.names, self.shapes)
        # a native-order, writable float32 copy: read-only (memory-mapped) and big-endian arrays come in as well
        return [torch.from_numpy(np.array(a, dtype=np.float32)).to(self.device) for a in arrays]


def dropout_layers(module: torch.nn.Module) -> list[str]:
    """Names of the dropout layers of ``module`` (random in train mode)."""
    return [name for name, m in module.named_modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]


def _forked_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The global torch generators (the CPU's, and ``device``'s if it is a GPU), restored as they were on exit."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextlib.contextmanager
def _seeded_dropout(target: TargetModel, seed: int | None) -> Iterator[None]:
    """In train mode, draw the dropout masks from ``seed`` (the global torch generator, restored after)."""
    if seed is None or not target.train_mode or not dropout_layers(target.module):
        yield
        return
    with _forked_rng(target.device):
        torch.manual_seed(seed)
        yield


def check_client_model(estimator: PyTorchClassifier) -> None:
    """
    Check that an estimator is a client art-gifd models: a classifier trained with softmax cross-entropy reduced to
    one number per batch, with float32 weights.

    :param estimator: The FL model as an ART ``PyTorchClassifier``.
    :raises ValueError: For another loss, ``reduction="none"``, parameters or buffers of another dtype, frozen
                        parameters, or channels-last input.
    """
    _check_loss(estimator._loss)
    _check_float32(estimator.model)
    frozen = [n for n, p in estimator.model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"the model has frozen parameters (requires_grad=False, e.g. {frozen[:3]}): art-gifd simulates clients "
            "that train and share every parameter, and a client that freezes layers shares no gradient for them. "
            "Unfreeze them (p.requires_grad_(True)) to audit the model as if every layer were trained; the attacker "
            "then sees more than such a client shares."
        )
    if not estimator.channels_first:
        raise ValueError(
            "the estimator has channels_first=False: art-gifd works on NCHW images; give the model channels-first "
            "input (permute inside the model if it needs NHWC) and wrap it with channels_first=True."
        )


def _check_loss(loss: Any) -> None:
    """Check that a client's loss is softmax cross-entropy reduced to one number (mean or sum)."""
    if not isinstance(loss, torch.nn.CrossEntropyLoss):
        raise ValueError(
            f"the estimator's loss is {type(loss).__name__}: art-gifd models classification clients trained with "
            "cross-entropy; wrap the model with loss=torch.nn.CrossEntropyLoss() (a model that ends in log_softmax "
            "for NLLLoss: drop the log_softmax)."
        )
    if loss.reduction not in ("mean", "sum"):
        raise ValueError(
            f"the estimator's loss has reduction={loss.reduction!r}: a client trains on one number per batch, use "
            "reduction='mean' (the default) or 'sum'."
        )


def _check_float32(module: torch.nn.Module) -> None:
    """
    Check that a model's parameters and floating-point buffers are float32.

    :param module: The FL model.
    :raises ValueError: Naming the first other dtype and the tensor that has it.
    """
    tensors = [("parameters", n, t) for n, t in module.named_parameters()]
    tensors += [("buffers", n, t) for n, t in module.named_buffers() if t.is_floating_point()]
    for kind, name, tensor in tensors:
        if tensor.dtype != torch.float32:
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise ValueError(
                f"the model's {kind} are {dtype} (e.g. '{name}'): art-gifd computes in float32, call model.float() "
                "before wrapping it."
            )


def checked_defence_output(defense: Defense, output: Any, target: TargetModel) -> list[torch.Tensor]:
    """
    What a defence returned, checked against the model's parameters and made float32 tensors on the target's device.

    A defence returns one floating-point tensor per parameter, in ``model.parameters()`` order, with that parameter's
    shape; numpy arrays are accepted too (a custom defence written with numpy) and converted, as are other float
    dtypes.

    :param defense: The defence, named in the messages.
    :param output: What its ``apply`` returned.
    :param target: The client's model copy.
    :return: The defended gradients, float32 on the target's device.
    :raises ValueError: On a wrong type, count or shape, or NaN or infinite values.
    """
    label, count = f"defence {defense!r}", len(target.names)
    if not is_gradient_list(output):
        raise ValueError(
            f"{label} returned {type(output).__name__}, not a list of {count} gradient tensors: its apply() must "
            "return one tensor per parameter, in model.parameters() order."
        )
    items = list(output)
    if len(items) != count:
        raise ValueError(
            f"{label} returned {len(items)} arrays for {count} parameters: it must return one per parameter, in "
            "model.parameters() order."
        )
    out = []
    for name, shape, item in zip(target.names, target.shapes, items, strict=True):
        tensor = torch.tensor(item) if isinstance(item, np.ndarray) and item.dtype.kind == "f" else item
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            what = f"dtype {item.dtype}" if isinstance(item, torch.Tensor | np.ndarray) else type(item).__name__
            raise ValueError(
                f"{label} returned {what} for '{name}': it must return a floating-point tensor per parameter."
            )
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{label} returned shape {tuple(tensor.shape)} for '{name}', whose shape is {shape}: it must keep each "
                "parameter's shape."
            )
        if not bool(tensor.isfinite().all()):
            raise ValueError(
                f"{label} returned NaN or infinite values for '{name}': check its parameters (e.g. a noise scale "
                "too large for float32)."
            )
        out.append(tensor.to(device=target.device, dtype=torch.float32))
    return out


def clip_range(estimator: PyTorchClassifier) -> tuple[float, float]:
    """The estimator's input range ``(min, max)`` from its ``clip_values`` (over channels, if given per channel)."""
    clip = np.asarray(estimator.clip_values, dtype=np.float64).reshape(2, -1)
    return float(clip[0].min()), float(clip[1].max())


def client_gradients(
    estimator: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    defense: DefenseLike | None = None,
    train_mode: bool = False,
    seed: int | None = None,
) -> list[np.ndarray]:
    """
    The update one FedSGD client shares: the gradient of the estimator's loss on its private batch.

    Uses the estimator's own loss and preprocessing, on a copy of the model (the estimator is left unchanged).

    :param estimator: ART ``PyTorchClassifier`` wrapping the FL model.
    :param x: Private batch, shape ``(B, *input_shape)``, in the estimator's input range.
    :param y: Labels as class indices ``(B,)`` or one-hot ``(B, nb_classes)``.
    :param defense: Client-side defence applied before the update is shared: an :class:`art_gifd.defenses.Defense`
                    (e.g. ``Compose([Clip(1.0), GaussianNoise(1e-3)])``) or a plain callable mapping the per-parameter
                    gradient tensors to the shared ones (``None``: no defence).
    :param train_mode: Compute the gradient with the model in train mode (default: eval mode).
    :param seed: Seed of the defence's randomness and, in train mode, of the dropout masks, in ``[0, 2**63 - 1]``
                 (``None``: a fresh, non-deterministic seed).
    :return: One float32 array per parameter, in ``model.parameters()`` order.
    :raises ValueError: On an invalid estimator, batch, labels or seed, or a defence output that does not fit the
                        model (see :func:`checked_defence_output`).
    """

    check_integer("seed", seed, 0, MAX_SEED, optional=True)
    target = TargetModel(estimator, train_mode=train_mode)
    x_arr = _private_batch(estimator, target, x)
    labels = target.labels_to_indices(y, batch_size=x_arr.shape[0])
    with _seeded_dropout(target, seed):
        grads = defended_gradients(target, torch.as_tensor(x_arr, device=target.device), labels, defense, seed)
    return [g.detach().cpu().numpy().astype(np.float32) for g in grads]


def _private_batch(estimator: PyTorchClassifier, target: TargetModel, x: Any) -> np.ndarray:
    """
    The client's private batch as float32, checked against the model's input shape and the estimator's input range.

    :raises ValueError: On a wrong shape, an empty batch, non-finite values, or images on another scale than
                        ``clip_values``.
    """
    x_arr = to_numpy(x).astype(np.float32, copy=False)
    if x_arr.ndim != len(target.input_shape) + 1 or tuple(x_arr.shape[1:]) != target.input_shape:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, target.input_shape))}), got {x_arr.shape}.")
    if x_arr.shape[0] == 0:
        raise ValueError("x is empty: pass at least one private sample.")
    check_input_scale("x", x_arr, estimator)
    return x_arr


def check_input_scale(name: str, x: np.ndarray, estimator: PyTorchClassifier) -> None:
    """
    Refuse images that are not finite reals or are on another scale than the estimator's ``clip_values`` (0–255 or
    [-1, 1] for a [0, 1] model: beyond them by more than half their width); a smaller overshoot is logged.

    :param name: The images' name in the messages.
    """
    real_array(name, x)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values: pass finite images.")
    if estimator.clip_values is None:
        return
    lo, hi = clip_range(estimator)
    low, high = float(x.min()), float(x.max())
    if max(lo - low, high - hi) > 0.5 * (hi - lo):
        raise ValueError(
            f"{name} spans [{low:g}, {high:g}] but the estimator's clip_values are [{lo:g}, {hi:g}]: scale the images "
            "to the model's input range (e.g. x / 255 for 8-bit images)."
        )
    if high - low < 0.02 * (hi - lo) and (low, high) != (lo, lo):
        logger.warning(
            "%s spans [%g, %g], under 1/50 of the estimator's clip_values [%g, %g]: images on a smaller scale "
            "(0-1 for a 0-255 model)?",
            name,
            low,
            high,
            lo,
            hi,
        )
    if max(lo - low, high - hi) > 1e-6:
        logger.warning(
            "%s spans [%g, %g], beyond the estimator's clip_values [%g, %g]; attacks reconstruct within them.",
            name,
            low,
            high,
            lo,
            hi,
        )


def _client_gradient(target: TargetModel, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """
    The client's gradient of one batch before any defence, checked: a NaN or infinite one is refused (it says that
    the model, its loss or its preprocessing is broken for this batch) and one that is zero everywhere is logged.
    """
    grads = target.gradients(x, labels)
    if not all(bool(g.isfinite().all()) for g in grads):
        raise ValueError(
            "The client's gradient holds NaN or infinite values before any defence: the model's weights (a training "
            "run that diverged: lower its learning rate), its loss (class weights that are 0 for every label of the "
            "batch) or its preprocessing (a std of 0) make it so."
        )
    if not any(bool(g.any()) for g in grads):
        logger.warning(
            "The client's gradient is zero everywhere: every label equals the loss's ignore_index, or the logits are "
            "so large that the softmax saturates (the model is certain of every image, as at inputs far outside its "
            "training range); it carries nothing to invert."
        )
    return grads


def defended_gradients(
    target: TargetModel,
    x: torch.Tensor,
    labels: torch.Tensor,
    defense: DefenseLike | None,
    seed: int | torch.Generator | None = None,
) -> list[torch.Tensor]:
    """
    The update a client shares for the batch ``x``: its gradient on the target's model copy, then the defence.

    :param target: The client's model copy (its parameters are the current weights).
    :param x: Raw private batch on the target's device.
    :param labels: Class indices ``(B,)`` on the target's device.
    :param defense: Client-side defence, or ``None``.
    :param seed: Seed in ``[0, 2**63 - 1]`` or ``torch.Generator`` (on the target's device) of the defence's
                 randomness.
    :return: Defended per-parameter gradients, float32 in parameter order.
    :raises ValueError: On an invalid seed, or a defence output that does not fit the model.
    """

    if not isinstance(seed, torch.Generator):
        check_integer("seed", seed, 0, MAX_SEED, optional=True)
    grads = _client_gradient(target, x, labels)
    if defense is None:
        return grads
    generator = seed if isinstance(seed, torch.Generator) else make_generator(seed, target.device)
    defense = as_defense(defense)
    return checked_defence_output(defense, defense.apply(grads, DefenseContext(target, x, labels, generator)), target)


#: Local optimisers of :class:`LocalTraining`.
LOCAL_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class LocalTraining:
    """
    A FedAvg client's local training, as the server configured it: what :func:`client_update` runs and what an
    attack given ``training=`` replays on its candidate images.

    The client trains on its ``N`` private samples for ``epochs`` passes (or exactly ``steps`` mini-batch steps, which
    may span several passes; either way at most :data:`~art_gifd.validation.MAX_LOCAL_STEPS` steps) in mini-batches
    of ``batch_size`` (``None``: the whole data, one step per epoch), with PyTorch's SGD (optional momentum, no
    dampening, and L2 weight decay) or Adam, and shares ``w_before − w_after``.
    Each pass visits the data in order (``shuffle=False``) or in a random permutation: drawn from ``shuffle_seed``
    when the attacker knows it (the order is then *known*), else from the client's own randomness (*unknown*: the
    attack then replays every step on the whole data, the expectation of a random mini-batch's gradient).
    FedSGD is the special case ``LocalTraining(learning_rate, steps=1)``: its update is ``learning_rate ×`` the
    gradient.
    """

    learning_rate: float
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    shuffle: bool = True
    shuffle_seed: int | None = None

    def __post_init__(self) -> None:
        """
        :raises ValueError: Naming the first field that is out of range.
        """

        object.__setattr__(
            self, "learning_rate", check_number("learning_rate", self.learning_rate, 0.0, MAX_RATE, closed="right")
        )
        if self.epochs is not None and self.steps is not None:
            raise ValueError("LocalTraining takes epochs or steps, not both: set one of them.")
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", 1)
        # plain ints (numpy scalars pass), so describe() is JSON
        for name, high in (("epochs", MAX_LOCAL_STEPS), ("steps", MAX_LOCAL_STEPS), ("batch_size", None)):
            object.__setattr__(self, name, check_integer(name, getattr(self, name), 1, high, optional=True))
        if not isinstance(self.optimizer, str) or self.optimizer not in LOCAL_OPTIMIZERS:  # the key first: configs
            raise ValueError(f"optimizer must be one of {LOCAL_OPTIMIZERS}, got {self.optimizer!r}.")
        object.__setattr__(self, "momentum", check_number("momentum", self.momentum, 0.0, 1.0))
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("momentum applies to optimizer='sgd' only (Adam has betas).")
        object.__setattr__(
            self, "weight_decay", check_number("weight_decay", self.weight_decay, 0.0, MAX_RATE, closed="both")
        )
        if isinstance(self.betas, np.ndarray):  # a numpy pair reads as the pair of its numbers
            object.__setattr__(self, "betas", self.betas.tolist())
        if not isinstance(self.betas, Sequence) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}.")
        object.__setattr__(self, "betas", tuple(check_number("betas", b, 0.0, 1.0) for b in self.betas))
        object.__setattr__(self, "eps", check_number("eps", self.eps, 0.0, closed="neither"))
        object.__setattr__(self, "shuffle", check_flag("shuffle", self.shuffle))
        object.__setattr__(self, "shuffle_seed", check_integer("shuffle_seed", self.shuffle_seed, 0, optional=True))
        if not self.shuffle and self.shuffle_seed is not None:
            raise ValueError(
                "shuffle_seed orders a shuffled pass, but shuffle=False visits the samples in order: leave "
                "shuffle_seed out, or set shuffle=True."
            )

    @property
    def order_known(self) -> bool:
        """
        Whether an attacker can reproduce the mini-batch order: full-batch steps (no order to know), no shuffling, or a
        known shuffle seed.
        """
        return self.batch_size is None or not self.shuffle or self.shuffle_seed is not None

    def _batch(self, n: int) -> int:
        return n if self.batch_size is None else min(self.batch_size, n)

    def check_data(self, n: int) -> None:
        """
        Check that this training can run on ``n`` private samples.

        :raises ValueError: If a known-order training's batch size does not divide ``n``.
        """
        if self.batch_size is not None and self.order_known and n % self._batch(n):  # a batch above n: one full batch
            raise ValueError(
                f"batch_size={self.batch_size} does not divide the client's {n} samples: with a known mini-batch "
                "order the attack replays every mini-batch, so use a batch size that divides the data (or "
                "shuffle_seed=None for an unknown order)."
            )

    def num_steps(self, n: int) -> int:
        """
        Local optimisation steps on ``n`` samples.

        :raises ValueError: If ``epochs`` passes over ``n`` samples take more than
                            :data:`~art_gifd.validation.MAX_LOCAL_STEPS` steps: checked from the count, before any
                            per-step plan (of the client's mini-batches or of a replay) is built.
        """
        if self.steps is not None:
            return self.steps
        size = self._batch(n)
        steps = self.epochs * -(-n // size)
        if steps > MAX_LOCAL_STEPS:
            raise ValueError(
                f"epochs={self.epochs} over {n} samples in mini-batches of {size} is {steps} local steps, more than "
                f"the {MAX_LOCAL_STEPS} a LocalTraining takes: lower epochs, or raise batch_size."
            )
        return steps

    def batches(self, n: int, seed: int | None = None) -> list[np.ndarray]:
        """
        The client's mini-batches (sample indices, one array per step) on ``n`` samples.

        :param n: Number of private samples.
        :param seed: The client's own shuffling seed, used when the order is unknown (``None``: fresh randomness).
        """
        rng = np.random.default_rng(self.shuffle_seed if self.shuffle_seed is not None else seed)
        size, steps, out = self._batch(n), self.num_steps(n), []
        ordered = np.arange(n)  # one array for every pass in order: many full-batch steps need no copy each
        while len(out) < steps:
            order = rng.permutation(n) if self.shuffle and size < n else ordered  # a full batch has no order
            out.extend(order[i : i + size] for i in range(0, n, size))
        return out[:steps]

    def simulation(
        self, n: int, max_steps: int | None = None, reduction: str = "mean"
    ) -> list[tuple[np.ndarray, float]]:
        """
        The steps an attacker replays: ``(sample indices, learning-rate factor)`` per simulated step.

        A known order replays the client's mini-batches exactly; an unknown one replays each step on all ``n``
        samples. With ``max_steps`` below the number of local steps, consecutive steps are merged into one step on
        their mini-batches together (each sample once where they hold every sample equally often, e.g. whole epochs)
        with the learning rate times the number merged: a first-order approximation that replays fewer samples and
        keeps fewer copies of the weights, so it needs less memory and time.

        Those factors are for a loss averaged over the batch. With ``reduction="sum"`` a replayed step sums over the
        samples it replays, so its factor is instead the samples the client's steps summed over divided by those
        replayed (an unknown-order step on all ``n`` samples: the client's mini-batch size over ``n``).
        """
        steps = self.num_steps(n)
        batches = self.batches(n)
        sizes = [len(batch) for batch in batches]  # an unknown order hides the order, not the sizes
        plain = batches if self.order_known else [np.arange(n)] * steps
        merging = max_steps is not None and max_steps < steps
        groups = np.array_split(np.arange(steps), max_steps) if merging else [[t] for t in range(steps)]
        out = []
        for group in groups:
            # a step on its own keeps its batch's array (shared by many full-batch steps), not a copy of it
            index = plain[group[0]] if len(group) == 1 else np.concatenate([plain[i] for i in group])
            if len(group) > 1:
                values, counts = np.unique(index, return_counts=True)
                # every sample as often as the others (whole epochs, or full batches): each once, the same batch mean
                index = values if np.all(counts == counts[0]) else index
            factor = float(len(group)) if reduction != "sum" else sum(sizes[i] for i in group) / len(index)
            out.append((index, factor))
        return out

    def step(
        self,
        params: dict[str, torch.Tensor],
        grads: dict[str, torch.Tensor],
        state: dict[str, dict[str, torch.Tensor]],
        t: int,
        scale: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """
        One optimiser step as PyTorch's ``SGD`` / ``Adam`` take it, written functionally (differentiable, vmappable).

        :param params: Current parameters.
        :param grads: Their gradients.
        :param state: Optimiser state (momentum buffer, Adam moments), updated in place; empty before the first step.
        :param t: Step number, from 1.
        :param scale: Factor on the learning rate (merged steps of :meth:`simulation`).
        :return: The parameters after the step.
        """
        lr = self.learning_rate * scale
        out = {}
        for name, p in params.items():
            d = grads[name] + self.weight_decay * p if self.weight_decay else grads[name]
            slot = state.setdefault(name, {})
            if self.optimizer == "sgd":
                if self.momentum:
                    d = d if t == 1 else self.momentum * slot["buf"] + d
                    slot["buf"] = d
                out[name] = p - lr * d
                continue
            beta1, beta2 = self.betas
            slot["m"] = (1 - beta1) * d if t == 1 else beta1 * slot["m"] + (1 - beta1) * d
            slot["v"] = (1 - beta2) * d * d if t == 1 else beta2 * slot["v"] + (1 - beta2) * d * d
            # sqrt(v + 1e-30): the same number as sqrt(v) in float32, but a finite derivative where v is 0
            denom = (slot["v"] + 1e-30).sqrt() / math.sqrt(1 - beta2**t) + self.eps
            out[name] = p - lr / (1 - beta1**t) * slot["m"] / denom
        return out

    def describe(self, n: int | None = None) -> dict[str, Any]:
        """
        The training's fields and whether its order is known, JSON-serialisable (for results records).

        :param n: The client's number of samples, where known: mini-batches of ``n`` or more are full batches, whose
                  order is known.
        """
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        full_batch = n is not None and self.batch_size is not None and self.batch_size >= n
        return {**fields, "betas": list(self.betas), "order_known": self.order_known or full_batch}


def split_defense(defense: DefenseLike | None) -> tuple[Defense | None, Defense | None]:
    """
    A FedAvg client's defence as ``(per_step, on_update)``: DP-SGD (a defence that recomputes the update from the
    private batch) runs on every local step, the others (clipping, noise, pruning, …) on the final update.
    """

    if defense is None:
        return None, None
    defense = as_defense(defense)
    if not defense.recomputes:
        return None, defense
    if not isinstance(defense, Compose):
        return defense, None
    parts = _flattened(defense)  # a nested Compose's later parts act on the update too, not on every step
    rest = parts[1:]
    return parts[0], (Compose(rest) if len(rest) > 1 else rest[0] if rest else None)


def _flattened(defense: Defense) -> list[Defense]:
    """The defences a (nested) :class:`Compose` applies, in order."""
    if not isinstance(defense, Compose):
        return [defense]
    return [part for inner in defense.defenses for part in _flattened(inner)]


def check_accounted_steps(defense: DefenseLike | None, training: LocalTraining, n: int) -> None:
    """
    Check that a per-step defence with a privacy guarantee (DP-SGD) accounts for at least the local steps a client of
    ``n`` samples takes, so that its stated epsilon covers the whole training.

    :raises ValueError: Naming both step counts and the way out.
    """
    per_step, _ = split_defense(defense)
    covered = getattr(per_step, "steps", None)
    steps = training.num_steps(n)
    if per_step is not None and per_step.privacy() is not None and covered is not None and steps > covered:
        raise ValueError(
            f"{type(per_step).__name__} accounts for steps={covered}, but the client's local training takes {steps} "
            f"step(s) on its {n} samples: the stated epsilon would cover part of the training. Set the defence's "
            f"steps to at least {steps} (local steps × rounds)."
        )


def check_accounted_steps_of(
    check: Checker,
    defenses: Iterable[tuple[KeyPath, DefenseLike | None]],
    training: LocalTraining,
    batch_sizes: Sequence[int],
) -> None:
    """
    :func:`check_accounted_steps` on a configuration's defences (each with its key path) for every client batch size,
    before any work: a problem is recorded on ``check`` under the defence's path, once per defence.
    """
    for path, defense in defenses:
        for size in sorted(batch_sizes, reverse=True):  # the largest client takes the most steps
            try:
                check_accounted_steps(defense, training, size)
            except ValueError as err:
                check.add(path, str(err))
                break


#: An update this many times larger than the weights it started from (norms) comes from a diverged local training.
DIVERGED_UPDATE = 100.0


def client_update(
    estimator: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    training: LocalTraining,
    defense: DefenseLike | None = None,
    train_mode: bool = False,
    seed: int | None = None,
) -> list[np.ndarray]:
    """
    The update one FedAvg client shares: ``w_before − w_after`` of its local training on its private data.

    Runs PyTorch's own optimiser on a copy of the model (the estimator is left unchanged), with the estimator's loss
    and preprocessing. A DP-SGD defence acts on every local step (its ``steps`` and ``sample_rate`` state what its
    guarantee covers: local steps × rounds); the other defences act on the final update.

    :param estimator: ART ``PyTorchClassifier`` wrapping the FL model at the weights the server sent.
    :param x: The client's private data, ``(N, *input_shape)``, in the estimator's input range.
    :param y: Labels as class indices ``(N,)`` or one-hot ``(N, nb_classes)``.
    :param training: The local training the server configured.
    :param defense: Client-side defence (see :func:`client_gradients`), or ``None``.
    :param train_mode: Train with the model in train mode (default: eval mode, as :func:`client_gradients`).
    :param seed: Seed of the client's randomness, in ``[0, 2**63 - 1]``: the defence's noise, the dropout masks in
                 train mode and, if ``training.shuffle_seed`` is ``None``, the mini-batch order (``None``: fresh
                 randomness).
    :return: One float32 array per parameter, in ``model.parameters()`` order.
    :raises ValueError: On an invalid estimator, training, batch, labels or seed, a DP-SGD defence that accounts for
                        fewer steps than the training takes, or a defence output that does not fit the model (see
                        :func:`checked_defence_output`).
    """

    if not isinstance(training, LocalTraining):
        raise ValueError(f"training must be an art_gifd.LocalTraining, got {type(training).__name__}.")
    check_integer("seed", seed, 0, MAX_SEED, optional=True)
    target = TargetModel(estimator, train_mode=train_mode)
    x_arr = _private_batch(estimator, target, x)
    labels = target.labels_to_indices(y, batch_size=x_arr.shape[0])
    training.check_data(x_arr.shape[0])
    check_accounted_steps(defense, training, x_arr.shape[0])
    x_t = torch.as_tensor(x_arr, device=target.device)
    per_step, on_update = split_defense(defense)
    generator = make_generator(seed, target.device)
    params = [target.params[n] for n in target.names]  # the copy's own weights: the optimiser moves them in place
    before = [p.clone() for p in params]
    if training.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=training.learning_rate, momentum=training.momentum, weight_decay=training.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(
            params,
            lr=training.learning_rate,
            betas=training.betas,
            eps=training.eps,
            weight_decay=training.weight_decay,
        )
    with _seeded_dropout(target, seed):
        for index in training.batches(x_arr.shape[0], seed):
            index_t = torch.as_tensor(index, device=target.device)
            xb, yb = x_t.index_select(0, index_t), labels.index_select(0, index_t)
            grads = _client_gradient(target, xb, yb)
            if per_step is not None:
                grads = checked_defence_output(
                    per_step, per_step.apply(grads, DefenseContext(target, xb, yb, generator)), target
                )
            for p, g in zip(params, grads, strict=True):
                p.grad = g.detach().clone()
            optimizer.step()
    update = [b - p.detach() for b, p in zip(before, params, strict=True)]
    if not any(bool(u.any()) for u in update):
        logger.warning(
            "The client's update is zero everywhere: at learning rate %g its steps are lost to float32 rounding, or "
            "its gradients are zero; it carries nothing to invert.",
            training.learning_rate,
        )
    moved = float(torch.sqrt(sum(u.double().pow(2).sum() for u in update)))
    start = float(torch.sqrt(sum(b.double().pow(2).sum() for b in before)))
    if moved > DIVERGED_UPDATE * max(start, 1.0):
        logger.warning(
            "The client's local training diverged: its update's norm is %.3g against %.3g for the weights it started "
            "from. Lower the learning rate (now %g): a real client would not share this.",
            moved,
            start,
            training.learning_rate,
        )
    if on_update is not None:  # it sees the model as the server sent it: the copy goes back to those weights
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                p.copy_(b)
        update = checked_defence_output(
            on_update, on_update.apply(update, DefenseContext(target, x_t, labels, generator)), target
        )
    return [u.detach().cpu().numpy().astype(np.float32) for u in update]


def simulate_update(
    loss: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor],
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    training: LocalTraining,
    plan: list[tuple[np.ndarray, float]],
) -> dict[str, torch.Tensor]:
    """
    The update ``params − params_after`` of ``training`` on the batch ``x``, differentiable in ``x`` (and ``y``).

    Written with ``torch.func`` so that it can be vmapped over candidate batches.

    :param loss: ``loss(params, x, y)`` of the (preprocessed) batch.
    :param params: The weights the server sent.
    :param x: One candidate batch, ``(N, …)``, preprocessed.
    :param y: Its labels: class indices ``(N,)`` or label distributions ``(N, K)``.
    :param training: The client's local training.
    :param plan: The steps to replay, from :meth:`LocalTraining.simulation`.
    :return: The simulated update per parameter name.
    """

    current, state = dict(params), {}
    for t, (index, scale) in enumerate(plan, start=1):
        index_t = torch.as_tensor(index, device=x.device)
        grads = torch.func.grad(loss)(current, x.index_select(0, index_t), y.index_select(0, index_t))
        current = training.step(current, grads, state, t, scale)
    return {name: params[name] - current[name] for name in params}


def available_memory(device: torch.device) -> int | None:
    """Memory ``device`` can give a search in bytes: free GPU memory, the CPU's available memory (``None``: unknown)."""

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # Linux: MemAvailable counts the page cache the kernel gives back; free pages alone would be far fewer
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def simulation_memory(target: TargetModel, plan: list[tuple[np.ndarray, float]], restarts: int) -> int:
    """
    Estimated bytes of one differentiable replay of ``plan`` for ``restarts`` candidate batches: every step keeps its
    activations and a few copies of the weights (gradient, optimiser state, new weights) until the matching loss is
    differentiated. Counted as 1.5 × the activations a forward pass saves per sample plus 6 × the weights, per step and
    restart: 1.2–2.1 × what ``benchmarks/fedavg.py --memory`` measured on the CPU for 2–10 local steps of a ReLU
    ConvNet (0.8 × for one step, where fixed costs dominate), so that a long replay it lets through fits.
    """

    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    probe = torch.zeros(1, *target.input_shape, device=target.device, requires_grad=True)
    label = torch.zeros(1, dtype=torch.long, device=target.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        target.loss(target.params, target.preprocess(probe), label)
    weights = sum(p.numel() * p.element_size() for p in target.params.values())
    per_restart = sum(1.5 * saved * len(index) + 6 * weights for index, _ in plan)
    return int(restarts * per_restart)


#: Federated algorithms an audit or benchmark configures: one FedSGD gradient, or a FedAvg client's weight update.
ALGORITHMS = ("fedsgd", "fedavg")
#: Keys of a ``[federated]`` configuration table (audit and bench) that describe FedAvg's local training, and the
#: :class:`LocalTraining` field each sets.
TRAINING_KEYS = {
    "learning_rate": "learning_rate",
    "epochs": "epochs",
    "steps": "steps",
    "local_batch_size": "batch_size",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "shuffle": "shuffle",
    "shuffle_seed": "shuffle_seed",
}


#: A problem of a configured local training: the ``[federated]`` key at fault (``None``: the combination) and why.
TrainingProblem = tuple[str | None, str]


def local_training_from_config(
    values: Mapping[str, Any], algorithm: str, client_sizes: Sequence[int]
) -> tuple[LocalTraining | None, list[TrainingProblem]]:
    """
    The clients' local training of a ``[federated]`` configuration table, for the audit and the benchmark runner.

    :param values: The table; keys other than those of :data:`TRAINING_KEYS` are ignored.
    :param algorithm: The table's algorithm: ``"fedsgd"`` takes no training keys, ``"fedavg"`` needs
                      ``learning_rate``.
    :param client_sizes: Private samples per client (the configuration's batch sizes), checked against a known order
                         and the most local steps (:data:`~art_gifd.validation.MAX_LOCAL_STEPS`).
    :return: The training (``None`` for FedSGD or after a problem) and every problem found.
    """
    given = {key: values[key] for key in TRAINING_KEYS if key in values}
    if algorithm != "fedavg":
        return None, [(key, "describes FedAvg's local training: set algorithm = 'fedavg' to use it.") for key in given]
    if "learning_rate" not in given:
        return None, [("learning_rate", "missing (required with algorithm = 'fedavg').")]
    try:
        training = LocalTraining(**{TRAINING_KEYS[key]: value for key, value in given.items()})
    except ValueError as err:
        message = str(err)
        key = next((k for k, f in TRAINING_KEYS.items() if message.startswith(f + " ")), None)
        return None, [(key, message[len(TRAINING_KEYS[key]) + 1 :] if key else message)]
    problems: list[TrainingProblem] = []
    for size in client_sizes:
        for key, check_size in (("epochs", training.num_steps), ("local_batch_size", training.check_data)):
            try:
                check_size(size)
            except ValueError as err:
                problems.append((key, f"for a client of {size} samples: {err}"))
                break
    return (None if problems else training), problems


def describe_protocol(training: LocalTraining | None) -> dict[str, Any]:
    """The ``"federated"`` field of a results record: the algorithm and, for FedAvg, the local training."""
    if training is None:
        return {"algorithm": "fedsgd"}
    return {"algorithm": "fedavg", **training.describe()}


def describe_training(training: LocalTraining) -> str:
    """One line for reports, e.g. ``"SGD, 2 epochs in mini-batches of 4, learning rate 0.05, known order"``."""
    length = f"{training.steps} steps" if training.steps is not None else f"{training.epochs} epoch(s)"
    batches = f"mini-batches of {training.batch_size}" if training.batch_size is not None else "full batches"
    extras = [f"momentum {training.momentum:g}"] if training.momentum else []
    extras += [f"weight decay {training.weight_decay:g}"] if training.weight_decay else []
    order = "known order" if training.order_known else "unknown order"
    optimizer = "SGD" if training.optimizer == "sgd" else "Adam"
    return ", ".join(
        [f"{optimizer}, {length} in {batches}", f"learning rate {training.learning_rate:g}", *extras, order]
    )


def local_training(fields: Mapping[str, Any] | None) -> LocalTraining | None:
    """The :class:`LocalTraining` of recorded fields (:meth:`LocalTraining.describe`), or ``None`` for FedSGD."""
    if fields is None:
        return None
    known = {k: v for k, v in fields.items() if k in LocalTraining.__dataclass_fields__}
    return LocalTraining(**{**known, "betas": tuple(known.get("betas", (0.9, 0.999)))})


def read_federated_table(
    check: Checker, value: Any, path: KeyPath = ("federated",)
) -> tuple[dict[str, Any], LocalTraining | None]:
    """
    The ``[federated]`` table of an audit or a benchmark profile: ``algorithm`` (:data:`ALGORITHMS`, default
    ``"fedsgd"``), the client ``batch_sizes`` (default ``[1]``; FedAvg: the private samples per client) and FedAvg's
    local-training keys (:data:`TRAINING_KEYS`). Problems are recorded on ``check``.

    :return: The settings (``algorithm``, ``batch_sizes`` and, for FedAvg, ``training``: the local training's fields)
             and the local training (``None``: FedSGD, or after a problem).
    """
    from art_gifd.configfile import int_list, string

    table = check.table(value, path, ("algorithm", "batch_sizes", *TRAINING_KEYS))
    algorithm = check.get(table, path, "algorithm", string(ALGORITHMS), "fedsgd")
    sizes = int_list(1, high=MAX_BATCH_SIZE)
    settings = {"algorithm": algorithm, "batch_sizes": check.get(table, path, "batch_sizes", sizes, [1])}
    training, problems = local_training_from_config(table, algorithm, settings["batch_sizes"] or [])
    for key, message in problems:
        check.add((*path, key) if key else path, message)
    if training is not None:
        settings["training"] = training.describe()
    return settings, training
