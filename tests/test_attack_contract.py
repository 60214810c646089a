"""ART's attack contract for every attack: constructor names = ``attack_params``, ``set_params`` reaches each."""

from __future__ import annotations

import numpy as np
import pytest

from art_gifd.attacks import (
    DLGAttack,
    GGLAttack,
    GIASAttack,
    GIFDAttack,
    GradInversionAttack,
    IDLGAttack,
    InvertingGradientsAttack,
)
from art_gifd.attacks.generative import GenerativePriorAttack
from art_gifd.federated import client_gradients
from art_gifd.models import convnet_bn, make_classifier

ATTACKS = [DLGAttack, IDLGAttack, InvertingGradientsAttack, GradInversionAttack, GGLAttack, GIASAttack, GIFDAttack]


@pytest.fixture(scope="module")
def bn_clf():
    return make_classifier(convnet_bn(seed=0), (1, 32, 32))


def _build(cls, clf, bn_clf, embedded, **kwargs):
    if issubclass(cls, GenerativePriorAttack):
        return cls(clf, **{"prior": embedded, "verbose": False, **kwargs})
    return cls(bn_clf if cls is GradInversionAttack else clf, **{"verbose": False, **kwargs})


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.__name__)
def test_attack_params_are_constructor_arguments_and_settable(cls, lenet_clf, bn_clf, default_prior) -> None:
    attack = _build(cls, lenet_clf, bn_clf, default_prior)
    for name in cls.attack_params:
        value = getattr(attack, name)
        again = _build(cls, lenet_clf, bn_clf, default_prior, **{name: value})  # the constructor takes the name
        assert getattr(again, name) == value or value is None or name in ("prior", "defense")
        attack.set_params(**{name: value})  # and set_params reaches the attribute it came from


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.__name__)
def test_search_length_set_through_set_params_is_used_and_checked(cls, lenet_clf, bn_clf, default_prior) -> None:
    name = "max_iter" if "max_iter" in cls.attack_params else "steps_per_stage"
    attack = _build(cls, lenet_clf, bn_clf, default_prior)
    attack.set_params(**{name: 7})
    assert attack.steps_per_stage == 7 and getattr(attack, name) == 7
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer \(at most 10000000\), got 0"):
        attack.set_params(**{name: 0})


# GIFDAttack names every constructor parameter, so Python's own TypeError already names it for an unknown keyword
@pytest.mark.parametrize("cls", [c for c in ATTACKS if c is not GIFDAttack], ids=lambda c: c.__name__)
def test_the_search_length_under_the_other_name_is_refused_naming_this_attacks(
    cls, lenet_clf, bn_clf, default_prior
) -> None:
    own = "max_iter" if "max_iter" in cls.attack_params else "steps_per_stage"
    other = "steps_per_stage" if own == "max_iter" else "max_iter"
    message = rf"^{cls.__name__} takes its search length as {own} \(.+\), not {other}: pass {own}=3 instead\.$"
    with pytest.raises(ValueError, match=message):
        _build(cls, lenet_clf, bn_clf, default_prior, **{other: 3})


@pytest.mark.parametrize("cls", ATTACKS, ids=lambda c: c.__name__)
def test_each_attack_checks_its_parameters_once(cls, lenet_clf, bn_clf, default_prior, monkeypatch) -> None:
    calls = []
    original = cls._check_params
    monkeypatch.setattr(cls, "_check_params", lambda self: (calls.append(1), original(self))[1])
    _build(cls, lenet_clf, bn_clf, default_prior)
    assert len(calls) == 1


def test_registry_agrees_with_the_classes_and_maps_the_budget(lenet_clf, bn_clf, default_prior) -> None:
    from art_gifd.attacks.registry import ATTACK_REGISTRY, GENERATIVE_ATTACKS, Budget, build_attack

    assert set(GENERATIVE_ATTACKS) == {
        n for n, e in ATTACK_REGISTRY.items() if issubclass(e.cls, GenerativePriorAttack)
    }
    budget = Budget(steps_per_stage=5, stages=3, num_restarts=2)
    for name, entry in ATTACK_REGISTRY.items():
        clf = bn_clf if entry.cls is GradInversionAttack else lenet_clf
        attack = build_attack(name, clf, default_prior if entry.generative else None, budget, 1, 0, verbose=False)
        assert type(attack) is entry.cls and attack.num_restarts == 2
        total = attack.steps_per_stage * (attack.stages if name == "gifd" else 2 if name == "gias" else 1)
        assert total == (15 if name != "gias" else 14)  # every attack gets the same 15 steps (GIAS: 7 per stage)
    with pytest.raises(ValueError, match="searches a generator: give it a prior"):
        build_attack("gifd", lenet_clf, None, budget, 1, 0)
    with pytest.raises(ValueError, match="Unknown attack 'gfd'"):
        build_attack("gfd", lenet_clf, None, budget, 1, 0)


# --- what a call leaves behind: nothing in the caller's state, nothing between calls ---------------------------------


def _tiny_gifd(clf, prior=None, **kwargs):
    return GIFDAttack(clf, prior, max_stage=2, steps_per_stage=2, num_restarts=1, seed=0, verbose=False, **kwargs)


def test_one_attack_object_serves_two_threads_as_it_serves_two_calls(lenet_clf, heldout) -> None:
    """The search's state (here the class-conditional prior's generator classes) lives on a per-call copy."""
    from concurrent.futures import ThreadPoolExecutor

    from art_gifd.priors.embedded import load_default_prior

    x, y = heldout
    picks = [int(np.flatnonzero(y == c)[0]) for c in (3, 2)]
    prior = load_default_prior("mnist32-conditional").train()  # a prior the caller trains: shared, it stays theirs
    prior.requires_grad_(True)
    attack = _tiny_gifd(lenet_clf, prior)
    calls = [(client_gradients(lenet_clf, x[i : i + 1], y[i : i + 1]), y[i : i + 1]) for i in picks]
    alone = [attack.reconstruct(g, labels) for g, labels in calls]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda call: attack.reconstruct(*call), calls * 3))
    for result, expected, (_, labels) in zip(together, alone * 3, calls * 3, strict=True):
        assert result.extra["generator_labels"] == labels.tolist()
        np.testing.assert_array_equal(result.images, expected.images)
    assert prior.training and all(p.requires_grad for p in prior.parameters())  # handed back by the last search


def test_the_callers_grad_mode_rng_prior_and_warnings_are_left_as_they_were(lenet_clf, heldout) -> None:
    import warnings

    import torch

    from art_gifd.federated import client_gradients
    from art_gifd.models import convnet, lenet
    from art_gifd.priors.embedded import load_default_prior

    x, y = heldout[0][:1], heldout[1][:1]
    grads = client_gradients(lenet_clf, x, y)
    expected = _tiny_gifd(lenet_clf).infer(grads, y)
    with torch.no_grad():  # evaluation code often runs the attack inside no_grad or inference_mode
        np.testing.assert_array_equal(_tiny_gifd(lenet_clf).infer(grads, y), expected)
    with torch.inference_mode():
        np.testing.assert_array_equal(_tiny_gifd(lenet_clf).infer(grads, y), expected)
    # the caller's prior (being trained, say) keeps its mode and gradient flags
    prior = load_default_prior().train()
    prior.requires_grad_(True)
    _tiny_gifd(lenet_clf, prior).infer(grads, y)
    assert prior.training and all(p.requires_grad for p in prior.parameters())
    # building attacks, priors and the library's models draws nothing from, and reseeds nothing of, torch's generator
    torch.manual_seed(1234)
    undisturbed = torch.rand(3)
    torch.manual_seed(1234)
    _tiny_gifd(lenet_clf), lenet(seed=5), convnet(seed=5)
    assert torch.equal(torch.rand(3), undisturbed)
    # CMA-ES (GGL) samples from its own generators: numpy's global state and the warnings filters stay put
    np.random.seed(7)
    state, filters = np.random.get_state()[1].copy(), list(warnings.filters)
    ggl = [GGLAttack(lenet_clf, max_iter=2, num_restarts=1, seed=0, verbose=False).infer(grads, y) for _ in range(2)]
    assert np.array_equal(np.random.get_state()[1], state) and warnings.filters == filters
    np.testing.assert_array_equal(*ggl)


def test_gradients_read_only_big_endian_or_under_another_default_dtype(lenet_clf, heldout) -> None:
    import torch

    from art_gifd.federated import TargetModel, client_gradients

    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    target = TargetModel(lenet_clf)
    frozen = [g.copy() for g in grads]
    for g in frozen:
        g.flags.writeable = False  # e.g. np.load(..., mmap_mode="r")
    expected = target.as_gradient_list(grads)
    for variant in (frozen, [g.astype(">f4") for g in grads]):
        assert all(torch.equal(a, b) for a, b in zip(target.as_gradient_list(variant), expected, strict=True))
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(ValueError, match=r"default dtype is float64 .*torch\.set_default_dtype\(torch\.float32\)"):
            client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_train_mode_batchnorm_update_attacked_in_eval_mode_is_named(bn_clf, heldout, caplog) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    attack = InvertingGradientsAttack(bn_clf, batch_size=2, max_iter=1, verbose=False)
    for client_train_mode, warned in ((True, True), (False, False)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            attack.infer(client_gradients(bn_clf, x, y, train_mode=client_train_mode), y)
        assert ("looks computed with BatchNorm in train mode" in caplog.text) is warned
        assert not warned or "the gradient of 0.bias, 3.bias, 6.bias, which vanishes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the attack replaying train mode, as it should
        attack.set_params(train_mode=True)
        attack.infer(client_gradients(bn_clf, x, y, train_mode=True), y)
    assert "looks computed" not in caplog.text
