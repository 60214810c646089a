"""FedAvg: the client's local training (client_update), its differentiable replay, and attacks on weight updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_gifd import GIFDAttack, InvertingGradientsAttack, LocalTraining, client_gradients, client_update
from art_gifd.attacks.core import GradientMatcher
from art_gifd.defenses import DPSGD, Clip, Compose, GaussianNoise
from art_gifd.federated import TargetModel, simulate_update, split_defense
from art_gifd.labels import infer_labels
from art_gifd.metrics import match_images, psnr
from art_gifd.models import lenet, make_classifier


@pytest.fixture(scope="module")
def digits(heldout) -> tuple[np.ndarray, np.ndarray]:
    x, y = heldout
    return x[600:604], y[600:604]


def _hand_written(x, y, epochs, batch, order_seed, make_optimizer) -> list[np.ndarray]:
    """Plain PyTorch local training on a fresh LeNet(seed=0): epochs over shuffled mini-batches."""
    model = lenet(seed=0).eval()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model.parameters())
    rng = np.random.default_rng(order_seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            index = order[i : i + batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.as_tensor(x[index])), torch.as_tensor(y[index])).backward()
            optimizer.step()
    return [(b - p.detach()).numpy() for b, p in zip(before, model.parameters(), strict=True)]


def test_one_full_batch_sgd_step_is_the_learning_rate_times_the_fedsgd_gradient(lenet_clf, digits) -> None:
    x, y = digits
    gradient = client_gradients(lenet_clf, x, y)
    update = client_update(lenet_clf, x, y, LocalTraining(0.05, steps=1))
    for g, u in zip(gradient, update, strict=True):
        np.testing.assert_allclose(u, 0.05 * g, rtol=1e-4, atol=2e-7)  # w − (w − lr·g) in float32


@pytest.mark.parametrize(
    ("training", "make_optimizer"),
    [
        (
            LocalTraining(0.1, epochs=2, batch_size=2, momentum=0.9, weight_decay=1e-3, shuffle_seed=3),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        ),
        (
            LocalTraining(0.01, epochs=2, batch_size=2, optimizer="adam", weight_decay=1e-2, shuffle_seed=5),
            lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
        ),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_local_training_equals_a_hand_written_loop_and_its_replay(lenet_clf, digits, training, make_optimizer) -> None:
    x, y = digits
    weights = [p.detach().clone() for p in lenet_clf.model.parameters()]
    update = client_update(lenet_clf, x, y, training)
    expected = _hand_written(x, y, 2, 2, training.shuffle_seed, make_optimizer)
    for u, e in zip(update, expected, strict=True):
        np.testing.assert_allclose(u, e, rtol=1e-4, atol=1e-6)
    for before, p in zip(weights, lenet_clf.model.parameters(), strict=True):  # the user's model is untouched
        assert torch.equal(before, p.detach())
    # the attacker's differentiable replay of the true data reproduces the observed update
    target = TargetModel(lenet_clf)
    replay = simulate_update(
        target.loss, target.params, torch.as_tensor(x), torch.as_tensor(y), training, training.simulation(len(x))
    )
    for name, u in zip(target.names, update, strict=True):
        np.testing.assert_allclose(replay[name].numpy(), u, rtol=1e-3, atol=2e-6 * np.abs(u).max())


def test_matching_loss_of_the_true_images_is_zero_only_when_the_training_is_replayed(lenet_clf, digits) -> None:
    x, y = digits
    training = LocalTraining(0.1, steps=2, batch_size=2, shuffle=False)
    target = TargetModel(lenet_clf)
    observed = target.as_gradient_list(client_update(lenet_clf, x, y, training))
    labels = torch.as_tensor(y)
    images = torch.as_tensor(np.concatenate([x, x]))  # two restarts: the vmapped path, and the one-restart path
    replayed = GradientMatcher(target, observed, labels, "cosine", training=training)
    assert float(replayed.loss(images).max()) < 1e-6
    assert float(replayed.loss(images[:4]).max()) < 1e-6
    as_gradient = GradientMatcher(target, observed, labels, "cosine")
    assert float(as_gradient.loss(images).min()) > 1e-3


def test_biases_before_train_mode_batchnorm_are_left_out_of_the_matching(digits) -> None:
    """
    Their gradient vanishes in train mode, so Adam's update holds normalised round-off of random sign: matched, it
    kept the loss at the true images far from zero (1e-5 … 1e-3); left out, both paths reach float precision.
    """
    from art_gifd.models import convnet_bn

    x, y = digits
    clf = make_classifier(convnet_bn(seed=0), (1, 32, 32))
    assert TargetModel(clf).inert_parameters == ()  # in eval mode BatchNorm subtracts fixed statistics
    target = TargetModel(clf, train_mode=True)
    assert target.inert_parameters == ("0.bias", "3.bias", "6.bias")  # the convolutions' biases, each before a BN
    training = LocalTraining(0.01, epochs=2, batch_size=2, optimizer="adam", shuffle=False)
    observed = target.as_gradient_list(client_update(clf, x, y, training, train_mode=True))
    assert min(float(observed[target.names.index(n)].abs().max()) for n in target.inert_parameters) > 1e-3
    matcher = GradientMatcher(target, observed, torch.as_tensor(y), "cosine", training=training)
    images = torch.as_tensor(np.concatenate([x, x]))
    assert float(matcher.loss(images).max()) < 1e-9 and float(matcher.loss(images[:4])) < 1e-9
    attack = InvertingGradientsAttack(clf, max_iter=1, num_restarts=1, batch_size=4, training=training, train_mode=True)
    result = attack.reconstruct(observed, y)
    assert result.extra["unmatched_parameters"] == ["0.bias", "3.bias", "6.bias"]


def test_gifd_reconstructs_a_two_step_update_only_by_replaying_it(lenet_clf, digits, default_prior) -> None:
    x, y = digits
    training = LocalTraining(0.1, steps=2, batch_size=2, shuffle=False)
    update = client_update(lenet_clf, x, y, training)
    scores = {}
    for name, kwargs in [("replayed", {"training": training}), ("as gradient", {})]:
        attack = GIFDAttack(
            lenet_clf, default_prior, batch_size=4, steps_per_stage=100, num_restarts=2, seed=0, verbose=False, **kwargs
        )
        result = attack.reconstruct(update, y)
        scores[name] = float(psnr(result.images[match_images(result.images, x)], x).mean())
        if kwargs:
            assert result.extra["training"]["steps"] == 2 and result.extra["simulated_steps"] == 2
    # measured 21.6 dB replayed, 6.5 dB as a gradient
    assert scores["replayed"] > 18.5
    assert scores["replayed"] > scores["as gradient"] + 8.0


def test_experiment_loop_attacks_a_slice_with_its_seeds_and_can_leave_the_training_unreplayed(
    lenet_clf, heldout
) -> None:
    from art_gifd.attacks.registry import Budget
    from art_gifd.experiment import attack_batches, batch_seed

    x, y = heldout[0][600:604], heldout[1][600:604]
    training = LocalTraining(0.1, epochs=1, batch_size=1)  # unknown order: the client's seed shuffles it
    budget = Budget(steps_per_stage=3, stages=1, num_restarts=1)
    common = {"labels_known": True, "training": training}

    def images(x_part, y_part, **kwargs) -> list[np.ndarray]:
        runs = attack_batches(lenet_clf, x_part, y_part, "pixel", None, budget, 2, 7, **common, **kwargs)
        return [result.images for _, _, result, _ in runs]

    whole = images(x, y)
    # the second batch alone, placed where it is in the private set, is the same run bit for bit
    np.testing.assert_array_equal(images(x[2:], y[2:], first_index=2)[0], whole[1])
    assert not np.array_equal(images(x[2:], y[2:])[0], whole[1])  # else the test could not fail
    # without the replay, the attack sees the same update as one gradient
    naive = InvertingGradientsAttack(lenet_clf, batch_size=2, max_iter=3, num_restarts=1, seed=batch_seed(7, 2))
    update = client_update(lenet_clf, x[2:], y[2:], training, seed=batch_seed(7, 2))
    expected = naive.reconstruct(update, y[2:]).images
    np.testing.assert_array_equal(images(x, y, replay_training=False)[1], expected)
    assert not np.array_equal(whole[1], expected)


def test_labels_of_an_sgd_update_with_distinct_labels_and_unconfident_model_are_exact(heldout) -> None:
    # near-uniform predictions (an untrained ReLU ConvNet): each present class's bias moves down over the steps, each
    # absent one's up. (A confident model, such as DLG's LeNet predicting one class at 0.95, breaks this even for
    # FedSGD: that is where label counting is hard.)
    from art_gifd.models import convnet

    x, y = heldout
    index = np.array([np.flatnonzero(y == c)[0] for c in (1, 4, 7, 9)])
    clf = make_classifier(convnet(seed=0), (1, 32, 32))
    training = LocalTraining(0.1, epochs=3, batch_size=2, momentum=0.5, shuffle_seed=0)
    target = TargetModel(clf)
    update = target.as_gradient_list(client_update(clf, x[index], y[index], training))
    assert infer_labels(update, target.module, 10, 4).tolist() == [1, 4, 7, 9]


def test_dp_sgd_acts_on_every_local_step_and_other_defences_on_the_update(lenet_clf, digits) -> None:
    x, y = digits
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.01, steps=100, delta=1e-5)
    per_step, on_update = split_defense(Compose([dp, Clip(0.5), GaussianNoise(1e-4)]))
    assert per_step is dp and [type(d) for d in on_update.defenses] == [Clip, GaussianNoise]
    assert split_defense(Clip(1.0))[0] is None
    training = LocalTraining(0.1, steps=2, batch_size=2, shuffle=False)
    clipped = client_update(lenet_clf, x, y, training, defense=Clip(0.5), seed=0)
    assert np.sqrt(sum((u.astype(np.float64) ** 2).sum() for u in clipped)) == pytest.approx(0.5, rel=1e-4)
    noisy = [client_update(lenet_clf, x, y, training, defense=dp, seed=s) for s in (0, 0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(noisy[0], noisy[1], strict=True))  # seeded
    assert not np.allclose(noisy[0][0], noisy[2][0])
    short = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.01, steps=1, delta=1e-5)
    with pytest.raises(ValueError, match=r"accounts for steps=1, but .* takes 2 step\(s\) on its 4 samples"):
        client_update(lenet_clf, x, y, training, defense=Compose([short, Clip(0.5)]), seed=0)


def test_unknown_order_replays_full_batch_steps_and_merging_bounds_the_steps() -> None:
    unknown = LocalTraining(0.1, epochs=2, batch_size=2)
    assert not unknown.order_known and unknown.num_steps(6) == 6
    assert LocalTraining(0.1, steps=3).order_known  # full-batch steps have no order to know
    assert all(len(index) == 6 and scale == 1.0 for index, scale in unknown.simulation(6))
    known = LocalTraining(0.1, epochs=2, batch_size=2, shuffle_seed=1)
    batches = known.batches(6)
    assert [sorted(np.concatenate(batches[:3]).tolist()), sorted(np.concatenate(batches[3:]).tolist())] == [
        list(range(6))
    ] * 2
    merged = known.simulation(6, max_steps=2)  # one epoch each: every sample once, three times the learning rate
    assert [scale for _, scale in merged] == [3.0, 3.0] and all(sorted(index) == list(range(6)) for index, _ in merged)
    assert [len(index) for index, _ in unknown.simulation(6, max_steps=4)] == [6] * 4
    uneven = known.simulation(6, max_steps=4)  # groups of 2, 2, 1 and 1 steps of 2 samples
    assert [scale for _, scale in uneven] == [2.0, 2.0, 1.0, 1.0] and sum(len(i) for i, _ in uneven) == 12
    # a summed loss grows with the samples a step replays: the factor is the samples the client's steps summed over
    # divided by those replayed (merged epochs: 1; an unknown-order step on all 6 of a 2-sample mini-batch: 1/3)
    assert [scale for _, scale in known.simulation(6, max_steps=2, reduction="sum")] == [1.0, 1.0]
    assert [scale for _, scale in unknown.simulation(6, reduction="sum")] == [pytest.approx(1 / 3)] * 6
    assert [scale for _, scale in known.simulation(6, reduction="sum")] == [1.0] * 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": 0.0}, r"learning_rate must lie in \(0, 1e\+06\]"),
        ({"learning_rate": 0.1, "shuffle": False, "shuffle_seed": 3}, "shuffle_seed orders a shuffled pass"),
        ({"learning_rate": 0.1, "steps": 0}, "steps must be a positive integer"),
        ({"learning_rate": 0.1, "batch_size": -2}, "batch_size must be a positive integer"),
        ({"learning_rate": 0.1, "epochs": 2, "steps": 3}, "epochs or steps, not both"),
        ({"learning_rate": 0.1, "optimizer": "adamw"}, r"optimizer must be one of \('sgd', 'adam'\), got 'adamw'"),
        ({"learning_rate": 0.1, "optimizer": "adam", "momentum": 0.9}, "momentum applies to optimizer='sgd'"),
        ({"learning_rate": "0.1"}, "learning_rate must be a finite number"),
        ({"learning_rate": 0.1, "epochs": 10**7}, r"epochs must be a positive integer \(at most 100000\) or None"),
        ({"learning_rate": 0.1, "steps": 10**30}, r"steps must be a positive integer \(at most 100000\) or None"),
    ],
)
def test_bad_local_training_is_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        LocalTraining(**kwargs)


def test_bad_fedavg_inputs_are_refused_before_any_work(lenet_clf, digits, monkeypatch) -> None:
    x, y = digits
    uneven = LocalTraining(0.1, batch_size=3, shuffle_seed=0)
    with pytest.raises(ValueError, match="batch_size=3 does not divide the client's 4 samples"):
        client_update(lenet_clf, x, y, uneven)
    larger = LocalTraining(0.1, steps=2, batch_size=8, shuffle_seed=0)  # one batch of all 4, as a DataLoader gives
    full = LocalTraining(0.1, steps=2, batch_size=4, shuffle_seed=0)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(client_update(lenet_clf, x, y, larger), client_update(lenet_clf, x, y, full), strict=True)
    )
    replayed = InvertingGradientsAttack(lenet_clf, max_iter=1, batch_size=4, verbose=False, training=larger)
    assert replayed.infer(client_update(lenet_clf, x, y, larger), y).shape == x.shape
    with pytest.raises(ValueError, match=r"training must be an art_gifd\.LocalTraining"):
        client_update(lenet_clf, x, y, {"learning_rate": 0.1})
    update = client_update(lenet_clf, x, y, LocalTraining(0.1, batch_size=2, shuffle=False))
    attack = InvertingGradientsAttack(lenet_clf, max_iter=2, batch_size=4, verbose=False, training=uneven)
    with pytest.raises(ValueError, match="does not divide"):
        attack.infer(update, y)
    attack.set_params(training=LocalTraining(0.1, batch_size=2, shuffle=False))
    with pytest.raises(ValueError, match="has shape"):
        attack.infer(update[::-1], y)
    with pytest.raises(ValueError, match="zero everywhere"):
        attack.infer([np.zeros_like(u) for u in update], y)
    with pytest.raises(ValueError, match=r"training must be an art_gifd\.LocalTraining"):
        attack.set_params(training="fedavg")
    assert isinstance(attack.training, LocalTraining)  # a refused value does not stay behind
    monkeypatch.setattr("art_gifd.attacks.base.available_memory", lambda device: 2**20)
    with pytest.raises(ValueError, match=r"needs about .* GiB but cpu has 0\.0 GiB free: set simulation_steps"):
        attack.infer(update, y)


def test_more_local_steps_than_the_limit_are_refused_from_their_count_before_any_plan(
    lenet_clf, digits, monkeypatch
) -> None:
    from art_gifd.federated import local_training_from_config

    x, y = digits
    training = LocalTraining(0.05, epochs=10**5, batch_size=1, shuffle=False)
    assert training.num_steps(1) == 10**5  # the limit itself is taken
    monkeypatch.setattr(LocalTraining, "batches", lambda *args: pytest.fail("the per-step plan was built"))
    message = r"epochs=100000 over 4 samples in mini-batches of 1 is 400000 local steps, more than the 100000"
    with pytest.raises(ValueError, match=rf"{message} a LocalTraining takes: lower epochs, or raise batch_size\."):
        training.simulation(4)
    attack = InvertingGradientsAttack(lenet_clf, max_iter=1, batch_size=4, training=training, verbose=False)
    with pytest.raises(ValueError, match=message):
        attack.check_replay_memory()
    with pytest.raises(ValueError, match=message):
        attack.infer([0.05 * g for g in client_gradients(lenet_clf, x, y)], y)
    with pytest.raises(ValueError, match=message):
        client_update(lenet_clf, x, y, training)
    fields = {"learning_rate": 0.05, "epochs": 10**5, "local_batch_size": 1, "shuffle": False}
    found, problems = local_training_from_config(fields, "fedavg", [1, 4])
    assert found is None and [(key, text.split(":")[0]) for key, text in problems] == [
        ("epochs", "for a client of 4 samples")
    ]


def test_every_attack_takes_the_training_through_set_params(lenet_clf) -> None:
    from art_gifd.attacks import DLGAttack, IDLGAttack

    training = LocalTraining(0.05, steps=3)
    for cls in (DLGAttack, IDLGAttack, InvertingGradientsAttack):
        attack = cls(make_classifier(lenet(seed=0), (1, 32, 32)), max_iter=1, verbose=False)
        attack.set_params(training=training, simulation_steps=2)
        assert attack.training is training and attack.simulation_steps == 2
        with pytest.raises(ValueError, match="simulation_steps must be a positive integer or None"):
            attack.set_params(simulation_steps=0)


def test_cpu_memory_counts_what_the_kernel_can_give_back() -> None:
    import os

    from art_gifd.federated import available_memory

    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available_memory(torch.device("cpu")) >= free_pages  # MemAvailable holds the free pages and the cache


def test_an_update_lost_to_rounding_is_named(lenet_clf, digits, caplog) -> None:
    x, y = digits
    with caplog.at_level("WARNING"):
        update = client_update(lenet_clf, x, y, LocalTraining(1e-12, steps=1))
    assert not any(u.any() for u in update)  # w − 1e-12·g rounds back to w in float32
    assert "update is zero everywhere: at learning rate 1e-12" in caplog.text


def test_a_diverged_local_training_is_named(lenet_clf, digits, caplog) -> None:
    x, y = digits
    with caplog.at_level("WARNING"):
        client_update(lenet_clf, x, y, LocalTraining(1e3, steps=3))
    assert "local training diverged" in caplog.text and "now 1000" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        client_update(lenet_clf, x, y, LocalTraining(0.1, steps=3))
    assert "diverged" not in caplog.text


def test_inferred_labels_under_known_order_mini_batches_warn(lenet_clf, digits) -> None:
    import warnings

    x, y = digits
    batched = LocalTraining(0.1, epochs=1, batch_size=2, shuffle_seed=0)
    attack = InvertingGradientsAttack(lenet_clf, max_iter=1, batch_size=4, verbose=False, training=batched)
    update = client_update(lenet_clf, x, y, batched)
    with pytest.warns(UserWarning, match="Labels inferred for a FedAvg update of mini-batches of 2 in a known order"):
        attack.infer(update)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # labels given, or one full batch: the replay is the client's
        attack.infer(update, y)
        full = LocalTraining(0.1, epochs=1, shuffle_seed=0)
        attack.set_params(training=full)
        attack.infer(client_update(lenet_clf, x, y, full))


@pytest.fixture
def fedavg_benchmark(monkeypatch: pytest.MonkeyPatch):
    """``benchmarks/fedavg.py`` as a module."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks import fedavg

    return fedavg


def _committed_fedavg_runs(tmp_path):
    import shutil

    from benchmarks.fedavg import RUNS

    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    return runs


def test_fedavg_report_states_the_budget_and_command_of_its_runs(fedavg_benchmark, tmp_path) -> None:
    import json

    runs = tmp_path / "runs"
    argv = ["--sizes", "2", "--images", "2", "--seeds", "0", "--attacks", "pixel", "--steps-per-stage", "1"]
    argv += ["--restarts", "1", "--rounds", "1", "--runs", str(runs)]
    fedavg_benchmark.main(argv)
    command = "python benchmarks/fedavg.py " + " ".join(argv)
    records = [json.loads(line) for line in (runs / "size2.jsonl").read_text().splitlines()]
    assert records and {r["command"] for r in records} == {command}
    fedavg_benchmark.main(["--report", "--runs", str(runs)])
    document = json.loads((runs / "fedavg.json").read_text())
    assert (document["steps_per_stage"], document["restarts"], document["threads"]) == (1, 1, 1)
    assert document["commands"] == [command] and document["runs_without_command"] == 0
    text = (runs / "fedavg.md").read_text()
    assert f"Runs: `{command}`; " in text and "--sizes 4` and `--sizes 8`" not in text
    assert "Attack budget of the runs: restarts 1, steps per stage 1 (GIFD's 4 stages; the other attacks 4 " in text


def test_fedavg_report_of_runs_that_did_not_record_their_command_says_so(fedavg_benchmark, tmp_path) -> None:
    runs = _committed_fedavg_runs(tmp_path)
    fedavg_benchmark.main(["--report", "--runs", str(runs)])
    text = (runs / "fedavg.md").read_text()
    assert "Runs: 432 runs of `python benchmarks/fedavg.py` whose options were not recorded; " in text
    assert "restarts 2, steps per stage 50 " in text


def test_fedavg_options_that_would_be_ignored_are_refused(fedavg_benchmark, tmp_path, capsys) -> None:
    runs = ["--runs", str(tmp_path / "runs")]
    for argv, message in (
        (["--sizes", "4", "--images", "6"], "--images (6) must be a multiple of every --sizes value [4]"),
        (["--images", "100000"], "--images 100000: the held-out split holds 800 digits from digit 200 on"),
        (["--report", "--memory"], "argument --memory: not allowed with argument --report"),
        (["--labels", "--memory"], "argument --memory: not allowed with argument --labels"),
        (["--memory", "--sizes", "4", "--threads", "2"], "--sizes, --threads: not read by --memory; leave them out"),
        (["--report", "--seeds", "3"], "--seeds: not read by --report; leave it out"),
        (["--labels", "--restarts=3"], "--restarts: not read by --labels; leave it out"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            fedavg_benchmark.parse_args([*argv, *runs])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err, err
    assert fedavg_benchmark.parse_args(["--images", "800", *runs]).images == 800  # every digit from 200 on


def test_fedavg_memory_measures_the_restarts_asked(fedavg_benchmark, tmp_path) -> None:
    import json

    runs = tmp_path / "runs"
    fedavg_benchmark.main(["--memory", "--restarts", "1", "--runs", str(runs)])
    rows = json.loads((runs / "memory.json").read_text())
    assert [(r["local_steps"], r["restarts"]) for r in rows] == [(1, 1), (2, 1), (5, 1), (10, 1)]


def test_fedavg_report_skips_damaged_runs_and_names_a_damaged_table_before_writing(
    fedavg_benchmark, tmp_path, caplog
) -> None:
    import json

    runs = _committed_fedavg_runs(tmp_path)
    lines = (runs / "size4.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    damaged = [
        {k: v for k, v in first.items() if k != "cpu_seconds"},
        {**first, "attack": "foo"},
        {**first, "method": "guess"},
    ]
    with (runs / "size4.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in damaged))
    memory = (runs / "memory.json").read_text()
    for text, problem in (
        ('[{"a": 1}]', r"memory\.json' is not a table of this script \(rows\[0\]\.local_steps is missing\)"),
        ("[{", r"memory\.json' cannot be read as a table \(Expecting"),
        ("\xff", r"memory\.json' cannot be read as a table \('utf-8' codec"),
    ):
        (runs / "memory.json").write_bytes(text.encode("latin-1"))
        with pytest.raises(ValueError, match=problem) as error:
            fedavg_benchmark.main(["--report", "--runs", str(runs)])
        assert str(runs / "memory.json") in str(error.value)
        assert not (runs / "fedavg.json").exists() and not (runs / "fedavg.md").exists()  # nothing written
    (runs / "labels.json").write_text('[{"model": "m", "size": "4"}]')
    with pytest.raises(ValueError, match=r"labels\.json' is not a table of this script \(rows\[0\]\.size is \"4\""):
        fedavg_benchmark.main(["--report", "--runs", str(runs)])
    (runs / "labels.json").unlink()
    (runs / "memory.json").write_text(memory)
    with caplog.at_level("WARNING"):
        fedavg_benchmark.main(["--report", "--runs", str(runs)])
    assert "skipping a damaged record (cpu_seconds is missing)" in caplog.text
    assert (
        "skipping a damaged record (a run of attack 'foo', not one of ('gifd', 'latent-only', 'pixel')" in caplog.text
    )
    assert (
        "skipping a damaged record (a run of method 'guess', not one of ('replay', 'naive', 'epoch-steps')"
        in caplog.text
    )
    document = json.loads((runs / "fedavg.json").read_text())
    committed = json.loads((fedavg_benchmark.RESULTS / "fedavg.json").read_text())
    assert document["rows"] == committed["rows"] and document["memory"] == committed["memory"]  # the good runs alone
