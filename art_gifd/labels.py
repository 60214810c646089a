"""
Labels: inferring the client's labels from its gradient.

Label inference reads the gradient of the last linear layer (the classifier head). With softmax cross-entropy the
bias gradient of class ``c`` is ``g_c = (1/B) Σ_i (p_ic − y_ic)``: negative for a class present in the batch only
(iDLG, Zhao et al. 2020). Without a bias the row sums of the weight gradient play the same role when the features
entering the head are non-negative (ReLU/sigmoid), which is the usual case.

Which classes are present is read from the rows of the head's weight gradient next. Each sample ``i`` adds
``(p_i − e_{y_i}) h_iᵀ`` to it (``h_i`` its features), so the row of an absent class is ``(1/B) Σ_i p_ic h_i``: with
non-negative features (ReLU, sigmoid, pooling of those) no entry of it can be negative, while the row of a present class
is negative wherever its samples' features outweigh the others'. That holds after several local steps of SGD (with
momentum) or Adam too, as a sum of such rows, and it does not depend on how confident the model is: a class whose
samples the model predicts at ``p = 0.9999`` still leaves negative entries, where the bias only sees ``1 − p``, too
small to outweigh the probability an unconfident sample spreads over absent classes. Classes with an entry below
``−1e-6`` of the gradient's largest magnitude are added to those of the bias's sign. Features of either sign, weight
decay or added noise make most rows negative somewhere; when more classes than ``B``, or every class, would be present
the test is refused.

Where the row test is refused, or the update is one gradient (its head has rank at most ``B``), the span of the head's
gradient adds the classes still missed. The column space of ``[∇W, ∇b]`` is spanned by the ``B`` vectors ``v_i = p_i −
e_{y_i}``, each negative at its label only and positive elsewhere. A class ``c`` is present when that
``B``-dimensional span (the top ``B`` left singular vectors) holds a vector negative at ``c`` and positive elsewhere: a
small linear programme per class, whose margin is positive for the classes present; the span adds those whose margin is
above half the smallest margin of the classes already found (an absent class's margin is small or negative). It helps
dense features, such as a sigmoid LeNet's, whose rows follow the bias's sign. After several local steps the span is
approximate, and it added absent classes, so it is only used there when the row test is refused. When ``B >
nb_classes / 2`` the span holds vectors of that shape for absent classes too, and it is not used.

On held-out digits 900–999 (the rules were chosen on 700–899; ``benchmarks/results/labels.md``), from FedSGD to 10
local steps, the share of labels recovered on a trained ConvNet went from 0.82–0.88 (sign and span) to 0.91–0.96 at
B=4 and from 0.55–0.67 (the sign alone) to 0.82–0.85 at B=8 (there the set of classes is right in every batch and the
counts are the error left), and on an untrained sigmoid LeNet after several local steps from 0.53–0.83 to 0.82–0.97;
no batch lost a label. With weight decay in the local training the row test is refused and the earlier rules decide.

Counts of repeated labels (batch size ``B`` larger than the number of present classes) are estimated as follows.
A class absent from the batch has ``g_c = p̄_c``, its mean predicted probability; the mean of ``g`` over absent
classes estimates ``p̄`` of the present ones too (near-uniform predictions, as early in training), so a present
class has ``n_c ≈ B (p̄ − g_c)``. The estimates are rescaled to sum to ``B`` and rounded by largest remainder with
every present class kept at least once. This is exact for distinct labels and a heuristic for repeats.

With as many images as classes or more (a binary model, or ``B ≥ nb_classes``), a present class can go unseen: the
bias gradient sums to zero, so not every class can be negative, and ``g_c = p̄_c − n_c / B`` stays positive for a class
whose share of the batch is below its mean predicted probability (a binary batch of one 0 and three 1s, at ``p̄_0 =
0.4``, shows class 1 only). Inference then warns when it found fewer classes than the model has.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from art_gifd.validation import MAX_BATCH_SIZE, check_gradient, check_integer


def find_classifier_head(
    module: nn.Module, nb_classes: int, example: torch.Tensor | None = None
) -> tuple[int, int | None]:
    """
    Locate the classifier head: the ``nn.Linear`` layer with ``nb_classes`` outputs that produces the model's output.

    With ``example`` (an input batch the module can run), one forward pass tells: the layer whose output is the
    model's output, else the last such layer the pass runs (a head followed by e.g. a temperature). Without it the
    model must have one layer of ``nb_classes`` outputs, since the order in which layers are registered need not be
    the order in which they run (a head defined before a bottleneck of ``nb_classes`` units).

    :param module: The FL model.
    :param nb_classes: Number of classes.
    :param example: An input batch for the forward pass (no gradient is taken; random generators are restored).
    :return: Indices, in ``module.parameters()`` order, of its weight and of its bias (``None`` without bias).
    :raises ValueError: If the model has no such layer, the forward pass runs none, or several are possible and no
                        ``example`` tells them apart.
    """
    index = {id(p): i for i, p in enumerate(module.parameters())}
    names = {id(m): name for name, m in module.named_modules()}
    heads = [m for m in module.modules() if isinstance(m, nn.Linear) and m.out_features == nb_classes]
    if not heads:
        raise ValueError(
            f"Cannot infer labels: the model has no nn.Linear layer with {nb_classes} outputs. Pass the labels "
            "explicitly (y=...)."
        )
    listed = ", ".join(f"'{names[id(m)]}'" for m in heads)
    if example is not None:
        calls: list[tuple[nn.Module, object]] = []
        hooks = [m.register_forward_hook(lambda layer, _, out: calls.append((layer, out))) for m in heads]
        devices = [example.device] if example.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                output = module(example)
        finally:
            for hook in hooks:
                hook.remove()
        if not calls:
            raise ValueError(
                f"Cannot infer labels: no nn.Linear layer with {nb_classes} outputs ({listed}) runs in the model's "
                "forward pass. Pass the labels explicitly (y=...)."
            )
        producing = [
            m
            for m, out in calls
            if isinstance(out, torch.Tensor)
            and isinstance(output, torch.Tensor)
            and out.shape == output.shape
            and torch.equal(out, output)
        ]
        head = (producing or [m for m, _ in calls])[-1]
    elif len(heads) > 1:
        raise ValueError(
            f"Cannot infer labels: several nn.Linear layers have {nb_classes} outputs ({listed}) and which one "
            "produces the model's output is not known: pass the ART classifier instead of its module (one forward "
            "pass tells), or the labels (y=...)."
        )
    else:
        head = heads[0]
    return index[id(head.weight)], (index[id(head.bias)] if head.bias is not None else None)


def label_signal(grads: Sequence[torch.Tensor], weight_index: int, bias_index: int | None) -> torch.Tensor:
    """Per-class signal whose negative entries mark the classes present: the bias gradient, else weight row sums."""
    if bias_index is not None:
        return grads[bias_index].detach().double()
    return grads[weight_index].detach().double().sum(dim=1)


#: How far below zero, as a fraction of the largest entry's magnitude, a bias-gradient entry must lie to show its class
#: present (see :func:`classes_evidenced`).
EVIDENCE_FRACTION = 0.05


def classes_evidenced(
    grads: Sequence[torch.Tensor], head: tuple[int, int | None] | None, loss: object
) -> list[int] | None:
    """
    Classes that a clean softmax cross-entropy gradient shows present, or ``None`` where it cannot tell.

    A class's bias gradient ``(1/B) Σ_i (p_ic − y_ic)`` can only be negative if some sample has that label, so the
    classes of negative entries are present, and their number bounds the batch size from below. It is only read where
    it is exact: a head (weight and bias indices) with a bias, an ``nn.CrossEntropyLoss`` without label smoothing, and
    bias gradients that sum to zero as such a gradient must (added noise, clipping scale aside, breaks that: then
    ``None``). Only entries below :data:`EVIDENCE_FRACTION` of the largest entry's magnitude, negated, count: noise too
    small to break the sum still flips the sign of an absent class's near-zero entry, while a present class's entry
    that matters is near ``(p − 1) / B``.
    """
    if not isinstance(loss, nn.CrossEntropyLoss) or loss.label_smoothing or head is None or head[1] is None:
        return None
    bias = grads[head[1]].detach().double()
    scale = float(bias.abs().sum())
    if scale == 0.0 or abs(float(bias.sum())) > 1e-4 * scale:
        return None
    return [int(c) for c in torch.nonzero(bias < -EVIDENCE_FRACTION * bias.abs().max()).flatten()]


def check_evidenced_count(evidenced: Sequence[int] | None, batch_size: int) -> None:
    """
    Refuse a batch size below the number of classes a gradient shows present (:func:`classes_evidenced`).

    :raises ValueError: Naming both numbers and the way out.
    """
    if evidenced is not None and len(evidenced) > batch_size:
        raise ValueError(
            f"The gradient shows {len(evidenced)} distinct labels (negative bias gradients of the classifier head), "
            f"so it comes from at least {len(evidenced)} images, but batch_size={batch_size}: set batch_size to the "
            "client's batch size."
        )


def check_inferable(loss: object) -> None:
    """
    Refuse label inference for a client loss whose gradient signs do not mark the classes present.

    With label smoothing ``ε`` the target of an absent class is ``ε/K``, so its bias gradient turns negative on a
    confident model and a present class's can turn positive: the sign rules would read wrong labels.

    :param loss: The client's loss (the estimator's), or ``None`` where it is not known (plain cross-entropy assumed).
    :raises ValueError: For a loss with label smoothing.
    """
    smoothing = getattr(loss, "label_smoothing", 0.0)
    if smoothing:
        raise ValueError(
            f"Cannot infer labels: the client's loss uses label_smoothing={smoothing:g}, which changes the signs of "
            "the classifier head's gradient that label inference reads (absent classes can look present). Pass the "
            "client's labels (y=...)."
        )


def check_update_sign(grads: Sequence[torch.Tensor], head: tuple[int, int | None], batch_size: int) -> None:
    """
    Refuse an update given with the opposite sign (``w_after − w_before``, or a gradient ascent step).

    With non-negative features entering the head, only the rows of classes present can have negative entries, so at
    most ``batch_size`` rows do (:func:`classes_with_negative_rows`); negated, the rows of the absent classes do. An
    update whose rows fail that test while the negated rows pass it has been given with the wrong sign. Features of
    either sign make both fail, and nothing is said.

    :raises ValueError: If the update looks negated.
    """
    weight = grads[head[0]]
    if classes_with_negative_rows(weight, batch_size) is None and classes_with_negative_rows(-weight, batch_size):
        raise ValueError(
            "The update looks negated: the rows of the classifier head's gradient show the pattern of the classes "
            "absent from the batch where the present ones should be. Pass the gradient of the loss, or for FedAvg "
            "w_before − w_after (not w_after − w_before)."
        )


def infer_labels(
    grads: Sequence[torch.Tensor | np.ndarray] | Mapping[str, torch.Tensor | np.ndarray],
    module: nn.Module,
    nb_classes: int,
    batch_size: int,
) -> torch.Tensor:
    """
    Infer the labels of a client batch from its gradient (see the module documentation for the method).

    :param grads: Per-parameter gradients (tensors or arrays) in ``module.parameters()`` order, or a mapping parameter
                  name → gradient, e.g. what :func:`~art_gifd.federated.client_gradients` returns.
    :param module: The FL model: a ``torch.nn.Module``, or an ART ``PyTorchClassifier``, whose model then runs once (a
                   copy, on zeros of its ``input_shape``) to tell which layer is the classifier head.
    :param nb_classes: Number of classes.
    :param batch_size: Client batch size ``B``.
    :return: ``B`` class indices, sorted, on the gradients' device (the CPU for arrays).
    :raises ValueError: For a gradient that does not fit the model (count, shapes, NaN, all zero), looks negated
                        (:func:`check_update_sign`) or shows more classes than ``batch_size``, a classifier whose
                        loss uses label smoothing (:func:`check_inferable`), a model that is not a module, has no
                        classifier head of ``nb_classes`` outputs or (a bare module) several candidates, or a count
                        out of range (``batch_size`` above :data:`~art_gifd.validation.MAX_BATCH_SIZE`).
    """
    check_integer("nb_classes", nb_classes, 2)
    check_integer("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    example, loss = None, nn.CrossEntropyLoss()  # a bare module's loss is not known: plain cross-entropy assumed
    if not isinstance(module, nn.Module):  # an ART classifier: a forward pass on a copy finds its head
        loss = getattr(module, "_loss", None)
        check_inferable(loss)
        model, shape = getattr(module, "model", None), getattr(module, "input_shape", None)
        if isinstance(model, nn.Module) and shape is not None:
            module = copy.deepcopy(model).eval()
            first_param = next(module.parameters(), None)
            device = first_param.device if first_param is not None else torch.device("cpu")
            example = torch.zeros((2, *shape), device=device)
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module (the FL model), got {type(module).__name__}.")
    named = list(module.named_parameters())
    first = next(iter(grads.values() if isinstance(grads, Mapping) else grads), None)
    device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
    arrays = check_gradient(grads, [n for n, _ in named], [tuple(p.shape) for _, p in named])
    tensors = [torch.as_tensor(a, device=device) for a in arrays]
    head = find_classifier_head(module, nb_classes, example)
    check_update_sign(tensors, head, batch_size)
    check_evidenced_count(classes_evidenced(tensors, head, loss), batch_size)
    return labels_from_gradient(tensors, head, batch_size)


def labels_from_gradient(grads: Sequence[torch.Tensor], head: tuple[int, int | None], batch_size: int) -> torch.Tensor:
    """
    :func:`infer_labels` on a gradient already checked against the model (the attacks' path).

    :param grads: Per-parameter gradient tensors in ``module.parameters()`` order.
    :param head: Indices of the classifier head's weight and bias (:func:`find_classifier_head`).
    :param batch_size: Client batch size ``B``.
    :return: ``B`` class indices, sorted, on the gradients' device.
    """
    weight_index, bias_index = head
    signal = label_signal(grads, weight_index, bias_index).cpu().numpy()
    present = [int(c) for c in np.argsort(signal, kind="stable") if signal[c] < 0]  # no absent class is negative
    rows = classes_with_negative_rows(grads[weight_index], batch_size)
    if rows is not None:  # exact for non-negative head features: add the classes the sign missed, strongest first
        present += [c for c in rows if c not in present]
    if len(present) < batch_size:  # room left: the span test adds the present classes both missed (dense features)
        # after the row test only where the span is exact (one gradient, not several local steps)
        margins = span_margins(grads, weight_index, bias_index, batch_size, exact_only=rows is not None)
        if margins is not None:
            present = add_span_classes(present, margins, batch_size)
    labels = labels_for_classes(signal, present, batch_size)
    found = len(set(labels))
    if signal.size <= batch_size and found < signal.size:
        # the bias gradient sums to zero, so a class present with about its share p̄ of predictions can stay positive:
        # with as many images as classes or more, the tests above can miss present classes
        warnings.warn(
            f"Labels inferred for a {signal.size}-class model from a batch of {batch_size}: with at least as many "
            f"images as classes, a class in the batch can leave no trace in the gradient, and {found} of the "
            f"{signal.size} classes were found ({sorted(set(labels))}), so the labels may be wrong. Pass the client's "
            "labels (y=...) where they are known.",
            UserWarning,
            stacklevel=3,
        )
    return torch.as_tensor(labels, dtype=torch.long, device=grads[0].device)


def add_span_classes(present: list[int], margins: np.ndarray, batch_size: int) -> list[int]:
    """
    ``present`` followed by the classes of :func:`span_margins` whose margin is above half the smallest margin of the
    classes already found, most certain first, up to ``batch_size`` classes in all.
    """
    floor = max(0.0, 0.5 * min((margins[c] for c in present), default=0.0))
    missed = [int(c) for c in np.argsort(-margins, kind="stable") if c not in present and margins[c] > floor]
    return present + missed[: max(batch_size - len(present), 0)]


def labels_for_classes(signal: np.ndarray, present: list[int], batch_size: int) -> list[int]:
    """
    ``batch_size`` sorted labels from the classes found present: the first ``batch_size`` of them, or every one with
    the remaining labels spread by :func:`_estimate_counts`; with none found, the class of the most negative signal.
    """
    present = present or [int(np.argmin(signal))]  # degenerate (e.g. a fully confident model)
    if len(present) >= batch_size:
        return sorted(present[:batch_size])
    return sorted(_estimate_counts(signal, present, batch_size))


def classes_with_negative_rows(weight_grad: torch.Tensor, batch_size: int, tolerance: float = 1e-6) -> list[int] | None:
    """
    The classes whose row of the head's weight gradient has an entry below ``-tolerance`` times the gradient's
    largest magnitude, most negative first; ``None`` where the rows cannot tell (see the module documentation).

    With non-negative features entering the head, the row of an absent class is a sum of ``p_ic h_i ≥ 0`` and cannot
    be negative, after any number of local SGD or Adam steps without weight decay. Features of either sign, weight
    decay or added noise make most rows negative somewhere: when every class, or more classes than ``batch_size``,
    would be present, the test is refused.
    """
    weight = weight_grad.detach().double().cpu()
    if weight.dim() != 2:
        return None
    scale = float(weight.abs().max())
    lowest = weight.min(dim=1).values.numpy() / scale if scale > 0 else np.zeros(weight.shape[0])
    flagged = np.flatnonzero(lowest < -tolerance)
    if not 0 < flagged.size <= min(batch_size, weight.shape[0] - 1):
        return None
    return [int(c) for c in flagged[np.argsort(lowest[flagged], kind="stable")]]


def span_margins(
    grads: Sequence[torch.Tensor], weight_index: int, bias_index: int | None, batch_size: int, exact_only: bool = False
) -> np.ndarray | None:
    """
    Per class, how far the span of the head's gradient holds a vector negative at that class only (see the module
    documentation): positive for the classes present, negative (or ``-inf``) for most absent ones. ``None`` where the
    test cannot decide: ``batch_size > nb_classes / 2``, a head without a 2-D weight gradient, a zero gradient, and
    with ``exact_only`` a head gradient of rank above ``batch_size`` (an update of several local steps).
    """
    from scipy.optimize import linprog

    weight = grads[weight_index].detach().double().cpu()
    classes = weight.shape[0]
    if weight.dim() != 2 or 2 * batch_size > classes:  # a span of half the classes or more holds too much
        return None
    columns = [weight] + ([grads[bias_index].detach().double().cpu().reshape(-1, 1)] if bias_index is not None else [])
    u, s, _ = np.linalg.svd(torch.cat(columns, dim=1).numpy(), full_matrices=False)
    if s[0] == 0:
        return None
    numerical_rank = int((s > s[0] * 1e-6).sum())
    if exact_only and numerical_rank > batch_size:
        return None
    u = u[:, : min(batch_size, numerical_rank)]
    rank = u.shape[1]
    margins = np.full(classes, -np.inf)
    for c in range(classes):
        # maximise t such that the span holds v with v_c = -1 and v_k >= t for every other class k
        others = np.delete(np.arange(classes), c)
        bounds = [(-1e3, 1e3)] * rank + [(None, 1.0)]
        a_ub = np.concatenate([-u[others], np.ones((classes - 1, 1))], axis=1)
        a_eq = np.concatenate([u[c], [0.0]])[None]
        found = linprog(
            np.r_[np.zeros(rank), -1.0], A_ub=a_ub, b_ub=np.zeros(classes - 1), A_eq=a_eq, b_eq=[-1.0], bounds=bounds
        )
        if found.status == 0:
            margins[c] = -found.fun
    return margins


def _estimate_counts(signal: np.ndarray, present: list[int], batch_size: int) -> list[int]:
    """Spread ``batch_size`` labels over the ``present`` classes in proportion to ``p̄ − signal`` (largest remainder)."""
    absent = np.setdiff1d(np.arange(signal.size), present)
    baseline = float(signal[absent].mean()) if absent.size else 0.0
    strength = np.maximum(baseline - signal[present], 1e-12)
    extra = batch_size - len(present)
    share = strength / strength.sum() * batch_size - 1.0  # what each class holds beyond its guaranteed one
    share = np.maximum(share, 0.0)
    share = share / share.sum() * extra if share.sum() > 0 else np.full(len(present), extra / len(present))
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: extra - counts.sum()]:
        counts[i] += 1
    return [c for c, n in zip(present, counts + 1, strict=True) for _ in range(n)]
