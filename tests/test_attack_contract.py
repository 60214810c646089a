"""ART's attack contract for every attack: constructor names = ``attack_params``, ``set_params`` reaches each."""

from __future__ import annotations

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
