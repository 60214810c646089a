"""The search choices of the core: scale-consistent priors, latent constraints, successive halving of restarts and
the one-candidate gradient path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_gifd import GIFDAttack, client_gradients
from art_gifd.attacks import GGLAttack, GIASAttack
from art_gifd.attacks.base import MAX_POPULATION
from art_gifd.attacks.core import GradientMatcher, Objective, image_norm, total_variation
from art_gifd.federated import TargetModel
from art_gifd.priors.base import project_latent
from art_gifd.priors.dcgan import DCGANGenerator


def _objective(clf, grads, labels, **weights) -> Objective:
    target = TargetModel(clf)
    matcher = GradientMatcher(target, target.as_gradient_list(grads), torch.as_tensor(labels), "cosine")
    return Objective(matcher, **weights)


def test_priors_are_per_image_means_averaged_over_the_batch(lenet_clf, heldout) -> None:
    x = torch.as_tensor(heldout[0][:4])
    one = _objective(lenet_clf, client_gradients(lenet_clf, x[:1].numpy(), heldout[1][:1]), heldout[1][:1])
    four = _objective(lenet_clf, client_gradients(lenet_clf, x.numpy(), heldout[1][:4]), heldout[1][:4])
    for weights in ({"tv_weight": 1e-2, "norm_weight": 0.0}, {"tv_weight": 0.0, "norm_weight": 1e-2}):
        for objective in (one, four):
            objective.tv_weight, objective.norm_weight = weights["tv_weight"], weights["norm_weight"]
        # four copies of an image carry the same prior as the image alone: the batch is averaged, not summed
        reg_one = one(x[:1])[0] - one(x[:1])[1]
        reg_four = four(x[:1].repeat(4, 1, 1, 1))[0] - four(x[:1].repeat(4, 1, 1, 1))[1]
        torch.testing.assert_close(reg_four, reg_one)
    # the norm is a mean over elements: the same for an image and its 2x nearest-neighbour upsampling, and for
    # every channel count
    up = torch.nn.functional.interpolate(x[:1], scale_factor=2, mode="nearest")
    for form in ("mean_square", "rms"):
        torch.testing.assert_close(image_norm(up, form), image_norm(x[:1], form))
        torch.testing.assert_close(image_norm(x[:1].repeat(1, 3, 1, 1), form), image_norm(x[:1], form))
    torch.testing.assert_close(total_variation(x[:1].repeat(1, 3, 1, 1)), total_variation(x[:1]))
    with pytest.raises(ValueError, match="Unknown norm form 'l1'"):
        image_norm(x, "l1")


def test_latent_projections() -> None:
    z = torch.randn(5, 64, 1, 1, generator=torch.Generator().manual_seed(0)) * 3
    sphere = project_latent(z, "sphere")
    torch.testing.assert_close(sphere.flatten(1).norm(dim=1), torch.full((5,), 8.0))
    torch.testing.assert_close(
        sphere / sphere.flatten(1).norm(dim=1)[:, None, None, None], z / z.norm(dim=1, keepdim=True)
    )
    assert project_latent(z, "box", 0.8).abs().max() <= 0.8
    assert project_latent(z, "none") is z
    with pytest.raises(ValueError, match="needs a positive bound"):
        project_latent(z, "box")
    with pytest.raises(ValueError, match="Unknown latent constraint 'ball'"):
        project_latent(z, "ball")


def test_priors_declare_their_latent_constraint(default_prior) -> None:
    assert default_prior.latent_constraint == "sphere"
    from art_gifd.priors.stylegan2 import StyleGAN2Generator

    assert StyleGAN2Generator.latent_constraint == "none"  # w+ packed with noise maps: no sphere applies


class _Recording(DCGANGenerator):
    """A DCGAN that records the latent codes it decodes."""

    def __init__(self) -> None:
        super().__init__(nz=16, ngf=8, nc=1, image_size=32)
        self.latents: list[torch.Tensor] = []

    def forward_blocks(self, h, start, stop, labels=None):
        if start == 0 and stop == self.num_blocks:
            # GIAS decodes per image under vmap: unwrap the batched tensor to record the codes it holds
            codes = torch._C._functorch.get_unwrapped(h) if torch._C._functorch.is_batchedtensor(h) else h
            self.latents.append(codes.detach().clone().reshape(-1, self.nz))
        return super().forward_blocks(h, start, stop, labels)


@pytest.mark.parametrize("attack_class", [GIFDAttack, GIASAttack, GGLAttack])
def test_every_generative_search_keeps_the_latent_on_the_sphere(attack_class, lenet_clf, heldout) -> None:
    prior = _Recording().freeze()
    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    steps = {"max_iter": 3} if attack_class is GGLAttack else {"steps_per_stage": 3}
    extra = {"max_stage": 1} if attack_class is GIFDAttack else {}
    attack = attack_class(lenet_clf, prior, num_restarts=2, seed=0, verbose=False, **steps, **extra)
    attack.infer(grads, y=heldout[1][:1])
    norms = torch.cat([z.flatten(1).norm(dim=1) for z in prior.latents])
    torch.testing.assert_close(norms, torch.full_like(norms, 4.0))  # sqrt(16)
    prior.latents.clear()
    attack.set_params(latent_constraint="none")
    attack.infer(grads, y=heldout[1][:1])
    norms = torch.cat([z.flatten(1).norm(dim=1) for z in prior.latents])
    assert (norms - 4.0).abs().max() > 1e-2


def test_feature_stages_continue_only_the_best_restarts(lenet_clf, heldout, default_prior) -> None:
    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    kwargs = {"steps_per_stage": 10, "num_restarts": 4, "seed": 0, "verbose": False}
    result = GIFDAttack(lenet_clf, default_prior, feature_restarts=1, **kwargs).reconstruct(grads, heldout[1][:1])
    losses = result.stage_losses
    assert losses.shape == (4, 4) and np.isfinite(losses[0]).all()
    kept = int(np.argmin(losses[0]))
    assert np.isfinite(losses[1:, kept]).all() and np.isinf(np.delete(losses[1:], kept, axis=1)).all()
    assert result.best_restart == kept and result.extra["feature_restarts"] == [1, 1, 1]
    assert result.best_loss == pytest.approx(losses.min())
    two = GIFDAttack(lenet_clf, default_prior, feature_restarts=2, **kwargs).reconstruct(grads, heldout[1][:1])
    assert set(np.flatnonzero(np.isfinite(two.stage_losses[1]))) == set(np.argsort(losses[0])[:2])
    assert GIFDAttack(lenet_clf, default_prior, num_restarts=4).restart_schedule() == [4, 4, 4]  # the default
    halved = GIFDAttack(lenet_clf, default_prior, num_restarts=3, feature_restarts="halving")
    assert halved.restart_schedule() == [3, 2, 1]
    every = GIFDAttack(lenet_clf, default_prior, feature_restarts=None, **kwargs).reconstruct(grads, heldout[1][:1])
    assert np.isfinite(every.stage_losses).all()
    # the latent stage is the same search whatever is carried on
    np.testing.assert_allclose(every.stage_losses[0], losses[0], rtol=1e-5)
    # halving after every stage: each stage continues the best of the stage before
    halving = GIFDAttack(lenet_clf, default_prior, feature_restarts=(4, 2, 1), **kwargs).reconstruct(
        grads, heldout[1][:1]
    )
    table = halving.stage_losses
    assert [int(np.isfinite(row).sum()) for row in table] == [4, 4, 2, 1]
    assert set(np.flatnonzero(np.isfinite(table[2]))) == set(np.argsort(table[1])[:2])
    assert np.flatnonzero(np.isfinite(table[3])).tolist() == [
        int(np.nanargmin(np.where(np.isfinite(table[2]), table[2], np.nan)))
    ]


def test_one_candidate_gradient_equals_the_vmapped_one(lenet_clf, heldout) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    grads = client_gradients(lenet_clf, x, y)
    target = TargetModel(lenet_clf)
    matcher = GradientMatcher(target, target.as_gradient_list(grads), torch.as_tensor(y), "cosine")
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    plain = matcher.loss(images)
    (plain_grad,) = torch.autograd.grad(plain.sum(), images)
    stacked = images.reshape(1, 2, 1, 32, 32)
    vmapped = matcher._grads_hard(
        target.params, target.preprocess(stacked.reshape(2, 1, 32, 32)).reshape(stacked.shape), matcher.labels
    )
    flat = torch.cat([vmapped[n].flatten(1) for n in matcher.observed], dim=1)
    unit = flat / flat.norm(dim=1, keepdim=True)
    reference = 0.5 * (unit - matcher.observed_flat / matcher.observed_norm).pow(2).sum(dim=1)
    (reference_grad,) = torch.autograd.grad(reference.sum(), images)
    torch.testing.assert_close(plain, reference, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(plain_grad, reference_grad, rtol=1e-4, atol=1e-9)
    with torch.no_grad():  # evaluation without a graph works on both paths
        torch.testing.assert_close(matcher.loss(images), plain.detach())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_restarts": 0}, "feature_restarts must be 'halving', a positive integer, one per feature stage"),
        ({"feature_restarts": "all"}, "feature_restarts must be 'halving'"),
        ({"feature_restarts": (2, 1)}, "feature_restarts has 2 counts but the search has 3 feature stages"),
        ({"feature_restarts": (1, 2, 2)}, "feature_restarts must not increase"),
        (
            {"feature_restarts": 5, "num_restarts": 1},
            r"feature_restarts=5 carries more restarts than the search has \(num_restarts=1\)",
        ),
        ({"feature_restarts": 10**30}, r"feature_restarts=10+ carries more restarts than the search has"),
        ({"feature_restarts": (8, 4, 2)}, r"feature_restarts=\(8, 4, 2\) carries more .* \(num_restarts=4\)"),
        ({"latent_constraint": "ball"}, "Unknown latent_constraint 'ball'"),
        ({"latent_constraint": "box"}, "needs a prior with a latent_bound"),
        ({"norm_form": "l1"}, "Unknown norm_form 'l1'"),
        ({"schedule": "linear"}, "Unknown schedule 'linear'"),
    ],
)
def test_bad_search_parameters(lenet_clf, default_prior, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GIFDAttack(lenet_clf, default_prior, **kwargs)
    attack = GIFDAttack(lenet_clf, default_prior)
    with pytest.raises(ValueError, match=message):
        attack.set_params(**kwargs)


def test_feature_restarts_are_checked_against_num_restarts_whichever_is_set(lenet_clf, default_prior) -> None:
    attack = GIFDAttack(lenet_clf, default_prior, num_restarts=4, feature_restarts=2)
    with pytest.raises(ValueError, match=r"feature_restarts=2 carries more restarts .* \(num_restarts=1\)"):
        attack.set_params(num_restarts=1)
    assert attack.num_restarts == 4  # the refused value does not stay behind
    attack.set_params(num_restarts=1, feature_restarts=1)  # together: the final state is checked
    attack.set_params(num_restarts=8)
    attack.set_params(feature_restarts=8)
    assert attack.restart_schedule() == [8, 8, 8]


def test_set_params_reaches_every_new_search_parameter(lenet_clf, default_prior) -> None:
    attack = GIFDAttack(lenet_clf, default_prior)
    attack.set_params(feature_restarts=None, latent_constraint="none", norm_form="rms", schedule="constant")
    assert (attack.feature_restarts, attack.latent_constraint, attack.norm_form, attack.schedule) == (
        None,
        "none",
        "rms",
        "constant",
    )
    assert attack.resolved_latent_constraint == "none"


def test_feature_learning_rate_comes_from_the_attack_then_the_prior_then_learning_rate(lenet_clf, heldout) -> None:
    import copy

    from art_gifd.priors.embedded import load_default_prior

    x, y = heldout[0][:1], heldout[1][:1]
    grads = client_gradients(lenet_clf, x, y)
    prior = copy.deepcopy(load_default_prior())
    quick = {"max_stage": 2, "steps_per_stage": 2, "num_restarts": 1, "verbose": False, "learning_rate": 0.07}
    assert GIFDAttack(lenet_clf, prior, **quick).reconstruct(grads, y).extra["feature_learning_rate"] == 0.07
    prior.feature_learning_rate = 0.02
    assert GIFDAttack(lenet_clf, prior, **quick).reconstruct(grads, y).extra["feature_learning_rate"] == 0.02
    attack = GIFDAttack(lenet_clf, prior, feature_learning_rate=0.05, **quick)
    assert attack.reconstruct(grads, y).extra["feature_learning_rate"] == 0.05
    with pytest.raises(ValueError, match=r"feature_learning_rate must lie in \(0, 1e\+06\]"):
        attack.set_params(feature_learning_rate=-0.1)


def test_face_prior_declares_its_feature_learning_rate() -> None:
    from art_gifd.priors.faces import load_face_dcgan

    assert load_face_dcgan().feature_learning_rate == 0.03


def test_step_split_shares_the_budget_over_the_stages(lenet_clf, heldout) -> None:
    from art_gifd.attacks.gifd import split_steps

    assert split_steps(400, 4, "last-heavy") == [50, 50, 100, 200]
    assert split_steps(300, 3, "last-heavy") == [75, 75, 150]
    assert split_steps(400, 4, "equal") == [100] * 4
    assert split_steps(10, 3, (1, 1, 1)) == [4, 3, 3]
    # every stage runs a step, and the stages still share exactly the budget the other attacks get
    assert [sum(split_steps(t, 4, "last-heavy")) for t in range(4, 12)] == list(range(4, 12))
    x, y = heldout[0][:1], heldout[1][:1]
    grads = client_gradients(lenet_clf, x, y)
    attack = GIFDAttack(lenet_clf, steps_per_stage=4, num_restarts=1, step_split="last-heavy", verbose=False)
    result = attack.reconstruct(grads, y)
    assert result.extra["stage_steps"] == [2, 2, 4, 8] and result.steps == 16
    for bad, message in [("front", "Unknown step_split 'front'"), ((1, 2), "4 weights"), ((1, 1, 1, 0), "must lie")]:
        with pytest.raises(ValueError, match=message):
            attack.set_params(step_split=bad)


def test_latent_pool_starts_from_the_best_matching_draws(lenet_clf, heldout, default_prior) -> None:
    import torch

    from art_gifd.attacks.base import SearchContext
    from art_gifd.attacks.core import GradientMatcher, SearchStage, screen_pool
    from art_gifd.federated import TargetModel

    x, y = heldout[0][:2], heldout[1][:2]
    target = TargetModel(lenet_clf)
    observed = target.as_gradient_list(client_gradients(lenet_clf, x, y))
    matcher = GradientMatcher(target, observed, torch.as_tensor(y), "cosine")
    attack = GIFDAttack(lenet_clf, default_prior, num_restarts=2, batch_size=2, verbose=False)

    def context() -> SearchContext:
        return SearchContext(target, torch.as_tensor(y), 2, 2, torch.Generator().manual_seed(0), (0.0, 1.0), matcher)

    attack.set_params(latent_pool=4)
    draws = attack.initial_latent(context())
    chosen = screen_pool(SearchStage("latent", [draws], attack._decoder(0, context()), pool=4), matcher.loss).init[0]
    attack.set_params(latent_pool=1)
    pool = attack.project_latent(default_prior.sample_latent(16, generator=context().rng))
    torch.testing.assert_close(draws, pool)
    with torch.no_grad():
        losses = torch.cat([matcher.loss(attack._decoder(0, context())([part])) for part in pool.split(4)])
    best = pool.reshape(8, 2, *pool.shape[1:])[torch.argsort(losses)[:2]].reshape(chosen.shape)
    torch.testing.assert_close(chosen, best)
    for bad in (0, 2.5, "4", MAX_POPULATION + 1):
        with pytest.raises(ValueError, match="latent_pool"):
            attack.set_params(latent_pool=bad)
