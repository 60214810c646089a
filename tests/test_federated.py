"""client_gradients equals a hand-written torch computation; observed gradients are validated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier

from art_gifd import GIFDAttack, LocalTraining, client_gradients, client_update
from art_gifd.defenses import Defense, DefenseContext, FunctionDefense, GaussianNoise
from art_gifd.federated import TargetModel, defended_gradients
from art_gifd.models import convnet, lenet


def hand_gradients(net: torch.nn.Module, x: np.ndarray, y: np.ndarray, mean: float = 0.0, std: float = 1.0):
    net.eval()
    net.zero_grad()
    loss = torch.nn.functional.cross_entropy(net((torch.tensor(x) - mean) / std), torch.tensor(y))
    return [g.numpy() for g in torch.autograd.grad(loss, list(net.parameters()))]


@pytest.mark.parametrize("factory", [lenet, convnet])
def test_client_gradients_match_hand_computation(factory, heldout) -> None:
    x, y = heldout[0][:4], heldout[1][:4]
    net = factory(seed=0)
    clf = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 32, 32),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        preprocessing=(0.1307, 0.3081),
    )
    grads = client_gradients(clf, x, y)
    want = hand_gradients(factory(seed=0), x, y, 0.1307, 0.3081)
    assert len(grads) == len(want)
    for g, w in zip(grads, want, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    # one-hot labels give the same gradient
    onehot = np.eye(10, dtype=np.float32)[y]
    for g, w in zip(client_gradients(clf, x, onehot), grads, strict=True):
        np.testing.assert_array_equal(g, w)


def test_user_model_is_left_untouched(heldout) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3600, 10),
    )
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clf = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=10)
    client_gradients(clf, heldout[0][:2], heldout[1][:2], train_mode=True)
    assert net.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])


@pytest.fixture
def target(lenet_clf) -> TargetModel:
    return TargetModel(lenet_clf)


def test_gradient_mapping_accepted(target, lenet_clf, heldout) -> None:
    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    by_name = dict(zip(target.names, grads, strict=True))
    for a, b in zip(target.as_gradient_list(by_name), target.as_gradient_list(grads), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g: g[:-1], "Expected 8 gradient arrays"),
        (lambda g: [g[0].T, *g[1:]], r"Gradient of '0.weight' has shape \(5, 5, 1, 12\)"),
        (lambda g: [*g[:3], np.full_like(g[3], np.nan), *g[4:]], "Gradient of '2.bias' contains NaN"),
        (lambda g: [*g[:-1], np.full_like(g[-1], np.inf)], "Gradient of '7.bias' contains NaN or infinite"),
        (lambda g: [g[0].astype(np.int64), *g[1:]], "has dtype int64"),
        (lambda g: [np.zeros_like(a) for a in g], "zero everywhere"),
        (lambda g: "grads", "must be a sequence"),
    ],
)
def test_bad_gradients_are_named(target, lenet_clf, heldout, mutate, message) -> None:
    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    with pytest.raises(ValueError, match=message):
        target.as_gradient_list(mutate(grads))


def test_bad_mapping_keys(target, lenet_clf, heldout) -> None:
    grads = dict(zip(target.names, client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1]), strict=True))
    grads["extra"] = grads.pop("0.weight")
    with pytest.raises(ValueError, match=r"missing \['0.weight'\], unknown \['extra'\]"):
        target.as_gradient_list(grads)


def test_client_input_validation(lenet_clf, heldout) -> None:
    x, y = heldout
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 32, 32\)"):
        client_gradients(lenet_clf, x[:2, :, :28, :28], y[:2])
    with pytest.raises(ValueError, match="Got 3 labels for a client batch of 2"):
        client_gradients(lenet_clf, x[:2], y[:3])
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 9\]"):
        client_gradients(lenet_clf, x[:1], np.array([12]))
    bad = x[:1].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        client_gradients(lenet_clf, bad, y[:1])


def test_attack_checks_labels_against_batch_size(lenet_clf, heldout, default_prior) -> None:
    grads = client_gradients(lenet_clf, heldout[0][:2], heldout[1][:2])
    attack = GIFDAttack(lenet_clf, default_prior, batch_size=2, steps_per_stage=1, verbose=False)
    with pytest.raises(ValueError, match="Got 1 labels for a client batch of 2"):
        attack.infer(grads, y=heldout[1][:1])


class _Returns(Defense):
    """A custom defence that returns a fixed value (on every local step when ``recomputes``, as DP-SGD runs)."""

    def __init__(self, output: object, recomputes: bool = False) -> None:
        self.output, self.recomputes = output, recomputes

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        return self.output(grads) if callable(self.output) else self.output


@pytest.mark.parametrize(
    ("defense", "message"),
    [
        (FunctionDefense(lambda g: g[:-1]), r"defence FunctionDefense\(.*\) returned 7 arrays for 8 parameters"),
        (
            FunctionDefense(lambda g: [t.flatten() for t in g]),
            r"returned shape \(300,\) for '0.weight', whose shape is \(12, 1, 5, 5\)",
        ),
        (FunctionDefense(lambda g: [t * float("nan") for t in g]), "returned NaN or infinite values for '0.weight'"),
        (GaussianNoise(1e300), r"defence GaussianNoise\(sigma=1e\+300.*\) returned NaN or infinite values"),
        (FunctionDefense(lambda g: [t.long() for t in g]), "returned dtype torch.int64 for '0.weight'"),
        (FunctionDefense(lambda g: [None] * len(g)), "returned NoneType for '0.weight'"),
        (_Returns(None), r"defence _Returns\(\) returned NoneType, not a list of 8 gradient tensors"),
        (_Returns(lambda g: torch.cat([t.flatten() for t in g])), "returned Tensor, not a list of 8"),
    ],
)
def test_defence_output_is_checked(lenet_clf, heldout, defense, message) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    with pytest.raises(ValueError, match=message):
        client_gradients(lenet_clf, x, y, defense=defense, seed=0)
    with pytest.raises(ValueError, match=message):  # on the final update of FedAvg
        client_update(lenet_clf, x, y, LocalTraining(0.1), defense=defense, seed=0)


def test_defence_output_is_checked_on_every_local_step(lenet_clf, heldout) -> None:
    defense = _Returns(lambda g: g[1:], recomputes=True)
    with pytest.raises(ValueError, match=r"defence _Returns\(\) returned 7 arrays for 8 parameters"):
        client_update(lenet_clf, heldout[0][:2], heldout[1][:2], LocalTraining(0.1, steps=2), defense=defense, seed=0)


def test_defence_may_return_numpy_arrays(lenet_clf, heldout) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    clean = client_gradients(lenet_clf, x, y)
    halved = client_gradients(lenet_clf, x, y, defense=lambda g: [t.numpy().astype(np.float64) / 2 for t in g])
    for h, c in zip(halved, clean, strict=True):
        assert h.dtype == np.float32
        np.testing.assert_allclose(h, c / 2, rtol=1e-6)


def test_empty_batch_is_refused(lenet_clf, heldout) -> None:
    x, y = heldout
    with pytest.raises(ValueError, match="x is empty: pass at least one private sample"):
        client_gradients(lenet_clf, x[:0], y[:0])
    with pytest.raises(ValueError, match="x is empty: pass at least one private sample"):
        client_update(lenet_clf, x[:0], y[:0], LocalTraining(0.1))


@pytest.mark.parametrize("seed", [-1, -5, 2**63, 1.5, True, "0"])
def test_client_seeds_are_checked_as_the_attacks_check_them(lenet_clf, heldout, default_prior, seed) -> None:
    x, y = heldout[0][:1], heldout[1][:1]
    message = r"seed must be an integer in \[0, 9223372036854775807\] or None"
    with pytest.raises(ValueError, match=message):
        client_gradients(lenet_clf, x, y, seed=seed)
    with pytest.raises(ValueError, match=message):
        client_update(lenet_clf, x, y, LocalTraining(0.1), seed=seed)
    target = TargetModel(lenet_clf)
    with pytest.raises(ValueError, match=message):
        defended_gradients(target, torch.as_tensor(x), target.labels_to_indices(y), GaussianNoise(0.1), seed)
    with pytest.raises(ValueError, match=message):
        GIFDAttack(lenet_clf, default_prior, seed=seed, verbose=False)
    assert len(client_gradients(lenet_clf, x, y, seed=np.int64(2**63 - 1))) == 8


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (torch.nn.MSELoss(), "the estimator's loss is MSELoss: art-gifd models classification clients trained with"),
        (torch.nn.NLLLoss(), "the estimator's loss is NLLLoss: .*drop the log_softmax"),
        (torch.nn.CrossEntropyLoss(reduction="none"), "reduction='none'.*use reduction='mean'"),
    ],
)
def test_loss_other_than_cross_entropy_is_refused(heldout, loss, message) -> None:
    clf = PyTorchClassifier(model=lenet(seed=0), loss=loss, input_shape=(1, 32, 32), nb_classes=10)
    with pytest.raises(ValueError, match=message):
        client_gradients(clf, heldout[0][:2], heldout[1][:2])
    with pytest.raises(ValueError, match=message):
        TargetModel(clf)


def test_cross_entropy_summed_or_label_smoothed_is_accepted(heldout) -> None:
    for loss in (torch.nn.CrossEntropyLoss(reduction="sum"), torch.nn.CrossEntropyLoss(label_smoothing=0.1)):
        clf = PyTorchClassifier(model=lenet(seed=0), loss=loss, input_shape=(1, 32, 32), nb_classes=10)
        assert all(np.isfinite(g).all() for g in client_gradients(clf, heldout[0][:2], heldout[1][:2]))


@pytest.mark.parametrize(("cast", "dtype"), [(torch.nn.Module.double, "float64"), (torch.nn.Module.half, "float16")])
def test_model_other_than_float32_is_refused(heldout, cast, dtype) -> None:
    clf = PyTorchClassifier(
        model=cast(lenet(seed=0)), loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=10
    )
    with pytest.raises(ValueError, match=rf"the model's parameters are {dtype} .*call model.float\(\) before wrapping"):
        client_gradients(clf, heldout[0][:1], heldout[1][:1])


def test_model_with_float64_buffers_is_refused(heldout) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(1800, 10)
    )
    net[1].double()
    net[1].weight.data, net[1].bias.data = net[1].weight.data.float(), net[1].bias.data.float()
    clf = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=10)
    with pytest.raises(ValueError, match=r"the model's buffers are float64 .*'1\.running_mean'"):
        client_gradients(clf, heldout[0][:1], heldout[1][:1])


def test_a_model_its_input_cannot_influence_is_named(caplog) -> None:
    """A clip range of ±1e-6 (or a preprocessing std of 1e8) leaves every image equal to the model: any image fits."""
    for clip, warned in (((0.0, 1.0), False), ((-1e-6, 1e-6), True)):
        clf = PyTorchClassifier(
            model=lenet(seed=0),
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=(1, 32, 32),
            nb_classes=10,
            clip_values=clip,
        )
        caplog.clear()
        with caplog.at_level("WARNING"):
            TargetModel(clf)
        assert ("its input has no influence" in caplog.text) is warned
