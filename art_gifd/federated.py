"""
What a federated-learning client shares, and the attacker's differentiable view of the same model.

:func:`client_gradients` computes the FedSGD update of one client batch exactly as the client would.
:class:`TargetModel` is the shared, validated view of an ART ``PyTorchClassifier`` that both the client side and the
attacks use: a private copy of the module in the right mode, the estimator's loss and differentiable preprocessing,
and the parameter names and shapes that an observed gradient must match.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.defenses.base import DefenseLike

logger = logging.getLogger(__name__)

#: What an observed gradient may be: arrays/tensors in ``model.parameters()`` order, or a name → array mapping.
GradientInput = Sequence[Any] | Mapping[str, Any]


class TargetModel:
    """
    The FL model under attack, seen through an ART ``PyTorchClassifier``.

    The estimator's module is copied (the user's model is never modified or switched between train and eval mode);
    the copy is frozen, moved to ``device`` and set to eval mode unless ``train_mode`` is true (BatchNorm then uses
    batch statistics and does not update its running statistics).
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

        from art_gifd.validation import check_device, nonfinite_entries

        if not isinstance(estimator, PyTorchClassifier):
            raise ValueError(
                f"Expected an ART PyTorchClassifier, got {type(estimator).__name__}: wrap the model with "
                "art_gifd.models.make_classifier(model, input_shape) or ART's PyTorchClassifier."
            )
        self.estimator = estimator
        self.device = check_device(device if device is not None else estimator.device)
        self.train_mode = train_mode
        broken = nonfinite_entries(estimator.model.state_dict())
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

        g = grad(self.loss)(self.params, self.preprocess(x), y)
        return [g[n] for n in self.names]

    def labels_to_indices(self, y: Any, batch_size: int | None = None) -> torch.Tensor:
        """
        Validate labels (class indices or one-hot rows) and return them as a long tensor on the device.

        :param y: Labels, shape ``(B,)`` or one-hot ``(B, nb_classes)``.
        :param batch_size: Expected number of labels, if known.
        """
        import torch

        arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if arr.dtype.kind not in "iuf":
            raise ValueError(
                f"Labels must be numbers (class indices or one-hot rows), got an array of dtype {arr.dtype}: "
                "convert class names to indices first."
            )
        if arr.ndim == 2 and arr.shape[1] == self.nb_classes:
            top = arr.max(axis=1)
            valid = np.isfinite(arr).all(axis=1) & (top > 0) & ((arr == top[:, None]).sum(axis=1) == 1)
            if not valid.all():
                bad = int(np.flatnonzero(~valid)[0])
                raise ValueError(
                    f"One-hot label row {bad} has no single largest positive entry ({arr[bad].tolist()}): every row "
                    "must name exactly one class."
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
        :raises ValueError: On a wrong count, name, shape or dtype, or non-finite values; the message names the first
                            offending parameter.
        """
        import torch

        if isinstance(grads, Mapping):
            missing = [n for n in self.names if n not in grads]
            unknown = [n for n in grads if n not in self.params]
            if missing or unknown:
                raise ValueError(
                    f"Gradient mapping does not match the model's parameters: missing {missing[:5]}, unknown "
                    f"{unknown[:5]}. Keys must be names from model.named_parameters()."
                )
            items = [grads[n] for n in self.names]
        elif isinstance(grads, Sequence | np.ndarray) and not isinstance(grads, str | bytes):
            items = list(grads)
            if len(items) != len(self.names):
                raise ValueError(
                    f"Expected {len(self.names)} gradient arrays (one per parameter, in model.parameters() order), "
                    f"got {len(items)}."
                )
        else:
            raise ValueError(
                f"The observed gradient must be a sequence of arrays in model.parameters() order or a mapping "
                f"name -> array, got {type(grads).__name__}."
            )
        out = []
        for name, shape, item in zip(self.names, self.shapes, items, strict=True):
            arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"Gradient of '{name}' has dtype {arr.dtype}; expected a floating-point array.")
            if tuple(arr.shape) != shape:
                raise ValueError(
                    f"Gradient of '{name}' has shape {tuple(arr.shape)} but the parameter has shape {shape}. Are the "
                    "gradients in model.parameters() order and from this model?"
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Gradient of '{name}' contains NaN or infinite values.")
            out.append(torch.as_tensor(arr, dtype=torch.float32, device=self.device))
        if all(float(g.abs().max()) == 0.0 for g in out):
            raise ValueError("The observed gradient is zero everywhere: there is nothing to invert.")
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
    :param seed: Seed of the defence's randomness (``None``: a fresh, non-deterministic seed).
    :return: One float32 array per parameter, in ``model.parameters()`` order.
    """
    import torch

    target = TargetModel(estimator, train_mode=train_mode)
    x_arr = np.asarray(x, dtype=np.float32)
    if x_arr.ndim != len(target.input_shape) + 1 or tuple(x_arr.shape[1:]) != target.input_shape:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, target.input_shape))}), got {x_arr.shape}.")
    if not np.all(np.isfinite(x_arr)):
        raise ValueError("x contains NaN or infinite values.")
    if estimator.clip_values is not None and x_arr.size:
        lo, hi = clip_range(estimator)
        below, above = lo - float(x_arr.min()), float(x_arr.max()) - hi
        if max(below, above) > 0.5 * (hi - lo):  # a different scale (0-255, [-1, 1]), not a small overshoot
            raise ValueError(
                f"x spans [{x_arr.min():g}, {x_arr.max():g}] but the estimator's clip_values are [{lo:g}, {hi:g}]: "
                "scale the images to the model's input range (e.g. x / 255 for 8-bit images)."
            )
        if max(below, above) > 1e-6:
            logger.warning(
                "x spans [%g, %g], beyond the estimator's clip_values [%g, %g]; attacks reconstruct within them.",
                x_arr.min(),
                x_arr.max(),
                lo,
                hi,
            )
    labels = target.labels_to_indices(y, batch_size=x_arr.shape[0])
    grads = defended_gradients(target, torch.as_tensor(x_arr, device=target.device), labels, defense, seed)
    return [g.detach().cpu().numpy().astype(np.float32) for g in grads]


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
    :param seed: Seed or ``torch.Generator`` (on the target's device) of the defence's randomness.
    :return: Defended per-parameter gradients, in parameter order.
    """
    import torch

    from art_gifd.defenses.base import DefenseContext, as_defense, make_generator

    grads = target.gradients(x, labels)
    if defense is None:
        return grads
    generator = seed if isinstance(seed, torch.Generator) else make_generator(seed, target.device)
    return as_defense(defense).apply(grads, DefenseContext(target, x, labels, generator))
