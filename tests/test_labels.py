"""Label inference from real gradients, and label mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from art_gifd.attacks.label_mapping import map_labels
from art_gifd.federated import TargetModel, client_gradients
from art_gifd.labels import classes_with_negative_rows, find_classifier_head, infer_labels
from art_gifd.models import convnet, lenet, make_classifier


def inferred(clf, x: np.ndarray, y: np.ndarray) -> list[int]:
    target = TargetModel(clf)
    grads = target.as_gradient_list(client_gradients(clf, x, y))
    return infer_labels(grads, target.module, 10, len(y)).tolist()


@pytest.mark.parametrize("factory", [lenet, convnet])
def test_single_label_exact(factory, heldout) -> None:
    x, y = heldout
    clf = make_classifier(factory(seed=1), (1, 32, 32))
    for i in range(10):
        assert inferred(clf, x[i : i + 1], y[i : i + 1]) == [int(y[i])]


def test_distinct_labels_exact(heldout) -> None:
    x, y = heldout
    clf = make_classifier(lenet(seed=2), (1, 32, 32))
    picks = [int(np.flatnonzero(y == c)[0]) for c in (0, 3, 5, 9)]
    assert inferred(clf, x[picks], y[picks]) == [0, 3, 5, 9]


def test_repeated_label_counts(heldout) -> None:
    x, y = heldout
    clf = make_classifier(convnet(seed=3), (1, 32, 32))
    ones, sevens, twos = (np.flatnonzero(y == c) for c in (1, 7, 2))
    picks = [*ones[:3], *sevens[:2], twos[0]]
    assert inferred(clf, x[picks], y[picks]) == sorted(int(y[i]) for i in picks)


def test_a_few_class_model_whose_batch_hides_a_class_warns(heldout) -> None:
    import warnings

    x, _ = heldout
    clf = make_classifier(lenet(num_classes=2, seed=0), (1, 32, 32), nb_classes=2)
    target = TargetModel(clf)
    y = np.array([0, 1, 1, 1])
    grads = target.as_gradient_list(client_gradients(clf, x[:4], y))
    with pytest.warns(UserWarning, match=r"2-class model from a batch of 4: .* 1 of the 2 classes were found"):
        found = infer_labels(grads, target.module, 2, 4).tolist()
    assert len(set(found)) == 1  # the case warned about: a class of the batch left no trace
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one image: its class is the negative one, nothing to warn about
        for label in (0, 1):
            grads = target.as_gradient_list(client_gradients(clf, x[:1], np.array([label])))
            assert infer_labels(grads, target.module, 2, 1).tolist() == [label]


def test_head_without_bias_uses_weight_rows(heldout) -> None:
    x, y = heldout
    net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 32), nn.Sigmoid(), nn.Linear(32, 10, bias=False))
    clf = make_classifier(net, (1, 32, 32))
    assert find_classifier_head(net, 10) == (2, None)
    assert inferred(clf, x[:1], y[:1]) == [int(y[0])]


def test_model_without_head_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(1, 10, 32), nn.Flatten())
    with pytest.raises(ValueError, match=r"no nn\.Linear layer with 10 outputs"):
        find_classifier_head(net, 10)


class _HeadFirst(nn.Module):
    """A head registered before a 10-unit hidden layer, which runs first: registration order is not forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 10)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(1024, 10), nn.ReLU(), nn.Linear(10, 16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_head_is_the_layer_that_produces_the_output(heldout) -> None:
    torch.manual_seed(0)
    x, y = heldout
    net = _HeadFirst()
    clf = make_classifier(net, (1, 32, 32))
    assert TargetModel(clf).classifier_head == (0, 1)  # head.weight, head.bias, not the bottleneck (2, 3)
    picks = [int(np.flatnonzero(y == c)[0]) for c in (1, 3)]
    grads = client_gradients(clf, x[picks], y[picks])
    assert infer_labels(grads, clf, 10, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"several nn\.Linear layers have 10 outputs \('head', 'features\.1'\)"):
        infer_labels(grads, net, 10, 2)  # a bare module cannot tell: refused, not read from the wrong layer


@pytest.mark.parametrize("size", [1, 4, 8])
def test_negated_update_is_refused(heldout, size: int) -> None:
    x, y = heldout
    clf = make_classifier(convnet(seed=1), (1, 32, 32))
    picks = [int(np.flatnonzero(y == c)[0]) for c in range(size)]
    grads = client_gradients(clf, x[picks], y[picks])
    assert infer_labels(grads, clf, 10, size).tolist() == list(range(size))
    with pytest.raises(ValueError, match=r"looks negated.*w_before − w_after"):
        infer_labels([-g for g in grads], clf, 10, size)


def test_label_mapping() -> None:
    labels = torch.tensor([0, 2, 2])
    assert map_labels(labels, None, 5).tolist() == [0, 2, 2]
    assert map_labels(labels, {0: 4, 2: 1}, 5).tolist() == [4, 1, 1]
    assert map_labels(labels, lambda c: c + 1, 5).tolist() == [1, 3, 3]
    with pytest.raises(ValueError, match="no entry for task label 2"):
        map_labels(labels, {0: 1}, 5)
    with pytest.raises(ValueError, match="not a generator class"):
        map_labels(labels, {0: 1, 2: 7}, 5)


def _trained_convnet_batches(size: int, trials: int):
    """Updates of ``size`` held-out digits (evaluation pool 900-999) on the trained ConvNet: FedSGD and 5 steps."""
    from art_gifd.data import load_mnist32
    from art_gifd.federated import LocalTraining, client_update
    from benchmarks.fedavg import trained_model

    clf, accuracy = trained_model(30)
    assert accuracy > 0.8  # a confident model, mid-training
    x, y = load_mnist32("heldout")
    x, y = x[900:1000], y[900:1000]  # the evaluation pool: the rules were chosen on 700-899
    rng = np.random.default_rng(0)
    for trial in range(trials):
        index = rng.choice(len(x), size, replace=False)
        if trial % 2:
            update = client_gradients(clf, x[index], y[index])
        else:
            update = client_update(clf, x[index], y[index], LocalTraining(0.05, steps=5), seed=0)
        yield TargetModel(clf).module, [torch.as_tensor(a) for a in update], sorted(int(v) for v in y[index])


@pytest.mark.parametrize("size", [4, 8])
def test_negative_rows_find_the_classes_a_confident_model_hides(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On the trained ConvNet the bias's sign misses confident samples' classes, and at B=8 the span test cannot run; the
    weight rows recover the set of classes in every batch, and more labels than the previous rule in none fewer.
    """
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the benchmarks package
    from benchmarks.labels import overlap, span_rule

    old, new = [], []
    for module, grads, truth in _trained_convnet_batches(size, 12):
        weight_index, _ = find_classifier_head(module, 10)
        assert sorted(classes_with_negative_rows(grads[weight_index], size)) == sorted(set(truth))
        old.append(overlap(span_rule(grads, module, size), truth))
        new.append(overlap(sorted(int(v) for v in infer_labels(grads, module, 10, size)), truth))
    gain = {4: 0.04, 8: 0.2}[size]  # at B=8 the previous rule is the sign alone
    assert np.mean(new) >= 0.8 and np.mean(new) >= np.mean(old) + gain, (np.mean(old), np.mean(new))
    assert all(n >= o for n, o in zip(new, old, strict=True))


def test_negative_rows_refused_for_signed_features_and_noise(heldout) -> None:
    """Rows of either sign everywhere (features after a plain linear layer, or added noise) must not mark classes."""
    x, y = heldout
    net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 32), nn.Linear(32, 10))
    torch.manual_seed(0)
    clf = make_classifier(net, (1, 32, 32))
    grads = [torch.as_tensor(a) for a in client_gradients(clf, x[:4], y[:4])]
    assert classes_with_negative_rows(grads[2], 4) is None
    relu = make_classifier(convnet(seed=0), (1, 32, 32))
    grads = [torch.as_tensor(a) for a in client_gradients(relu, x[:4], y[:4])]
    weight_index, _ = find_classifier_head(TargetModel(relu).module, 10)
    assert sorted(classes_with_negative_rows(grads[weight_index], 4)) == sorted(set(y[:4].tolist()))
    noisy = grads[weight_index] + 0.1 * grads[weight_index].abs().max() * torch.randn_like(grads[weight_index])
    assert classes_with_negative_rows(noisy, 4) is None


def test_label_smoothing_refuses_inference_and_keeps_known_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With label smoothing an absent class's bias gradient turns negative on a confident model: inference is refused
    (it read wrong labels), and a genuine gradient with known labels is not mistaken for a negated one.
    """
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.attacks import InvertingGradientsAttack
    from art_gifd.data import load_mnist32
    from art_gifd.labels import check_update_sign

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the benchmarks package
    from benchmarks.fedavg import trained_model

    x, y = load_mnist32("heldout")
    x, y = x[900:901], y[900:901]  # a digit whose smoothed gradient fails the negation test
    clf = PyTorchClassifier(
        model=trained_model(30)[0].model,
        loss=nn.CrossEntropyLoss(label_smoothing=0.1),
        input_shape=(1, 32, 32),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    target = TargetModel(clf)
    grads = [torch.as_tensor(a) for a in target.as_gradient_list(client_gradients(clf, x, y))]
    with pytest.raises(ValueError, match="looks negated"):
        check_update_sign(grads, target.classifier_head, 1)  # why the attack must not run this test here
    with pytest.raises(ValueError, match=r"label_smoothing=0\.1.*Pass the client's labels"):
        infer_labels(grads, clf, 10, 1)
    attack = InvertingGradientsAttack(clf, max_iter=1, num_restarts=1, seed=0, verbose=False)
    with pytest.raises(ValueError, match=r"label_smoothing=0\.1"):
        attack.infer(grads)
    assert attack.infer(grads, y=y).shape == (1, 1, 32, 32)


def test_noise_too_small_to_break_the_sum_does_not_invent_classes(heldout) -> None:
    """DP noise of 1e-7 … 1e-5 keeps the bias gradient's sum near zero but flips absent classes' near-zero entries."""
    from art_gifd.defenses import DPSGD
    from art_gifd.labels import classes_evidenced

    x, y = heldout
    clf = make_classifier(convnet(seed=0), (1, 32, 32))
    head = find_classifier_head(TargetModel(clf).module, 10)
    for noise in (1e-7, 1e-6, 1e-5):
        dp = DPSGD(noise_multiplier=noise, max_grad_norm=1.0, sample_rate=0.01, steps=100, delta=1e-5)
        for i in range(8):
            grads = [torch.as_tensor(g) for g in client_gradients(clf, x[i : i + 1], y[i : i + 1], defense=dp, seed=i)]
            assert classes_evidenced(grads, head, nn.CrossEntropyLoss()) in ([int(y[i])], [])
    four = [int(np.flatnonzero(y == c)[0]) for c in (0, 3, 5, 9)]  # while a batch of 4 still shows its 4 classes
    grads = [torch.as_tensor(g) for g in client_gradients(clf, x[four], y[four])]
    assert classes_evidenced(grads, head, nn.CrossEntropyLoss()) == [0, 3, 5, 9]


def test_infer_labels_refuses_a_batch_size_below_the_classes_the_gradient_shows(heldout) -> None:
    x, y = heldout
    clf = make_classifier(lenet(seed=2), (1, 32, 32))
    picks = [int(np.flatnonzero(y == c)[0]) for c in (0, 3, 5, 9)]
    grads = client_gradients(clf, x[picks], y[picks])
    for module in (clf, TargetModel(clf).module):  # an ART classifier, and a bare module (cross-entropy assumed)
        with pytest.raises(ValueError, match=r"shows 4 distinct labels .* but batch_size=1: set batch_size"):
            infer_labels(grads, module, 10, 1)
    bf16 = [torch.as_tensor(g).bfloat16() for g in grads]  # numpy has no bfloat16: widened to float32
    assert infer_labels(bf16, clf, 10, 4).tolist() == [0, 3, 5, 9]
