"""Defences: DP-SGD and its accounting against Opacus, each transform's stated property, composition, validation,
the user's model left untouched, the adaptive attacker's replay, and the utility measurement."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from art_gifd import InvertingGradientsAttack, client_gradients
from art_gifd.attacks.core import GradientMatcher
from art_gifd.attacks.registry import Budget, build_attack
from art_gifd.defenses import (
    DPSGD,
    Clip,
    Compose,
    Defense,
    DefenseContext,
    FunctionDefense,
    GaussianNoise,
    LaplacianNoise,
    Prune,
    Quantize,
    SignCompression,
    Soteria,
    describe_defense,
)
from art_gifd.federated import LocalTraining, TargetModel, client_update
from art_gifd.models import lenet, make_classifier
from art_gifd.utility import measure_utility

DP = {"max_grad_norm": 1.0, "sample_rate": 0.01, "steps": 500, "delta": 1e-5}


def flat(grads: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([g.ravel() for g in grads])


@pytest.fixture(scope="module")
def batch4():
    from art_gifd.data import load_mnist32

    x, y = load_mnist32("heldout")
    return x[:4], y[:4]


@pytest.fixture(scope="module")
def clf4():
    return make_classifier(lenet(seed=0), (1, 32, 32))


@pytest.fixture(scope="module")
def clean4(clf4, batch4):
    return client_gradients(clf4, *batch4)


# --- DP-SGD -------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Optimal order")
def test_dp_epsilon_equals_opacus_accountant() -> None:
    for name, accountant in (("rdp", RDPAccountant()), ("prv", PRVAccountant())):
        for _ in range(DP["steps"]):
            accountant.step(noise_multiplier=1.1, sample_rate=DP["sample_rate"])
        dp = DPSGD(1.1, accountant=name, **DP)
        assert dp.epsilon == pytest.approx(accountant.get_epsilon(delta=DP["delta"]), rel=1e-9)
        assert dp.privacy() == (dp.epsilon, DP["delta"])
    # the inverse: Opacus' helper gives the noise multiplier, and the resulting epsilon meets the target
    dp = DPSGD.for_epsilon(4.0, **DP)
    want = get_noise_multiplier(
        target_epsilon=4.0, target_delta=DP["delta"], sample_rate=DP["sample_rate"], steps=DP["steps"]
    )
    assert dp.noise_multiplier == want
    assert 3.9 < dp.epsilon <= 4.0
    assert describe_defense(dp)["epsilon"] == dp.epsilon


def test_an_accountant_that_runs_out_of_memory_is_one_error(monkeypatch) -> None:
    # PRV at noise 0.3, rate 0.5 and 100,000 steps asks numpy for 444 GiB; simulated so that no machine tries it
    def out_of_memory(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 444. GiB for an array with shape (59579907654,)")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", out_of_memory)
    with pytest.raises(ValueError, match=r"PRV accountant cannot evaluate these settings .* use accountant='rdp'"):
        DPSGD(0.3, accountant="prv", **DP)


def test_dp_update_is_clipped_mean_plus_noise_of_stated_std(clf4, batch4) -> None:
    """Opacus' update = mean of per-sample gradients clipped to C, plus N(0, (sigma C / B)^2) per entry (we average)."""
    x, y = batch4
    c, sigma, b = 1.0, 0.5, len(x)
    # deterministic part: per-sample gradients by hand, each clipped to C, averaged
    per_sample = [flat(client_gradients(clf4, x[i : i + 1], y[i : i + 1])) for i in range(b)]
    assert min(np.linalg.norm(g) for g in per_sample) > c  # clipping is active
    clipped_mean = np.mean([g * min(1.0, c / np.linalg.norm(g)) for g in per_sample], axis=0)
    almost_noiseless = flat(client_gradients(clf4, x, y, defense=DPSGD(1e-9, **{**DP, "max_grad_norm": c}), seed=0))
    np.testing.assert_allclose(almost_noiseless, clipped_mean, rtol=1e-4, atol=1e-6)
    # noise: the difference of two seeds is N(0, 2 (sigma C / B)^2) per entry (15k entries: std within ~1%)
    dp = DPSGD(sigma, **{**DP, "max_grad_norm": c})
    first, second = (flat(client_gradients(clf4, x, y, defense=dp, seed=s)) for s in (1, 2))
    measured = np.std(first - second) / math.sqrt(2)
    assert measured == pytest.approx(sigma * c / b, rel=0.03)  # not sigma*C (sum) nor sigma*C/sqrt(B)
    assert abs(np.mean(first - clipped_mean)) < 4 * sigma * c / b / math.sqrt(first.size)
    np.testing.assert_array_equal(first, flat(client_gradients(clf4, x, y, defense=dp, seed=1)))  # seeded


def test_dp_rejects_batchnorm_with_opacus_message(batch4) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(3600, 10)
    )
    clf = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 32, 32), 10, clip_values=(0.0, 1.0))
    with pytest.raises(
        ValueError,
        match=r"BatchNorm cannot support training with differential privacy.*"
        r"ModuleValidator.fix\(model\).*GroupNorm",
    ):
        client_gradients(clf, *batch4, defense=DPSGD(1.0, **DP))


def test_dp_dropout_masks_follow_the_seed_and_leave_the_global_generator_alone(batch4) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(1024, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 10)
    )
    clf = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), (1, 32, 32), 10, clip_values=(0.0, 1.0))
    dp = DPSGD(1e-4, **DP)  # noise too small to hide the masks: the copy runs in train mode, its dropout active
    state = torch.get_rng_state()
    runs = [client_gradients(clf, *batch4, defense=dp, seed=s) for s in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert np.abs(runs[0][1] - runs[2][1]).max() > 1e-2  # other masks, not only other noise (about 1e-4 / 4)


@pytest.mark.filterwarnings("ignore:Optimal order")
def test_prv_is_never_asked_where_its_grid_outgrows_memory() -> None:
    # Opacus' own PRV search runs out of 4 GB here (it tries noise far below the answer); ours stays above RDP's
    # noise for epsilon 100, and lands within the tolerance below the target
    dp = DPSGD.for_epsilon(8.0, 1.0, 0.01, 1000, 1e-5, accountant="prv")
    accountant = PRVAccountant()
    accountant.history = [(dp.noise_multiplier, 0.01, 1000)]
    assert 7.99 <= dp.epsilon <= 8.0 and dp.epsilon == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    with pytest.raises(ValueError, match=r"epsilon is about 1e\+06, above 100 .* use accountant='rdp'"):
        DPSGD.for_epsilon(1e6, 1.0, 0.01, 100, 1e-5, accountant="prv")
    with pytest.raises(ValueError, match=r"epsilon is about .*, above 100 .* use accountant='rdp'"):
        DPSGD(0.05, 1.0, 0.01, 100, 1e-5, accountant="prv")


def test_privacy_epsilon_defaults_to_rdp_and_checks_its_inputs() -> None:
    from opacus.accountants import RDPAccountant

    from art_gifd.defenses import privacy_epsilon

    accountant = RDPAccountant()
    accountant.history = [(1.0, 0.01, 1000)]
    assert privacy_epsilon(1.0, 0.01, 1000, 1e-5) == accountant.get_epsilon(delta=1e-5)
    for args, message in [
        ((0.0, 0.01, 10, 1e-5), "noise_multiplier must lie in"),
        ((1.0, 1.5, 10, 1e-5), "sample_rate must lie in"),
        ((1.0, 0.01, "10", 1e-5), "steps must be a positive integer"),
        ((1.0, 0.01, 10, 1e-5, "gdp"), "Unknown accountant 'gdp'"),
    ]:
        with pytest.raises(ValueError, match=message):
            privacy_epsilon(*args)


# --- transforms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.29, 0.5, 0.9, 0.99])  # 0.29 · 100 is 28.999… in floating point
def test_pruning_zeroes_exactly_the_stated_fraction(clf4, batch4, clean4, ratio) -> None:
    assert all(np.count_nonzero(g) == g.size for g in clean4)
    layer = client_gradients(clf4, *batch4, defense=Prune(ratio))
    for pruned, g in zip(layer, clean4, strict=True):
        assert g.size - np.count_nonzero(pruned) == math.floor(Fraction(str(ratio)) * g.size)
        kept = pruned != 0
        np.testing.assert_array_equal(pruned[kept], g[kept])
        if (~kept).any() and kept.any():
            assert np.abs(g[kept]).min() >= np.abs(g[~kept]).max()  # the smallest magnitudes went
    pruned = flat(client_gradients(clf4, *batch4, defense=Prune(ratio, scope="global")))
    assert pruned.size - np.count_nonzero(pruned) == math.floor(Fraction(str(ratio)) * pruned.size)
    assert np.abs(pruned[pruned != 0]).min() >= np.abs(flat(clean4)[pruned == 0]).max()


def test_clipping_bounds_the_norm(clf4, batch4, clean4) -> None:
    norm = np.linalg.norm(flat(clean4))
    clipped = flat(client_gradients(clf4, *batch4, defense=Clip(norm / 10)))
    assert np.linalg.norm(clipped) == pytest.approx(norm / 10, rel=1e-5)
    np.testing.assert_allclose(clipped, flat(clean4) / 10, rtol=1e-4, atol=1e-8)  # direction kept
    np.testing.assert_array_equal(flat(client_gradients(clf4, *batch4, defense=Clip(norm * 2))), flat(clean4))


@pytest.mark.parametrize(("defense", "kurtosis"), [(GaussianNoise(0.1), 3.0), (LaplacianNoise(0.1), 6.0)])
def test_additive_noise_has_stated_std(clf4, batch4, clean4, defense, kurtosis) -> None:
    noise = flat(client_gradients(clf4, *batch4, defense=defense, seed=0)) - flat(clean4)
    assert np.std(noise) == pytest.approx(0.1, rel=0.03)
    assert np.mean(noise**4) / np.var(noise) ** 2 == pytest.approx(kurtosis, rel=0.15)


def test_quantisation_and_sign_compression(clf4, batch4, clean4) -> None:
    for quantised, g in zip(client_gradients(clf4, *batch4, defense=Quantize(3)), clean4, strict=True):
        scale = np.abs(g).max() / 3
        assert len(np.unique(quantised)) <= 7
        np.testing.assert_allclose(quantised / scale, np.round(quantised / scale), atol=1e-4)
        assert np.abs(quantised - g).max() <= scale / 2 + 1e-6
    for signed, g in zip(client_gradients(clf4, *batch4, defense=SignCompression()), clean4, strict=True):
        np.testing.assert_allclose(signed, np.sign(g) * np.abs(g).mean(), rtol=1e-6)


def test_soteria_prunes_representation_columns(clf4, batch4, clean4) -> None:
    sot = client_gradients(clf4, *batch4, defense=Soteria("7", 0.6))
    head = sot[-2]  # 7.weight: (10, 768)
    zero_columns = np.flatnonzero(~head.any(axis=0))
    assert len(zero_columns) == math.floor(0.6 * 768)
    np.testing.assert_array_equal(np.delete(head, zero_columns, axis=1), np.delete(clean4[-2], zero_columns, axis=1))
    for a, b in zip(sot[:-2] + sot[-1:], clean4[:-2] + clean4[-1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_soteria_on_a_token_wise_linear_layer_is_named() -> None:
    class Tokens(torch.nn.Module):  # its layer 'tok' reads 4 vectors per sample
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.head = torch.nn.Linear(16, 8), torch.nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.tok(x.reshape(len(x), 4, 16)).flatten(1))

    torch.manual_seed(0)
    clf = make_classifier(Tokens(), (1, 8, 8), 3)
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"layer 'tok' reads an input of shape \(1, 4, 16\) per sample, not one"):
        client_gradients(clf, x, [0, 1], defense=Soteria("tok", 0.5))


def test_soteria_scores_do_not_depend_on_the_chunk_size(clf4, batch4) -> None:
    target = TargetModel(clf4)
    x, y = batch4
    context = DefenseContext(target, torch.as_tensor(x), torch.as_tensor(y), torch.Generator().manual_seed(0))
    whole = Soteria("7", 0.6, chunk_size=None).feature_scores(context)
    chunked = Soteria("7", 0.6, chunk_size=7).feature_scores(context)  # 768 features: 110 chunks, the last of 5
    assert torch.isfinite(whole).sum() > 0
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        Soteria("7", 0.6, chunk_size=0)


def test_compose_applies_in_order(clf4, batch4, clean4) -> None:
    sigma = 0.01
    clip_then_noise = flat(client_gradients(clf4, *batch4, defense=Compose([Clip(1.0), GaussianNoise(sigma)]), seed=3))
    noise_then_clip = flat(client_gradients(clf4, *batch4, defense=Compose([GaussianNoise(sigma), Clip(1.0)]), seed=3))
    assert np.linalg.norm(noise_then_clip) == pytest.approx(1.0, rel=1e-5)
    assert np.linalg.norm(clip_then_noise) == pytest.approx(math.sqrt(1 + sigma**2 * clip_then_noise.size), rel=0.02)
    clipped = flat(clean4) / np.linalg.norm(flat(clean4))
    noise = flat(client_gradients(clf4, *batch4, defense=GaussianNoise(sigma), seed=3)) - flat(clean4)
    np.testing.assert_allclose(clip_then_noise, clipped + noise, atol=1e-5)
    # under FedAvg only a leading DP-SGD acts on every local step, however the defences are nested
    training = LocalTraining(0.05, steps=3)
    flat_compose = Compose([DPSGD(1.0, **DP), Clip(0.01)])
    nested = Compose([Compose([DPSGD(1.0, **DP), Clip(0.01)])])
    updates = [flat(client_update(clf4, *batch4, training, defense=d, seed=1)) for d in (flat_compose, nested)]
    np.testing.assert_array_equal(updates[0], updates[1])
    assert np.linalg.norm(updates[1]) == pytest.approx(0.01, rel=1e-5)  # the clip acts on the final update
    # plain callables are defences too (the simplest custom defence)
    doubled = client_gradients(clf4, *batch4, defense=lambda grads: [2 * g for g in grads])
    np.testing.assert_allclose(flat(doubled), 2 * flat(clean4))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GaussianNoise(-0.1), r"sigma must lie in \[0, inf\), got -0.1"),
        (lambda: LaplacianNoise(float("nan")), "sigma must be a finite number"),
        (lambda: Prune(1.0), r"ratio must lie in \[0, 1\), got 1.0"),
        (lambda: Prune(0.5, scope="row"), "Unknown pruning scope 'row'"),
        (lambda: Clip(0.0), r"max_norm must lie in \[1e-15, 1e\+15\]"),
        (lambda: Quantize(1), r"bits must be an integer in \[2, 16\]"),
        (lambda: DPSGD(1.0, **{**DP, "delta": 0.5}), r"delta must lie in \(0, 0.01\], got 0.5"),
        (lambda: DPSGD(-1.0, **DP), r"noise_multiplier must lie in \[1e-12, 1e\+06\]"),
        (lambda: DPSGD(1.0, **{**DP, "sample_rate": 2.0}), r"sample_rate must lie in \(0, 1\]"),
        (lambda: DPSGD(1.0, **{**DP, "steps": 0}), "steps must be a positive integer"),
        (lambda: DPSGD(1.0, accountant="moments", **DP), "Unknown accountant 'moments'"),
        (lambda: DPSGD.for_epsilon(0.0, **DP), r"epsilon must lie in \(0, 1e\+06\]"),
        (lambda: Soteria(None, 0.5), "Soteria needs the representation layer named"),
        (lambda: Compose([]), "non-empty list"),
        (lambda: Compose([Clip(1.0), DPSGD(1.0, **DP)]), "DPSGD recomputes the update .* put it first"),
        (lambda: FunctionDefense(3), "must be a Defense or a callable"),
    ],
)
def test_bad_parameters_give_clear_errors(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_soteria_layer_must_run_once_per_sample(batch4) -> None:
    class Auxiliary(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = lenet(seed=0)
            self.aux = torch.nn.Linear(10, 10)  # an auxiliary head the forward pass never calls

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    clf = make_classifier(Auxiliary(), (1, 32, 32))
    with pytest.raises(ValueError, match=r"Soteria's layer 'aux' never runs in the model's forward pass"):
        client_gradients(clf, *batch4, defense=Soteria("aux", 0.5))


def test_unknown_representation_layer(clf4, batch4) -> None:
    with pytest.raises(ValueError, match=r"Unknown layer 'fc' for Soteria.*linear layers are \['7'\]"):
        client_gradients(clf4, *batch4, defense=Soteria("fc", 0.5))
    with pytest.raises(ValueError, match="Unknown layer '1' for Soteria"):  # a Sigmoid, not a Linear
        Soteria("1", 0.5).linear(clf4.model)
    with pytest.raises(ValueError, match=r"defense must be an art_gifd\.defenses\.Defense"):
        InvertingGradientsAttack(clf4, defense="prune")


ALL_DEFENSES = [
    Prune(0.9),
    Clip(1.0),
    Quantize(4),
    SignCompression(),
    GaussianNoise(1e-2),
    Soteria("7", 0.5),
    DPSGD(1.0, **DP),
    Compose([DPSGD(1.0, **DP), Prune(0.5)]),
]


@pytest.mark.parametrize("training", [True, False])
def test_user_model_and_estimator_unchanged(batch4, training) -> None:
    net = lenet(seed=1).train(training)
    clf = make_classifier(net, (1, 32, 32))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = batch4
    for defense in ALL_DEFENSES:
        client_gradients(clf, x, y, defense=defense, seed=0)
    data = (x, y, x, y)
    measure_utility(Compose([DPSGD(1.0, **DP), Soteria("7", 0.5)]), clf, data, rounds=2, batch_size=2, probe_batches=1)
    assert net.training is training and clf.model is net
    assert all(p.requires_grad for p in net.parameters())
    assert not any(hasattr(p, "grad_sample") or p.grad is not None for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# --- adaptive attacker ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("defense", [Prune(0.9), Prune(0.99, scope="global"), Soteria("7", 0.8), Quantize(3)])
def test_adaptive_matching_loss_of_true_image_is_zero(heldout, defense) -> None:
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    x, y = heldout[0][:1], heldout[1][:1]
    observed = client_gradients(clf, x, y, defense=defense)
    target = TargetModel(clf)
    images = torch.as_tensor(np.concatenate([x, np.random.default_rng(0).random(x.shape, dtype=np.float32)]))
    images.requires_grad_(True)
    adaptive, plain = (
        GradientMatcher(target, target.as_gradient_list(observed), torch.as_tensor(y), "cosine", defense=d)
        for d in (defense, None)
    )
    assert adaptive.adaptive and not plain.adaptive
    loss = adaptive.loss(images)
    assert loss[0].item() < 1e-5 < 1e-2 < plain.loss(images)[0].item()
    assert loss[1].item() > 1e-4  # a random image does not match
    loss.sum().backward()
    assert images.grad[1].abs().sum() > 0  # differentiable (straight-through for quantisation)


def test_utility_accuracy_is_measured_in_eval_mode_whatever_mode_clients_train_in(heldout) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(1024, 64), torch.nn.Dropout(0.5), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    clf = make_classifier(net, (1, 32, 32))
    data = (heldout[0][:40], heldout[1][:40], heldout[0][40:], heldout[1][40:])
    measured = [
        measure_utility(None, clf, data, rounds=0, batch_size=8, train_mode=mode) for mode in (True, True, False)
    ]
    eval_accuracy = float(np.mean(clf.predict(data[2]).argmax(1) == data[3]))
    assert [m.initial_accuracy for m in measured] == [eval_accuracy] * 3  # no dropout masks in the score


@pytest.mark.parametrize("pruning", [Prune(0.9), Prune(0.99, scope="global"), Soteria("7", 0.8)])
def test_adaptive_replay_finds_the_pruning_mask_under_later_noise(heldout, pruning) -> None:
    # noise applied after the pruning leaves no zeros to read the mask from: the replay keeps the largest entries
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    x, y = heldout[0][:1], heldout[1][:1]
    defense = Compose([pruning, GaussianNoise(1e-3)])
    observed = client_gradients(clf, x, y, defense=defense, seed=0)
    assert not any((g == 0).any() for g in observed)
    target = TargetModel(clf)
    adaptive, plain = (
        GradientMatcher(target, target.as_gradient_list(observed), torch.as_tensor(y), "cosine", defense=d)
        for d in (defense, None)
    )
    images = torch.as_tensor(x)
    # measured 1e-5 to 5e-5 (the noise alone) against 0.10 to 0.60 without the replay
    assert adaptive.loss(images).item() < 1e-4 < 0.05 < plain.loss(images).item()


def test_results_say_whether_the_attack_was_adaptive(lenet_clf, heldout, default_prior) -> None:
    x, y = heldout[0][:1], heldout[1][:1]
    budget = Budget(steps_per_stage=2, stages=2, num_restarts=1)
    for defense, adaptive in ((Prune(0.5), True), (GaussianNoise(1e-3), False), (None, False)):
        grads = client_gradients(lenet_clf, x, y, defense=defense, seed=0)
        for name in ("gifd", "pixel"):
            attack = build_attack(name, lenet_clf, default_prior, budget, 1, 0, defense=defense, verbose=False)
            assert attack.reconstruct(grads, y).extra["adaptive"] is adaptive
    record = describe_defense(DPSGD(1.0, **DP), adaptive=True)
    assert record["name"] == "dp-sgd" and record["adaptive"] is False and record["delta"] == DP["delta"]
    assert describe_defense(Prune(0.5), adaptive=True)["adaptive"] is True
    assert describe_defense(None) == {"name": "none", "params": {}, "epsilon": None, "delta": None, "adaptive": False}


# --- utility --------------------------------------------------------------------------------------------------------


def test_measure_utility_is_seeded_and_measures_the_cost(heldout) -> None:
    x, y = heldout
    data = (x[:600], y[:600], x[600:], y[600:])
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    kwargs = {"rounds": 80, "batch_size": 16, "learning_rate": 0.05, "probe_batches": 2, "seed": 2}
    clean = measure_utility(None, clf, data, **kwargs)
    assert clean.gradient_cosine == pytest.approx(1.0)
    assert clean.accuracy > clean.initial_accuracy + 0.15  # the short run trains
    noisy = measure_utility(GaussianNoise(1.0), clf, data, **kwargs)
    assert noisy.gradient_cosine < 0.2 and noisy.accuracy < clean.accuracy - 0.1
    again = measure_utility(GaussianNoise(1.0), clf, data, **kwargs)
    assert (again.gradient_cosine, again.accuracy) == (noisy.gradient_cosine, noisy.accuracy)
    assert isinstance(GaussianNoise(1.0), Defense) and set(noisy.as_dict()) >= {"gradient_cosine", "accuracy"}
    with pytest.raises(ValueError, match=r"rounds must be an integer in \[0, 1000000\]"):
        measure_utility(None, clf, data, rounds=-1)
    with pytest.raises(
        ValueError, match=r"probe_batches must be a positive integer \(at most 100000\), got 1000000000"
    ):
        measure_utility(None, clf, data, probe_batches=10**9)


def _bad_utility_data(x: np.ndarray, y: np.ndarray, which: str) -> tuple:
    """Eight training and eight test images of ``x``, one of them spoilt as ``which`` says."""
    x_train, x_test = x[:8].copy(), x[8:16].copy()
    if which == "uint8":
        x_train = (x_train * 255).astype(np.uint8)
    elif which == "nan":
        x_train[0, 0, 0, 0] = np.nan
    else:
        x_test = x_test * 2 - 1
    return x_train, y[:8], x_test, y[8:16]


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("uint8", r"x_train spans \[0, 255\] but the estimator's clip_values are \[0, 1\]: scale the images"),
        ("nan", "x_train contains NaN or infinite values"),
        ("minus_one", r"x_test spans \[-1, 1\] but the estimator's clip_values"),
    ],
)
def test_measure_utility_refuses_data_outside_the_input_range(heldout, clf4, which, message) -> None:
    data = _bad_utility_data(*heldout, which)
    with pytest.raises(ValueError, match=message):
        measure_utility(None, clf4, data, rounds=1, batch_size=2, probe_batches=1)


@pytest.mark.parametrize("seed", [-1, 1.5, True, 2**63])
def test_measure_utility_checks_the_seed(heldout, clf4, seed) -> None:
    x, y = heldout
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9223372036854775807\]"):
        measure_utility(None, clf4, (x[:8], y[:8], x[8:16], y[8:16]), rounds=1, batch_size=2, seed=seed)


def test_experiment_records_the_defence(default_prior) -> None:
    from art_gifd.experiment import Case, Experiment, run_experiment

    case = Case("lenet", "mnist32", 1, 1, offset=500, defense=Prune(0.9), adaptive=True)
    experiment = Experiment([case], ("pixel",), Budget(steps_per_stage=2, stages=1, num_restarts=1), verbose=False)
    (run,) = run_experiment(experiment, default_prior, "mnist32")
    assert run["defense"] == {
        "name": "prune",
        "params": {"ratio": 0.9, "scope": "layer"},
        "epsilon": None,
        "delta": None,
        "adaptive": True,
    }
