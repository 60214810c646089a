"""
label_mapping="auto": a class-conditional generator whose classes are a known permutation of the task's digits.

The generator is built, not trained: class ``c`` is the embedded MNIST prior around a latent code that it draws as
digit ``perm[c]`` (codes found by a small digit classifier trained here for a few seconds). It is a genuine
``DCGANGenerator(num_classes=10)``: its class embedding holds the codes and its first layer reads ``0.3 z + code``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from art_gifd import GIFDAttack, client_gradients
from art_gifd.attacks.label_mapping import AutoLabelMapping, map_labels
from art_gifd.data import load_mnist32
from art_gifd.models import convnet, make_classifier
from art_gifd.priors.checkpoints import load_strict
from art_gifd.priors.dcgan import DCGANGenerator

PERM = [3, 7, 0, 9, 1, 5, 8, 2, 6, 4]  # generator class c draws digit PERM[c]
INVERSE = {digit: c for c, digit in enumerate(PERM)}
SPREAD = 0.3


@pytest.fixture(scope="module")
def digit_classifier() -> nn.Module:
    """A ConvNet trained for two epochs on 2,000 training digits (a few seconds)."""
    x, y = (torch.as_tensor(a[:2000]) for a in load_mnist32("train"))
    net = convnet(seed=0)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in torch.randperm(len(x), generator=rng).split(64):
            optimiser.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            optimiser.step()
    return net.eval()


@pytest.fixture(scope="module")
def permuted_prior(digit_classifier: nn.Module, default_prior: DCGANGenerator) -> DCGANGenerator:
    z = default_prior.sample_latent(400, torch.Generator().manual_seed(1))
    with torch.no_grad():
        probabilities = torch.softmax(digit_classifier((default_prior(z) + 1) / 2), dim=1)
    codes = z[probabilities.argmax(dim=0)].reshape(10, -1)  # per digit, the code drawn most confidently as it
    conditional = DCGANGenerator(nz=64, ngf=64, nc=1, image_size=32, num_classes=10, embed_dim=64)
    state = dict(default_prior.state_dict())
    first = state["main.0.weight"]  # (nz, channels, 4, 4): the same map of 0.3 z and of the class code
    state["main.0.weight"] = torch.cat([SPREAD * first, first])
    state["embed.weight"] = codes[PERM]
    load_strict(conditional, state, "the permuted construction")
    return conditional.freeze()


def test_construction_draws_the_permuted_digits(digit_classifier, permuted_prior, heldout) -> None:
    x, y = heldout
    with torch.no_grad():
        accuracy = (digit_classifier(torch.as_tensor(x)).argmax(dim=1) == torch.as_tensor(y)).float().mean()
        classes = torch.arange(10).repeat_interleave(20)
        images = permuted_prior(permuted_prior.sample_latent(200, torch.Generator().manual_seed(2)), classes)
        drawn = digit_classifier((images + 1) / 2).argmax(dim=1)
    assert accuracy > 0.8
    assert (drawn == torch.as_tensor(PERM)[classes]).float().mean() > 0.9


def test_auto_mapping_recovers_the_permutation(digit_classifier, permuted_prior, heldout) -> None:
    clf = make_classifier(digit_classifier, (1, 32, 32))
    x, y = heldout
    for digits in ([2, 7], [5], [0, 9]):
        rows = [int((y == d).nonzero()[0][0]) for d in digits]
        grads = client_gradients(clf, x[rows], y[rows])
        attack = GIFDAttack(
            clf,
            permuted_prior,
            batch_size=len(rows),
            max_stage=1,
            steps_per_stage=2,
            num_restarts=1,
            label_mapping="auto",
            seed=0,
            verbose=False,
        )
        result = attack.reconstruct(grads)  # labels inferred from the gradient, then mapped automatically
        expected = [INVERSE[int(d)] for d in sorted(digits)]
        assert result.extra["generator_labels"] == expected
        record = result.extra["label_mapping_scores"]
        assert record["scorer"] == "confidence" and record["task_labels"] == sorted(digits)
        assert record["mapping"] == {str(d): INVERSE[d] for d in digits}
        for digit, scores in zip(sorted(digits), record["scores"], strict=True):
            assert len(scores) == 10 and max(range(10), key=scores.__getitem__) == INVERSE[digit]


def test_matching_scorer_option(permuted_prior, heldout) -> None:
    from art_gifd.models import lenet

    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    x, y = heldout[0][:1], heldout[1][:1]
    spec = AutoLabelMapping(scorer="matching", candidates=[0, 4, 9], steps=3, restarts=2)
    attack = GIFDAttack(
        clf, permuted_prior, max_stage=1, steps_per_stage=1, num_restarts=1, label_mapping=spec, verbose=False
    )
    record = attack.reconstruct(client_gradients(clf, x, y), y=y).extra["label_mapping_scores"]
    assert record["scorer"] == "matching" and record["candidates"] == [0, 4, 9]
    scores = record["scores"][0]
    assert len(scores) == 3 and all(-2.0 <= s <= 0.0 for s in scores)  # minus a cosine matching loss
    assert record["mapping"][str(int(y[0]))] == [0, 4, 9][max(range(3), key=scores.__getitem__)]


@pytest.mark.parametrize("scorer", ["confidence", "matching"])
def test_chunks_bound_the_images_decoded_at_once_and_keep_the_scores(scorer, heldout) -> None:
    from art_gifd.models import lenet
    from art_gifd.priors.embedded import load_default_prior

    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    x, y = heldout[0][:2], heldout[1][:2]
    grads = client_gradients(clf, x, y)
    prior = load_default_prior("mnist32-conditional")
    rows: list[int] = []  # images of every pass through the prior (its class embedding reads one class per image)
    prior.embed.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    # 10 classes: 10 × samples = 40 images to classify, or 10 × restarts × batch size = 40 restart images to search
    per_class = {"confidence": 1, "matching": 2 * 2}[scorer]
    scores = {}
    for chunk_size in (3, 7, 40):
        rows.clear()
        spec = AutoLabelMapping(scorer=scorer, steps=3, restarts=2, samples=4, chunk_size=chunk_size)
        attack = GIFDAttack(
            clf,
            prior,
            batch_size=2,
            max_stage=1,
            steps_per_stage=1,
            num_restarts=1,
            label_mapping=spec,
            seed=0,
            verbose=False,
        )
        scores[chunk_size] = attack.reconstruct(grads, y=y).extra["label_mapping_scores"]["scores"]
        assert max(rows) == max(per_class, chunk_size // per_class * per_class)
    assert len(scores[40]) == len(set(y.tolist())) and all(len(s) == 10 for s in scores[40])
    for chunk_size in (3, 7):  # chunks give the scores of one pass over all the candidates
        torch.testing.assert_close(torch.tensor(scores[chunk_size]), torch.tensor(scores[40]), rtol=1e-5, atol=1e-6)


def test_bad_label_mappings_are_rejected_up_front(lenet_clf, permuted_prior, default_prior) -> None:
    with pytest.raises(ValueError, match="the only string accepted is 'auto'"):
        GIFDAttack(lenet_clf, permuted_prior, label_mapping="best")
    with pytest.raises(ValueError, match=r"candidates must be generator classes in \[0, 9\]"):
        GIFDAttack(lenet_clf, permuted_prior, label_mapping=AutoLabelMapping(candidates=[3, 12]))
    with pytest.raises(ValueError, match=r"AutoLabelMapping\.chunk_size must be a positive integer, got 0"):
        GIFDAttack(lenet_clf, permuted_prior, label_mapping=AutoLabelMapping(chunk_size=0))
    with pytest.raises(ValueError, match="Unknown label-mapping scorer 'votes'"):
        GIFDAttack(lenet_clf, permuted_prior, label_mapping=AutoLabelMapping(scorer="votes"))
    with pytest.raises(ValueError, match="prior is not class-conditional"):
        GIFDAttack(lenet_clf, default_prior, label_mapping="auto")
    with pytest.raises(ValueError, match=r"unknown generator classes: \[\(0, True\), \(1, 10\)\]"):
        GIFDAttack(lenet_clf, permuted_prior, label_mapping={0: True, 1: 10})
    numpy_mapping = {i: np.int64(9 - i) for i in range(10)}  # numpy integers name classes as ints do
    assert GIFDAttack(lenet_clf, permuted_prior, label_mapping=numpy_mapping).label_mapping == numpy_mapping


def test_a_mapping_that_fails_or_answers_a_flag_is_named_with_its_task_label() -> None:
    labels = torch.tensor([3, 3])
    with pytest.raises(ValueError, match=r"maps task label 3 to True, a bool: a generator class is an integer index"):
        map_labels(labels, lambda t: True, 10)
    with pytest.raises(ValueError, match=r"maps task label 3 to 3\.0, a float: .* \(return a Python or numpy int\)"):
        map_labels(labels, lambda t: 3.0, 10)
    with pytest.raises(ValueError, match=r"maps task label 3 to 12, which is not a generator class in \[0, 9\]"):
        map_labels(labels, lambda t: 12, 10)
    with pytest.raises(ValueError, match=r"no entry for task label 3: its keys are strings \(such as '3'\)"):
        map_labels(labels, {"3": 4}, 10)
    with pytest.raises(ValueError, match=r"label_mapping raised KeyError\(3\) for task label 3"):
        map_labels(labels, lambda t: {0: 1}[t], 10)
    assert map_labels(labels, {3: np.int64(4)}, 10).tolist() == [4, 4]
