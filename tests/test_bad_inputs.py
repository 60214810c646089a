"""Bad input is refused before any work, with a message that names the problem and the way out."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from art_gifd import GIFDAttack, InvertingGradientsAttack
from art_gifd.cli import main
from art_gifd.configfile import parse_document
from art_gifd.defenses import Compose, GaussianNoise, Prune
from art_gifd.federated import client_gradients
from art_gifd.models import make_classifier
from art_gifd.validation import check_device, check_integer, check_number


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_integer("steps", "3", 1), "steps must be a positive integer, got '3'"),
        (lambda: check_integer("steps", True, 1), "steps must be a positive integer, got True"),
        (lambda: check_integer("steps", 2.0, 1), "steps must be a positive integer"),
        (lambda: check_integer("bits", 17, 2, 16), r"bits must be an integer in \[2, 16\]"),
        (lambda: check_number("lr", "0.1", 0.0), "lr must be a finite number"),
        (lambda: check_number("lr", float("inf"), 0.0), "lr must be a finite number"),
        (lambda: check_number("lr", 0.0, 0.0, closed="neither"), r"lr must lie in \(0, inf\), got 0.0"),
        (lambda: check_number("", -1, 0.0), r"^must lie in \[0, inf\)"),
    ],
)
def test_shared_validators_refuse(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_shared_validators_accept_numpy_scalars() -> None:
    assert check_integer("steps", np.int64(3), 1) == 3
    assert check_number("lr", np.float32(0.5), 0.0, closed="neither") == 0.5
    assert check_integer("chunk", None, 1, optional=True) is None


def test_numpy_integers_pass_the_attack_and_the_defences(lenet_clf, default_prior) -> None:
    attack = GIFDAttack(lenet_clf, default_prior, steps_per_stage=np.int64(2), num_restarts=np.int32(1), verbose=False)
    assert attack.steps_per_stage == 2 and type(attack.steps_per_stage) is int  # torch refuses numpy split sizes
    attack = GIFDAttack(lenet_clf, default_prior, max_stage=3, feature_restarts=np.array([2, 1]), verbose=False)
    assert attack.feature_restarts == [2, 1] and attack.restart_schedule() == [2, 1]
    assert Prune(np.float64(0.5)).ratio == 0.5
    with pytest.raises(ValueError, match="ratio must be a finite number"):
        Prune("0.5")


def test_yaml_reads_scientific_notation_as_numbers() -> None:
    document = parse_document('lr: 5e-2\nsteps: 1e3\nplain: 0.1\nquoted: "5e-2"\nname: abc\n', "yaml")
    assert document.data == {"lr": 0.05, "steps": 1000.0, "plain": 0.1, "quoted": "5e-2", "name": "abc"}
    document = parse_document("seeds: [010, 7, 0x10]\ntime: 1:30\n", "yaml")  # YAML 1.2, not 1.1's octal
    assert document.data == {"seeds": [10, 7, 16], "time": "1:30"}
    # YAML 1.2 booleans: a label "no" or a key "on" stays a string
    document = parse_document("adaptive: true\nverbose: False\nlabel: no\non: 1\n", "yaml")
    assert document.data == {"adaptive": True, "verbose": False, "label": "no", "on": 1}


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu0", "is not a device name"),
        ("cuda:99", "CUDA GPU"),
        (3.5, "is not a device name"),
    ],
)
def test_devices_are_checked_at_construction(lenet_clf, default_prior, device, message) -> None:
    if device == "cuda:99" and torch.cuda.device_count() >= 100:
        pytest.skip("this machine has 100 GPUs")
    with pytest.raises(ValueError, match=message):
        GIFDAttack(lenet_clf, default_prior, device=device)
    with pytest.raises(ValueError, match=message):
        check_device(device)


def test_cuda_without_gpu_is_refused_by_name() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no usable CUDA GPU: use 'cpu'"):
        check_device("cuda")


def test_client_gradients_refuse_bad_models_labels_and_ranges(lenet_clf, heldout) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    with pytest.raises(ValueError, match="Expected an ART PyTorchClassifier, got Sequential"):
        client_gradients(lenet_clf.model, x, y)
    with pytest.raises(ValueError, match="Labels must be numbers"):
        client_gradients(lenet_clf, x, np.array(["3", "1"]))
    one_hot = np.eye(10)[y]
    one_hot[1] = 0.0
    with pytest.raises(ValueError, match=r"One-hot label row 1 is not one-hot \(\[0\.0, 0\.0"):
        client_gradients(lenet_clf, x, one_hot)
    probabilities = np.full((len(y), 10), 0.02)
    probabilities[np.arange(len(y)), y] = 0.82  # a clear argmax, but not what a client's hard-label loss took
    with pytest.raises(ValueError, match=r"Soft labels .* are not modelled: give the class indices"):
        client_gradients(lenet_clf, x, probabilities)
    with pytest.raises(ValueError, match=r"clip_values are \[0, 1\]: scale the images"):
        client_gradients(lenet_clf, x * 255, y)
    broken = copy.deepcopy(lenet_clf.model)
    with torch.no_grad():
        next(broken.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match="output for a zero batch holds NaN"):  # refused when wrapped
        make_classifier(broken, (1, 32, 32))
    damaged = make_classifier(copy.deepcopy(lenet_clf.model), (1, 32, 32))
    with torch.no_grad():  # and when the weights are damaged after wrapping
        next(damaged.model.parameters())[0] = float("nan")
    with pytest.raises(ValueError, match="FL model's weights hold NaN"):
        client_gradients(damaged, x, y)


def test_prior_with_nan_weights_is_refused(lenet_clf, default_prior) -> None:
    prior = copy.deepcopy(default_prior)
    with torch.no_grad():
        next(prior.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="prior's weights hold NaN"):
        GIFDAttack(lenet_clf, prior)


def test_gradient_of_a_larger_batch_than_batch_size_is_refused(lenet_clf, heldout, default_prior) -> None:
    x, y = heldout[0][:4], heldout[1][:4]
    assert len(set(y.tolist())) == 4
    attack = GIFDAttack(lenet_clf, default_prior, steps_per_stage=1, num_restarts=1, verbose=False)
    with pytest.raises(ValueError, match=r"shows 4 distinct labels .* batch_size=1: set batch_size"):
        attack.infer(client_gradients(lenet_clf, x, y))
    # noise breaks the exact sign evidence, so a noisy gradient is not refused on it
    noisy = client_gradients(lenet_clf, x, y, defense=GaussianNoise(1e-3), seed=0)
    assert attack.infer(noisy).shape == (1, 1, 32, 32)
    assert attack.infer(client_gradients(lenet_clf, x[:1], y[:1])).shape == (1, 1, 32, 32)


def test_labels_or_sign_that_the_gradient_contradicts_are_refused(lenet_clf, heldout, default_prior) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    grads = client_gradients(lenet_clf, x, y)
    attack = GIFDAttack(lenet_clf, default_prior, batch_size=2, steps_per_stage=1, num_restarts=1, verbose=False)
    with pytest.raises(ValueError, match=r"shows class\(es\) \[\d.*are the labels 1-based"):
        attack.infer(grads, (y + 1) % 10)  # 1-based labels: the bias gradient names a class y does not hold
    assert attack.infer(grads, y).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="looks negated"):
        attack.infer([-g for g in grads])  # w_after − w_before, with inferred labels
    with pytest.raises(ValueError, match="looks negated"):
        attack.infer([-g for g in grads], y)  # and with the labels given


def test_attack_contract_checks(lenet_clf, heldout, default_prior) -> None:
    from art_gifd import LocalTraining
    from art_gifd.attacks import DLGAttack, GGLAttack

    x, y = heldout[0][:1], heldout[1][:1]
    grads = client_gradients(lenet_clf, x, y)
    attack = GIFDAttack(lenet_clf, default_prior, max_stage=2, steps_per_stage=1, num_restarts=1, verbose=False)
    with pytest.raises(ValueError, match=r"infer takes the gradient and y only, got \['labels'\]"):
        attack.infer(grads, labels=y)  # would have been ignored
    with pytest.raises(ValueError, match=r"feature_learning_rate must lie in \(0, 1e\+06\]"):
        attack.set_params(feature_learning_rate=1e300)
    assert GIFDAttack(lenet_clf, default_prior, l1_radius=np.array([0.1, 0.2, 0.3])).radii() == [0.1, 0.2, 0.3]
    for make in (lambda: DLGAttack(lenet_clf, tv_weight=1e-4), lambda: DLGAttack(lenet_clf, schedule="step")):
        with pytest.raises(ValueError, match=r"DLGAttack sets \['(tv_weight|schedule)'\] itself"):
            make()
    state = np.random.get_state()  # CMA-ES seeds numpy's global generator: the attack restores it
    GGLAttack(lenet_clf, default_prior, max_iter=2, population_size=4, seed=1, verbose=False).infer(grads, y)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state, strict=True))
    full = GIFDAttack(lenet_clf, default_prior, max_stage=1, steps_per_stage=1, num_restarts=1, verbose=False)
    full.set_params(training=LocalTraining(0.1, steps=2, batch_size=4))  # mini-batches of the whole client: no order
    update = [g * 0.2 for g in grads]
    assert full.reconstruct(update, y).extra["training"]["order_known"] is True


def test_reconstruct_many_checks_every_estimator(lenet_clf, heldout, default_prior) -> None:
    from art_gifd.models import lenet

    x, y = heldout[0][:1], heldout[1][:1]
    grads = client_gradients(lenet_clf, x, y)
    attack = GIFDAttack(lenet_clf, default_prior, max_stage=1, steps_per_stage=1, num_restarts=1, verbose=False)
    summed = _estimator(lenet(seed=0), loss=torch.nn.CrossEntropyLoss(reduction="sum"))
    with pytest.raises(
        ValueError, match=r"estimators\[1\] trains with another loss \(CrossEntropyLoss\(reduction='sum'"
    ):
        attack.reconstruct_many([grads, grads], estimators=[lenet_clf, summed])
    from art.estimators.classification import PyTorchClassifier

    unclipped = PyTorchClassifier(lenet(seed=0), torch.nn.CrossEntropyLoss(), (1, 32, 32), 10)
    with pytest.raises(ValueError, match=r"estimators\[1\]: The estimator has no clip_values"):
        attack.reconstruct_many([grads, grads], estimators=[lenet_clf, unclipped])


def test_train_mode_with_one_sample_and_batchnorm1d_is_refused() -> None:
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(1024, 32),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    with pytest.raises(ValueError, match=r"train_mode=True with batch_size=1 and BatchNorm1d layers \(\['2'\]\)"):
        InvertingGradientsAttack(make_classifier(net, (1, 32, 32)), train_mode=True)


def test_diverged_search_is_an_error_not_a_result(lenet_clf, heldout, default_prior, monkeypatch) -> None:
    x, y = heldout[0][:1], heldout[1][:1]
    gradient = client_gradients(lenet_clf, x, y)
    attack = GIFDAttack(lenet_clf, default_prior, max_stage=1, steps_per_stage=2, num_restarts=1, verbose=False)

    def diverging(self, stage: int, h: torch.Tensor, labels=None) -> torch.Tensor:  # NaN once the search moves h
        return torch.full((h.shape[0], 1, 32, 32), np.nan if h.requires_grad else 0.0)

    monkeypatch.setattr(type(default_prior), "forward_from", diverging)
    with pytest.raises(RuntimeError, match="the search diverged"):
        attack.infer(gradient, y)


@pytest.mark.parametrize(
    ("cls", "weight", "first"),
    [(GIFDAttack, 1e38, "latent"), (InvertingGradientsAttack, 1e39, "pixel")],
    ids=["gradient-overflows", "objective-overflows"],
)
def test_a_search_whose_objective_overflows_raises_instead_of_returning_its_start(
    cls, weight, first, lenet_clf, heldout, default_prior, monkeypatch
) -> None:
    """
    A prior term past float32, as the weights' upper bound keeps the built-in ones from: at 1e38 the objective stays
    finite but the square of its gradient overflows Adam's second moment (steps of 0), at 1e39 the objective itself is
    infinite. Either way the candidates never move and the best one is the random start.
    """
    from art_gifd.attacks import base
    from art_gifd.attacks.core import run_stage, total_variation

    class Overflowing(cls):
        def _regularisers(self, ctx):
            return [lambda images: weight * total_variation(images).reshape(-1, ctx.batch_size).mean(dim=1)]

    x, y = heldout[0][:1], heldout[1][:1]
    gradient = client_gradients(lenet_clf, x, y)
    length = {"prior": default_prior, "steps_per_stage": 2} if cls is GIFDAttack else {"max_iter": 2}
    attack = Overflowing(lenet_clf, num_restarts=2, seed=0, verbose=False, **length)
    stages = []
    monkeypatch.setattr(base, "run_stage", lambda stage, *args: (stages.append(stage.name), run_stage(stage, *args))[1])
    message = (
        rf"^Overflowing: the search diverged in stage '{first}': its objective .* overflowed float32 or became NaN, "
        r"so its candidates stopped moving\. Lower learning_rate, tv_weight or norm_weight, or check"
    )
    with pytest.raises(RuntimeError, match=message):
        attack.reconstruct(gradient, y)
    assert stages == [first]  # refused when its first stage ends, not after every stage


def test_one_restart_that_overflows_leaves_the_others_to_finish(lenet_clf, heldout) -> None:
    from art_gifd.attacks.core import total_variation

    class FirstRestartOverflows(InvertingGradientsAttack):
        def _regularisers(self, ctx):
            def term(images: torch.Tensor) -> torch.Tensor:
                per_restart = total_variation(images).reshape(-1, ctx.batch_size).mean(dim=1)
                scale = torch.ones_like(per_restart)
                scale[0] = float("inf")  # the first restart's objective only
                return scale * per_restart

            return [term]

    x, y = heldout[0][:1], heldout[1][:1]
    attack = FirstRestartOverflows(lenet_clf, num_restarts=2, max_iter=3, seed=0, verbose=False)
    result = attack.reconstruct(client_gradients(lenet_clf, x, y), y)
    assert np.isfinite(result.images).all() and np.isfinite(result.best_loss)


@pytest.mark.parametrize(
    ("raised", "size"),
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 655360000 bytes."), "0.61"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.1 GiB total)"), "0.02"),
    ],
    ids=["cpu", "cuda"],
)
def test_a_search_that_runs_out_of_memory_says_what_to_lower(lenet_clf, heldout, default_prior, raised, size):
    x, y = heldout[0][:2], heldout[1][:2]
    gradient = client_gradients(lenet_clf, x, y)
    attack = GIFDAttack(lenet_clf, default_prior, steps_per_stage=1, num_restarts=3, batch_size=2, verbose=False)
    attack._search_together = _raises(raised)
    with pytest.raises(MemoryError) as err:
        attack.reconstruct(gradient, y)
    assert str(err.value).startswith(f"GIFDAttack ran out of memory (an allocation of {size} GiB failed)")
    assert "num_restarts × batch_size = 3 × 2" in str(err.value) and "Lower num_restarts" in str(err.value)
    attack._search_together = _raises(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # any other error passes unchanged
        attack.reconstruct(gradient, y)


def test_a_ggl_search_that_runs_out_of_memory_names_its_population(lenet_clf, heldout, default_prior) -> None:
    from art_gifd.attacks import GGLAttack

    x, y = heldout[0][:1], heldout[1][:1]
    gradient = client_gradients(lenet_clf, x, y)
    attack = GGLAttack(lenet_clf, default_prior, max_iter=1, num_restarts=2, population_size=5000, verbose=False)
    attack._search_together = _raises(MemoryError())
    held = r"num_restarts × population_size = 2 × 5000 candidate batches of 1 image\(s\)"
    with pytest.raises(MemoryError, match=rf"{held}, .* Lower population_size or num_restarts, or set eval_batch_size"):
        attack.reconstruct(gradient, y)
    attack.set_params(eval_batch_size=64)  # a generation scored in parts: those are what a step holds
    with pytest.raises(MemoryError, match=r"holds eval_batch_size = 64 candidate .* Lower eval_batch_size \("):
        attack.reconstruct(gradient, y)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-level", "LOUD", "demo"], "invalid choice: 'LOUD'"),
        (["demo", "--out", "{file}"], "is a file: give a folder"),
        (["demo", "--device", "gpu0"], "is not a device name"),
        (["bench", "smoke", "--workers", "0"], "--workers: expected an integer in [1, 1024], got 0"),
        (["bench", "smoke", "--results", "{folder}"], "is a folder: give the path of a file"),
        (["bench-report", "{folder}"], "is a folder, a file is expected"),
        (["bench-report", "{missing}"], "file not found"),
        (["audit", "{folder}"], "is a folder, a file is expected"),
        (["demo", "--threads", "0"], "--threads: expected an integer in [1, 1024], got 0"),
        (["audit", "{file}", "--threads", "two"], "--threads: expected an integer in [1, 1024], got 'two'"),
        (["demo", "--seed", str(2**64)], "--seed: expected an integer in [0, 9223372036854775807]"),
        (["demo", "--out", "{under-file}"], "is a file, so the folder"),
        (["demo", "--out", "/proc/art-gifd-demo"], "cannot write into '/proc'"),
        (["bench", "smoke", "--results", "{new-folder}/"], "is a folder: give the path of a file"),
        (["bench", "smoke", "--results", "{loop}/r.jsonl"], "give a path without a symlink loop"),
        (["demo", "--out", "{loop}/x"], "give a folder path without a symlink loop"),
        (["demo", "--out", ""], "the output folder is an empty path"),
        (["bench", "smoke", "--results", "{folder}/x.recon"], "would also be the folder of its reconstructions"),
    ],
)
def test_cli_refuses_bad_arguments(tmp_path, capsys, argv, message) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    places = {
        "{file}": tmp_path / "a-file",
        "{under-file}": tmp_path / "a-file" / "out",
        "{folder}": tmp_path,
        "{missing}": tmp_path / "missing.jsonl",
    }
    places |= {"{new-folder}": tmp_path / "new-folder", "{loop}": tmp_path / "loop"}
    for name, place in places.items():
        argv = [a.replace(name, str(place)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not a results file of art-gifd bench"),
        ("hello\n", "is a file whose first line is not JSON, not the JSON-lines results file of art-gifd bench"),
        ('[1, 2]\n{"a": 1}\n', "is not a results file of art-gifd bench"),
        (json.dumps({"type": "run", "config": {}}) + "\n", "holds no finished job yet"),
    ],
)
def test_bench_report_names_a_file_it_cannot_report(tmp_path, capsys, content, message) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text(content)
    assert main(["bench-report", str(results)]) == 2
    assert message in capsys.readouterr().err


def _raises(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize(
    ("argv", "target", "exc", "status", "message"),
    [
        (
            ["audit", "examples/audit_mnist.toml"],
            "art_gifd.audit.run_audit",
            PermissionError(13, "Permission denied", "/out/settings/x.npz"),
            1,
            "error: cannot write or read '/out/settings/x.npz' (Permission denied): free space or fix the path, then "
            "run the same command again to resume (finished results are kept).",
        ),
        (
            ["bench", "smoke", "--results", "{tmp}/r.jsonl", "--no-progress"],
            "art_gifd.bench.runner.check_job_inputs",
            KeyboardInterrupt(),
            130,
            "interrupted: run the same command again to resume (finished results are kept)",
        ),
        (
            ["bench", "smoke", "--results", "{tmp}/r.jsonl", "--no-progress"],
            "art_gifd.bench.runner.check_job_inputs",
            OSError(28, "No space left on device", "{tmp}/r.jsonl"),
            1,
            "(No space left on device): free space or fix the path",
        ),
    ],
    ids=["audit-permissions", "bench-interrupted-while-checking", "bench-disk-full"],
)
def test_faults_and_interruptions_end_in_one_line(tmp_path, monkeypatch, capsys, argv, target, exc, status, message):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    if isinstance(exc, OSError) and exc.filename:
        exc.filename = exc.filename.replace("{tmp}", str(tmp_path))
    monkeypatch.setattr(target, _raises(exc))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_interrupted_demo_says_an_earlier_report_is_not_this_runs(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "report.html").write_text("<html>an earlier run</html>")
    monkeypatch.setattr("art_gifd.demo.run_experiment", _raises(KeyboardInterrupt()))
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"the demo wrote no report (the report in {tmp_path} is an earlier run's)" in err
    assert (tmp_path / "report.html").read_text() == "<html>an earlier run</html>"


def test_a_file_where_bench_keeps_reconstructions_stops_it_before_any_job(tmp_path, monkeypatch, capsys) -> None:
    import art_gifd.bench.runner as runner

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    (tmp_path / "r.recon").write_text("not a folder")
    monkeypatch.setattr(runner, "run_job", _raises(AssertionError("a job ran")))
    assert main(["bench", "smoke", "--results", str(tmp_path / "r.jsonl"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write or read '{tmp_path / 'r.recon'}'" in err and "Traceback" not in err
    results = tmp_path / "r.jsonl"
    assert not results.exists() or '"status"' not in results.read_text()  # no job ran, none was recorded


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (KeyboardInterrupt(), 130, "x.py: interrupted: run the same command again to resume"),
        (IsADirectoryError(21, "Is a directory", "runs.jsonl.lock"), 1, "x.py: error: cannot write or read"),
        (ValueError("steps must be positive"), 2, "x.py: error: steps must be positive"),
    ],
)
def test_benchmark_scripts_end_in_one_line(monkeypatch, capsys, exc, status, message) -> None:
    from art_gifd.cli import run_script
    from art_gifd.store import ResultsBusy

    monkeypatch.setattr("sys.argv", ["benchmarks/x.py"])
    for error, code, text in [(exc, status, message), (ResultsBusy("'r.jsonl' is being written"), 2, "being written")]:
        with pytest.raises(SystemExit) as exit_info:
            run_script(_raises(error))
        assert exit_info.value.code == code and text in capsys.readouterr().err


def test_limits_that_would_hang_or_overflow_are_refused(lenet_clf, default_prior) -> None:
    from art_gifd.defenses import DPSGD

    with pytest.raises(ValueError, match=r"steps_per_stage must be a positive integer \(at most 10000000\)"):
        GIFDAttack(lenet_clf, default_prior, steps_per_stage=2**63 - 1)  # split into stages by float shares: overflow
    with pytest.raises(ValueError, match=r"epsilon must lie in \(0, 1e\+06\]"):  # Opacus' noise search never ends
        DPSGD.for_epsilon(1e308, max_grad_norm=1.0, sample_rate=0.01, steps=10, delta=1e-5)
    from art_gifd.attacks import GGLAttack

    for make, message in (  # float32 overflow in the objective, or sizes that exhaust memory or overflow int64
        (
            lambda: GIFDAttack(lenet_clf, default_prior, tv_weight=1e38),
            r"tv_weight must lie in \[0, 1e\+06\], got 1e\+38",
        ),
        (lambda: InvertingGradientsAttack(lenet_clf, norm_weight=1e7), r"norm_weight must lie in \[0, 1e\+06\]"),
        (
            lambda: GGLAttack(lenet_clf, default_prior, population_size=10**30),
            r"population_size must be an integer in \[2, 10000\] or None, got 10+\.",
        ),
        (
            lambda: GGLAttack(lenet_clf, default_prior, eval_batch_size=10**30),
            r"eval_batch_size must be a positive integer \(at most 100000000\) or None, got 10+\.",
        ),
        (
            lambda: GIFDAttack(lenet_clf, default_prior, batch_size=10**30),
            r"batch_size must be a positive integer \(at most 100000\), got 10+\.",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            make()


def test_user_models_that_are_damaged_or_exit_are_named(tmp_path, monkeypatch) -> None:
    from art_gifd.models import ModelLoadError, load_user_model

    (tmp_path / "user_models.py").write_text(
        "import sys, torch\n"
        "def nan_net():\n"
        "    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))\n"
        "    torch.nn.init.constant_(net[1].weight, float('nan'))\n"
        "    return net\n"
        "def exits():\n"
        "    sys.exit(3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="weights hold NaN or infinite values") as err:
        load_user_model(factory="user_models:nan_net")
    assert err.value.key == "factory"
    with pytest.raises(ModelLoadError, match="SystemExit") as err:
        load_user_model(factory="user_models:exits")
    assert err.value.key == "factory"


def test_config_files_that_are_binary_or_outputs_that_are_files_are_refused(tmp_path) -> None:
    from art_gifd.audit.config import AuditConfigError, load_audit_config
    from art_gifd.configfile import ConfigError, read_document

    binary = tmp_path / "audit.toml"
    binary.write_bytes(b"title = 'x'\n\x80\x81\xfe")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        read_document(binary)
    (tmp_path / "report.txt").write_text("not a folder")
    with pytest.raises(AuditConfigError, match="is a file: give a folder") as err:
        load_audit_config({"output": str(tmp_path / "report.txt"), "model": {}, "data": {}})
    assert "output" in err.value.keys


def test_models_and_classifiers_of_the_wrong_shape_are_refused() -> None:
    from art_gifd.models import build_model, lenet

    with pytest.raises(ValueError, match="in_channels must be a positive integer, got 0"):
        build_model("lenet", in_channels=0)
    with pytest.raises(ValueError, match="image_size must be an integer >= 8, got 4"):
        build_model("convnet", image_size=4)
    with pytest.raises(ValueError, match=r"the model fails on a batch of shape \(2, 3, 32, 32\)"):
        make_classifier(lenet(), (3, 32, 32))  # a grey-image model given RGB inputs
    with pytest.raises(ValueError, match=r"has shape \(2, 10\), but num_classes = 4"):
        make_classifier(lenet(), (1, 32, 32), nb_classes=4)


def test_restart_counts_that_cannot_be_allocated_are_refused(lenet_clf, default_prior) -> None:
    with pytest.raises(ValueError, match=r"num_restarts must be a positive integer \(at most 10000\)"):
        GIFDAttack(lenet_clf, default_prior, num_restarts=10**6)


def test_results_files_with_foreign_records_and_paths_under_files(tmp_path, capsys) -> None:
    from art_gifd.bench.config import parse_document, validate_config
    from art_gifd.configfile import ConfigError
    from art_gifd.store import ResultsFile

    results = tmp_path / "r.jsonl"
    results.write_text('{"type": "job", "job_id": ["a", "list"]}\n{"type": "job", "job_id": "x", "status": "ok"}\n')
    assert list(ResultsFile(results).latest()) == ["x"]  # the foreign record is skipped with a warning
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "smoke", "--results", str(tmp_path / "file.txt" / "r.jsonl"), "--list"])
    assert exit_.value.code == 2 and "is a file, so" in capsys.readouterr().err
    text = 'name = "../../etc/x"\nmodels = ["lenet"]\n[budget]\nsteps_per_stage = 1\nstages = 1\nnum_restarts = 1\n'
    with pytest.raises(ConfigError, match="name: must be a plain name"):
        validate_config(parse_document(text, "toml"))


def test_api_values_are_named_or_made_plain(lenet_clf, default_prior, tmp_path) -> None:
    from art_gifd import LocalTraining
    from art_gifd.configfile import read_document
    from art_gifd.models import ModelLoadError, load_user_model

    training = LocalTraining(learning_rate=np.float32(0.1), epochs=np.int64(2), batch_size=np.int64(1))
    assert json.loads(json.dumps(training.describe()))["epochs"] == 2  # numpy scalars stored as plain numbers
    with pytest.raises(ValueError, match="l1_radius must be a positive number or one per feature stage, got 'big'"):
        GIFDAttack(lenet_clf, default_prior, max_stage=2, l1_radius="big")
    with pytest.raises(ModelLoadError, match="must be a table of keyword arguments, got 'abc'") as err:
        load_user_model(factory="art_gifd.models:lenet", factory_kwargs="abc")
    assert err.value.key == "factory_kwargs"
    bom = tmp_path / "bom.toml"
    bom.write_bytes("\ufefftitle = 'x'\n".encode())  # the byte-order mark some editors write
    assert read_document(bom).data == {"title": "x"}


def test_one_array_given_as_the_whole_gradient_is_named(lenet_clf, heldout, default_prior) -> None:
    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    with pytest.raises(ValueError, match=r"one array of shape \(12, 1, 5, 5\): pass a list of 8 arrays"):
        GIFDAttack(lenet_clf, default_prior, steps_per_stage=1).infer(grads[0])


def test_unhashable_choices_and_truthy_flags_are_refused_and_rolled_back(lenet_clf, default_prior) -> None:
    attack = GIFDAttack(lenet_clf, default_prior, max_stage=2, steps_per_stage=1, verbose=False)
    for name, value in (("schedule", []), ("distance", ["l2"]), ("latent_constraint", np.array(["box"]))):
        with pytest.raises(ValueError, match=f"Unknown {name} .*: use one of"):
            attack.set_params(**{name: value})
    assert (attack.schedule, attack.distance, attack.latent_constraint) == ("cosine", "cosine", "auto")
    for value in ("false", "no", float("nan"), [0]):
        with pytest.raises(ValueError, match=f"train_mode must be True or False, got {re.escape(repr(value))}"):
            GIFDAttack(lenet_clf, default_prior, train_mode=value)
    assert GIFDAttack(lenet_clf, default_prior, train_mode=np.bool_(False), verbose=False).train_mode == np.False_
    with pytest.raises(ValueError, match='"estimator" cannot be set'):
        attack.set_params(estimator=lenet_clf)


def test_infer_labels_checks_its_gradient_and_counts(lenet_clf, heldout) -> None:
    from art_gifd import infer_labels

    x, y = heldout[0][:2], heldout[1][:2]
    grads = client_gradients(lenet_clf, x, y)
    assert infer_labels(grads, lenet_clf, 10, 2).tolist() == sorted(y.tolist())  # arrays and a classifier work
    tensors = [torch.as_tensor(g) for g in grads]
    for args, message in (
        ((tensors, lenet_clf.model, 10, 0), r"batch_size must be a positive integer \(at most 100000\), got 0"),
        ((tensors, lenet_clf.model, 10, 10**30), r"batch_size must be a positive integer \(at most 100000\), got 10+"),
        (([t * 0 for t in tensors], lenet_clf.model, 10, 2), "zero everywhere"),
        (([t * np.nan for t in tensors], lenet_clf.model, 10, 2), "contains NaN or infinite values"),
        ((tensors[::-1], lenet_clf.model, 10, 2), "in model.parameters\\(\\) order"),
        ((tensors[:3], lenet_clf.model, 10, 2), "Expected 8 gradient arrays"),
        ((tensors, "lenet", 10, 2), "module must be a torch.nn.Module"),
    ):
        with pytest.raises(ValueError, match=message):
            infer_labels(*args)


def test_unreachable_epsilon_and_settings_that_would_be_ignored_are_named(lenet_clf, default_prior) -> None:
    from art_gifd.defenses import DPSGD

    with pytest.raises(ValueError, match=r"epsilon=1e-06 cannot be reached .*: raise epsilon or delta"):
        DPSGD.for_epsilon(1e-6, max_grad_norm=1.0, sample_rate=0.01, steps=100, delta=1e-5)
    with pytest.raises(ValueError, match="simulation_steps only applies to a FedAvg update"):
        GIFDAttack(lenet_clf, default_prior, simulation_steps=2)


def test_a_defence_function_that_returns_no_gradients_is_named(lenet_clf, heldout) -> None:
    from art_gifd.defenses import FunctionDefense

    with pytest.raises(ValueError, match="its function returned NoneType, not a list of gradient tensors"):
        client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1], defense=FunctionDefense(lambda grads: None))


def test_numbered_class_folders_sorted_as_text_are_named(tmp_path) -> None:
    import warnings

    from PIL import Image

    from art_gifd.data import load_image_folder

    for root, width in ((tmp_path / "plain", 1), (tmp_path / "padded", 2)):
        for k in range(11):
            (root / f"{k:0{width}d}").mkdir(parents=True)
            Image.fromarray(np.full((4, 4), 20 * k, dtype=np.uint8), mode="L").save(root / f"{k:0{width}d}" / "a.png")
    with pytest.warns(UserWarning, match="folder '10' is label 2, folder '2' is label 3"):
        _, labels, names = load_image_folder(tmp_path / "plain")
    assert names[2] == "10" and labels[2] == 2  # torchvision's order is kept, and said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, labels, names = load_image_folder(tmp_path / "padded")
    assert names == [f"{k:02d}" for k in range(11)] and labels.tolist() == list(range(11))


def test_a_missing_class_number_is_named_and_an_empty_folder_keeps_the_numbers(tmp_path) -> None:
    import warnings

    from PIL import Image

    from art_gifd.data import load_image_folder

    for k in (0, 1, 3):
        (tmp_path / str(k)).mkdir()
        Image.fromarray(np.full((4, 4), 60 * k, dtype=np.uint8), mode="L").save(tmp_path / str(k) / "a.png")
    with pytest.warns(UserWarning, match=r"folder '3' is label 2\. .*add an empty folder for each missing number"):
        _, labels, _ = load_image_folder(tmp_path)
    assert labels.tolist() == [0, 1, 2]
    (tmp_path / "2").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, labels, names = load_image_folder(tmp_path)
    assert names == ["0", "1", "2", "3"] and labels.tolist() == [0, 1, 3] and len(x) == 3
    (tmp_path / "2").rename(tmp_path / "²")  # a digit to str.isdigit, not a number to int()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not all numbered: no numbering to warn about
        assert load_image_folder(tmp_path)[2] == ["0", "1", "3", "²"]


def test_image_folder_applies_exif_orientation_refuses_transparency_and_names_skipped_files(tmp_path) -> None:
    from PIL import Image

    from art_gifd.data import load_image_folder

    (tmp_path / "a").mkdir()
    pixels = np.zeros((2, 4), dtype=np.uint8)
    pixels[0, 0] = 255  # one white pixel at the top left of a 4-wide, 2-high image
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: a viewer turns it 90 degrees clockwise, making it 2 wide and 4 high
    Image.fromarray(pixels, mode="L").save(tmp_path / "a" / "x.jpg", exif=exif, quality=100)
    Image.fromarray(np.zeros((4, 2), dtype=np.uint8), mode="L").save(tmp_path / "a" / "w.png")  # upright, 2 wide
    x, _, _ = load_image_folder(tmp_path)
    assert x.shape == (2, 1, 4, 2) and x[1, 0, 0, 1] > 0.5 and x[1, 0, 0, 0] < 0.5  # x.jpg, after w.png
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "y.gif").write_bytes(b"GIF89a")
    with pytest.warns(UserWarning, match=r"2 file\(s\) in .* are skipped.*: a/notes\.txt, a/y\.gif\. Convert them"):
        load_image_folder(tmp_path)
    (tmp_path / "a" / "notes.txt").unlink()
    (tmp_path / "a" / "y.gif").unlink()
    rgba = np.full((4, 2, 4), 255, dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a" / "opaque.png")  # an alpha channel, all opaque: fine
    assert len(load_image_folder(tmp_path, channels=3)[0]) == 3
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a" / "z.png")
    with pytest.raises(ValueError, match=r"z\.png' has transparent pixels: put the images on the background"):
        load_image_folder(tmp_path, channels=3)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_image_folders_of_more_than_8_bits_are_refused(tmp_path, dtype) -> None:
    from PIL import Image

    from art_gifd.data import load_image_folder

    (tmp_path / "a").mkdir()
    # 1000 would be clipped to 255 (white) by an 8-bit conversion, and the digit read as a 0/1 mask
    Image.fromarray(np.full((4, 4), 1000, dtype=dtype)).save(tmp_path / "a" / "x.tif")
    with pytest.raises(ValueError, match=r"x\.tif' is a '(I;16|I|F)' image .* save the images as 8-bit"):
        load_image_folder(tmp_path)


def test_image_folder_skips_hidden_entries_and_names_unreadable_files(tmp_path) -> None:
    from PIL import Image

    from art_gifd.data import load_image_folder

    for name in (".thumbs", "0", "1"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(tmp_path / name / "a.png")
    (tmp_path / "1" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not an image
    _, labels, names = load_image_folder(tmp_path)
    assert names == ["0", "1"] and labels.tolist() == [0, 1]  # a hidden folder would have shifted every label
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "1" / "b.jpg")
    data = (tmp_path / "1" / "b.jpg").read_bytes()
    (tmp_path / "1" / "b.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"1/b\.jpg' cannot be read as an image \((image file is t|T)runcated"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image_folder(tmp_path, channels=True)


def test_image_folder_names_loose_files_and_refuses_a_file_listed_twice(tmp_path) -> None:
    from PIL import Image

    from art_gifd.data import image_folder_digest, load_image_folder

    for name in ("0", "1"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((4, 4), 40 * int(name), dtype=np.uint8), mode="L").save(tmp_path / name / "a.png")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(tmp_path / "stray.png")
    with pytest.warns(UserWarning, match=r"1 file\(s\) directly in .* skipped, being in no class folder: stray\.png"):
        _, labels, _ = load_image_folder(tmp_path)
    assert labels.tolist() == [0, 1]
    (tmp_path / "stray.png").unlink()
    (tmp_path / "2").symlink_to(tmp_path / "1", target_is_directory=True)  # class 1's images again, as class 2
    for read in (load_image_folder, image_folder_digest):
        with pytest.raises(ValueError, match=r"1/a\.png' and '.*2/a\.png' in .* are one file .* remove the link"):
            read(tmp_path)
    (tmp_path / "2").unlink()
    (tmp_path / "1" / "b.png").symlink_to(tmp_path / "0" / "a.png")  # a linked image under another label
    with pytest.raises(ValueError, match=r"0/a\.png' and '.*1/b\.png' in .* are one file"):
        load_image_folder(tmp_path)
    (tmp_path / "1" / "b.png").unlink()
    (tmp_path / "1" / "zero.png").symlink_to("/dev/zero")  # never ends: the digest would read it for ever
    os.mkfifo(tmp_path / "0" / "pipe.png")  # blocks the first read for good
    for read in (load_image_folder, image_folder_digest):
        with pytest.raises(ValueError, match=r"0/pipe\.png' in .* is not a regular file \(a pipe"):
            read(tmp_path)
    (tmp_path / "0" / "pipe.png").unlink()
    with pytest.raises(ValueError, match=r"1/zero\.png' in .* is not a regular file"):
        image_folder_digest(tmp_path)
    (tmp_path / "1" / "zero.png").unlink()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).convert("LAB").save(tmp_path / "1" / "lab.tif")
    with pytest.raises(ValueError, match=r"1/lab\.tif' is a 'LAB' image, which cannot be converted to grey"):
        load_image_folder(tmp_path)
    gifs = tmp_path / "gifs" / "a"
    gifs.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(gifs / "x.gif")
    with pytest.raises(FileNotFoundError, match=r"\(1 file\(s\) of extensions not read, e\.g\. a/x\.gif: convert"):
        load_image_folder(gifs.parent)


def test_run_demo_and_reconstruct_many_check_their_arguments(tmp_path, lenet_clf, default_prior, heldout) -> None:
    from art_gifd.demo import run_demo

    (tmp_path / "a-file").write_text("x")
    (tmp_path / "an-audit").mkdir()
    (tmp_path / "an-audit" / "report.json").write_text("{}")
    for kwargs, message in (
        ({"out": tmp_path / "an-audit"}, r"holds another run's report \(report.json: an audit or a bench report\)"),
        ({"seed": -1}, r"seed must be an integer in \[0, "),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"device": "foo"}, "is not a device name"),
        ({"out": tmp_path / "a-file"}, "is a file: give a folder"),
    ):
        with pytest.raises(ValueError, match=message):
            run_demo(**{"out": tmp_path / "demo", **kwargs})
    assert not (tmp_path / "demo").exists()  # refused before any work
    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    attack = GIFDAttack(lenet_clf, default_prior, max_stage=2, steps_per_stage=1, verbose=False)
    with pytest.raises(ValueError, match=r"seeds\[0\] must be an integer in \[0, "):
        attack.reconstruct_many([grads], seeds=[1.9])
    with pytest.raises(ValueError, match=r"estimators\[1\] is a Sequential, not an ART PyTorchClassifier"):
        attack.reconstruct_many([grads, grads], estimators=[lenet_clf, lenet_clf.model])


def test_grad_inversion_in_train_mode_is_refused_when_built() -> None:
    from art_gifd.attacks import GradInversionAttack
    from art_gifd.models import build_model

    clf = make_classifier(build_model("convnet-bn", 1, 32, 10, seed=0), (1, 32, 32))
    with pytest.raises(ValueError, match=r"needs BatchNorm running statistics.*train_mode=True"):
        GradInversionAttack(clf, train_mode=True)


class _Branching(torch.nn.Module):
    """A model with an ``if`` on tensor values: its converted TorchScript graph is not differentiable by torch.func."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return self.fc(x.flatten(1)) * 2


def test_a_model_torch_func_cannot_differentiate_is_named(tmp_path, heldout) -> None:
    from art_gifd.models import load_user_model

    torch.jit.save(torch.jit.script(_Branching()), str(tmp_path / "branching.pt"))
    module, _ = load_user_model(torchscript=tmp_path / "branching.pt", input_shape=(1, 32, 32))
    clf = make_classifier(module, (1, 32, 32))
    with pytest.raises(ValueError, match=r"cannot be differentiated with torch.func .*data-dependent control flow"):
        client_gradients(clf, heldout[0][:1], heldout[1][:1])


class _Pair(torch.nn.Module):
    """A model that returns (logits, features), as some do for auxiliary losses."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x


def _estimator(model: torch.nn.Module, **kwargs):
    from art.estimators.classification import PyTorchClassifier

    settings = {"loss": torch.nn.CrossEntropyLoss(), "input_shape": (1, 32, 32), "nb_classes": 10, **kwargs}
    return PyTorchClassifier(model, clip_values=(0.0, 1.0), **settings)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("frozen", r"frozen parameters \(requires_grad=False, e.g. \['0.weight', '0.bias'\]\)"),
        ("softmax", "outputs probabilities .* Remove the final softmax"),
        ("tuple", r"output for a batch of 2 is tuple, .* return the logits only"),
        ("classes", r"output for a batch of 2 is \(2, 10\), but the estimator's nb_classes = 12"),
        ("shape", r"fails on a batch of shape \(2, 1, 28, 28\)"),
        ("preprocessing", r"fails on a batch of shape \(2, 1, 32, 32\) \(the estimator's input_shape, after its"),
        ("channels_last", "channels_first=False: art-gifd works on NCHW images"),
    ],
)
def test_estimators_that_do_not_fit_their_model_are_named(heldout, case, message) -> None:
    from art_gifd.models import lenet

    model, kwargs = lenet(seed=0), {}
    if case == "frozen":
        model[0].requires_grad_(False)
    elif case == "softmax":
        model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    elif case == "tuple":
        model = _Pair()
    elif case == "classes":
        kwargs["nb_classes"] = 12
    elif case == "shape":
        kwargs["input_shape"] = (1, 28, 28)
    elif case == "preprocessing":
        kwargs["preprocessing"] = (np.zeros(3, dtype=np.float32), np.ones(3, dtype=np.float32))
    elif case == "channels_last":
        kwargs.update(input_shape=(32, 32, 1), channels_first=False)
    estimator = _estimator(model, **kwargs)
    x, y = heldout[0][:1], heldout[1][:1]
    with pytest.raises(ValueError, match=message):
        client_gradients(estimator, x, y)
    with pytest.raises(ValueError, match=message):
        InvertingGradientsAttack(estimator, verbose=False).infer([np.ones(1, np.float32)], y)


def test_experiment_settings_are_checked_when_made(lenet_clf, heldout) -> None:
    from art_gifd.attacks.registry import Budget
    from art_gifd.experiment import Case, Experiment, attack_batches

    bad = [
        (lambda: Case("lenet", "mnist32", 1, -2), "Case.num_images must be a positive integer, got -2"),
        (lambda: Case("lenet", "mnist32", 1, 2, offset=-3), "Case.offset must be an integer >= 0, got -3"),
        (lambda: Case("lenet", "mnist32", 0, 2), "Case.batch_size must be a positive integer, got 0"),
        (lambda: Case("lenet", "mnist32", 1, 1, adaptive=True), "Case.adaptive=True needs a defence"),
        (lambda: Budget(-2, -1, 1), "Budget.steps_per_stage must be a positive integer"),
        (lambda: Experiment([], "pixel", Budget(1, 1, 1)), "Experiment.attacks is the string 'pixel'"),
        (lambda: Experiment([], ("pixel",), Budget(1, 1, 1), seed=-1), "Experiment.seed must be an integer"),
        (
            lambda: Experiment([], ("pixel",), Budget(1, 1, 1), attack_params={"pixle": {}}),
            r"attack_params names attacks the experiment does not run: \['pixle'\]",
        ),
        (lambda: Experiment([], ("pixel",), Budget(1, 1, 1)), "Experiment.cases is empty"),
        (lambda: Experiment(["c"], (), Budget(1, 1, 1)), "Experiment.attacks is empty"),
        (lambda: Experiment(["c"], ("pixel", "pixel"), Budget(1, 1, 1)), r"Experiment.attacks repeats \['pixel'\]"),
        (lambda: Experiment(["c"], ("pixel",), Budget(1, 1, 1), device="gpu"), "device 'gpu' is not a device name"),
    ]
    for make, message in bad:
        with pytest.raises(ValueError, match=re.escape(message) if "[" not in message else message):
            make()
    x, y = heldout[0][:3], heldout[1][:3]
    loop = [
        ((x, y, 2), {}, "has 3 images and 3 labels: give one label per image, and a positive multiple of batch_size=2"),
        ((x[:2], y, 1), {}, "has 2 images and 3 labels"),
        ((x[:2], y[:2], 1), {"attack_params": {"batch_size": 4}}, "attack_params may not set ['batch_size']"),
        ((x[:2], np.eye(10)[y[:2]], 1), {}, "labels have shape (2, 10): give class indices"),
    ]
    for (xs, ys, batch_size), kwargs, message in loop:
        with pytest.raises(ValueError, match=re.escape(message)):
            next(attack_batches(lenet_clf, xs, ys, "pixel", None, Budget(1, 1, 1), batch_size, 0, **kwargs))


def test_private_images_may_be_tensors_that_require_grad(lenet_clf, heldout) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    tracked = torch.as_tensor(x).requires_grad_(True)
    for a, b in zip(client_gradients(lenet_clf, tracked, y), client_gradients(lenet_clf, x, y), strict=True):
        np.testing.assert_array_equal(a, b)


def test_client_gradients_that_are_not_finite_are_refused_at_their_source(heldout) -> None:
    from art_gifd.models import convnet
    from art_gifd.utility import measure_utility

    x, y = heldout[0][:2], heldout[1][:2]
    unweighted = _estimator(
        make_classifier(convnet(seed=0), (1, 32, 32)).model, loss=torch.nn.CrossEntropyLoss(weight=torch.zeros(10))
    )  # every class weighted 0: the mean loss is 0 / 0
    with pytest.raises(ValueError, match="gradient holds NaN or infinite values before any defence"):
        client_gradients(unweighted, x, y)
    # a utility run that diverges is an error, not the accuracy of a NaN model (argmax of NaN logits: class 0)
    clf = make_classifier(convnet(seed=0), (1, 32, 32))
    data = (heldout[0][:64], heldout[1][:64], heldout[0][64:96], heldout[1][64:96])
    with pytest.raises(ValueError, match="NaN or infinite"):
        measure_utility(None, clf, data, rounds=5, batch_size=8, learning_rate=1e3, probe_batches=1)


def test_dropout_in_train_mode_is_seeded_for_the_client_and_refused_for_the_attack(heldout) -> None:
    from art_gifd import LocalTraining, client_update

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 32), torch.nn.Dropout(0.5))
    clf = make_classifier(torch.nn.Sequential(*model, torch.nn.ReLU(), torch.nn.Linear(32, 10)), (1, 32, 32))
    x, y = heldout[0][:2], heldout[1][:2]
    first, again, other = (client_gradients(clf, x, y, train_mode=True, seed=s)[1] for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)  # dropout is on: the seed picks its masks
    training = LocalTraining(0.1, steps=2)
    update = [client_update(clf, x, y, training, train_mode=True, seed=3)[1] for _ in range(2)]
    np.testing.assert_array_equal(*update)
    with pytest.raises(ValueError, match=r"train_mode=True with dropout layers \(\['2'\]\)"):
        InvertingGradientsAttack(clf, train_mode=True, verbose=False)


def test_extreme_magnitudes_are_refused_before_float32_loses_them(lenet_clf, heldout, caplog) -> None:
    from art_gifd import LocalTraining
    from art_gifd.attacks.ggl import GGLAttack

    x, y = heldout[0][:1], heldout[1][:1]
    gradient = client_gradients(lenet_clf, x, y)
    attack = InvertingGradientsAttack(lenet_clf, max_iter=1, num_restarts=1, verbose=False)
    for scale in (1e20, 1e-20):
        with pytest.raises(ValueError, match=r"norm is .* outside \[1e-15, 1e\+15\], .* divide it by its norm"):
            attack.reconstruct([g * scale for g in gradient], y)
    for make in (
        lambda: LocalTraining(1e20, steps=1),
        lambda: LocalTraining(0.1, steps=1, weight_decay=1e300),
        lambda: InvertingGradientsAttack(lenet_clf, learning_rate=1e308),
        lambda: GGLAttack(lenet_clf, None, sigma=1e308),
    ):
        with pytest.raises(ValueError, match=r"must lie in .*1e\+06\]"):
            make()
    # images on a smaller scale than the model's are named
    from art.estimators.classification import PyTorchClassifier

    wide = PyTorchClassifier(lenet_clf.model, torch.nn.CrossEntropyLoss(), (1, 32, 32), 10, clip_values=(0.0, 255.0))
    with caplog.at_level("WARNING"):
        client_gradients(wide, x * 0.01, y)
    assert "under 1/50 of the estimator's clip_values [0, 255]" in caplog.text


def test_console_entry_point_loads_torch_only_inside_main() -> None:
    """Ctrl-C while torch loads must reach ``main``'s handler: the entry point's own import stays light."""
    code = (
        "import sys, art_gifd, art_gifd.cli\n"
        "assert 'torch' not in sys.modules, 'torch loaded before main'\n"
        "assert art_gifd.GIFDAttack.__name__ == 'GIFDAttack' and 'torch' in sys.modules\n"
        "assert set(art_gifd.__all__) <= set(dir(art_gifd))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    module = subprocess.run(
        [sys.executable, "-m", "art_gifd", "--version"], capture_output=True, text=True, timeout=120
    )
    assert module.returncode == 0 and module.stdout.startswith("art-gifd "), module.stderr  # python -m runs the CLI


class _AuxHeadNet(torch.nn.Module):
    """A model whose auxiliary head runs only in training (as GoogLeNet's): in eval mode its weights get no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(1, 4, 5, stride=2, padding=2), torch.nn.BatchNorm2d(4)
        self.aux = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.fc = torch.nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.bn(self.conv(x)))
        if self.training:
            h = h + self.aux(h)
        return self.fc(h.flatten(1))


def test_parameters_the_forward_pass_does_not_reach_are_matched_as_zero(heldout, default_prior) -> None:
    from art_gifd.attacks import GradInversionAttack

    torch.manual_seed(0)
    classifier = make_classifier(_AuxHeadNet().eval(), (1, 32, 32))
    x, y = heldout[0][:1], heldout[1][:1]
    gradient = client_gradients(classifier, x, y)
    assert not any(np.abs(g).max() for g in gradient[4:8])  # the aux head's weights: nothing shared
    common = {"num_restarts": 1, "seed": 0, "verbose": False}
    for attack in (
        InvertingGradientsAttack(classifier, max_iter=2, **common),
        GradInversionAttack(classifier, max_iter=2, **common),
        GIFDAttack(classifier, default_prior, max_stage=1, steps_per_stage=2, **common),
    ):
        result = attack.reconstruct(gradient, y)
        assert result.images.shape == (1, 1, 32, 32) and np.isfinite(result.best_loss)


def test_a_last_record_without_its_newline_is_kept(tmp_path) -> None:
    from art_gifd.store import ResultsFile

    store = ResultsFile(tmp_path / "r.jsonl")
    for k in range(2):
        store.append({"job_id": f"j{k}", "status": "ok"})
    store.path.write_bytes(store.path.read_bytes().rstrip(b"\n"))  # as an editor that drops the final newline
    assert [r["job_id"] for r in store.read(repair=True)[1]] == ["j0", "j1"]
    store.append({"job_id": "j2", "status": "ok"})
    assert [r["job_id"] for r in store.read()[1]] == ["j0", "j1", "j2"]
    store.path.write_bytes(store.path.read_bytes() + b'{"job_id": "j3", "sta')  # a write cut short: discarded
    assert [r["job_id"] for r in store.read(repair=True)[1]] == ["j0", "j1", "j2"]


def test_bench_refuses_a_results_path_that_holds_another_kind_of_text(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\nline two without newline")
    assert main(["bench", "smoke", "--results", str(notes), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a file whose first line is not JSON, not the JSON-lines results file of art-gifd bench" in err
    assert notes.read_text() == "my precious notes\nline two without newline"  # untouched


def test_cli_options_of_the_other_executor_a_version_and_a_closed_pipe(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for argv, message in (
        (["bench", "smoke", "--ray-cpus", "2"], "error: --ray-cpus only apply with --executor ray."),
        (["bench", "smoke", "--executor", "ray", "--workers", "3"], "error: --workers only apply with the local"),
    ):
        assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()
    from art_gifd.cli import _parser

    assert _parser().parse_args(["bench", "smoke", "--log-level", "info"]).log_level == "INFO"  # after the command too
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("art-gifd 0.")
    results = tmp_path / "r.jsonl"
    results.write_text('{"type": "run", "config": {}}\n')
    (tmp_path / "r-report").write_text("a file where the default report folder goes")
    assert main(["bench-report", str(results)]) == 2
    assert "(the default report folder) is a file: give the report a folder with --out" in capsys.readouterr().err
    listing = subprocess.run(  # the reader stops after one line, as `| head -1` does
        f"'{sys.executable}' -m art_gifd.cli bench smoke --list --results '{tmp_path / 'l.jsonl'}' | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.stderr == "" and len(listing.stdout) == 10


def test_a_bench_seed_beyond_32_bits_runs(tmp_path, monkeypatch) -> None:
    from art_gifd.bench.config import load_config
    from art_gifd.bench.executors import LocalExecutor
    from art_gifd.bench.runner import run_benchmark

    profile = Path(__file__).resolve().parents[1] / "art_gifd" / "bench" / "profiles" / "smoke.toml"
    config = tmp_path / "seed.toml"
    config.write_text(profile.read_text().replace("seeds = [0]", f"seeds = [{2**40}]"))
    summary = run_benchmark(load_config(config), tmp_path / "r.jsonl", LocalExecutor(), progress=False)
    assert summary.errors == 0 and summary.ok == summary.total > 0


def test_an_image_of_another_size_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch) -> None:
    from PIL import Image, ImageFile

    from art_gifd.data import load_image_folder

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(tmp_path / "a" / "1.png")
    Image.fromarray(np.zeros((4000, 3000), dtype=np.uint8), mode="L").save(tmp_path / "a" / "2.png")
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self))
    with pytest.raises(ValueError, match=r"1\.png' is 4x4 pixels but '.*2\.png' is 3000x4000\. Resize every"):
        load_image_folder(tmp_path)
    assert (3000, 4000) not in decoded  # refused from the header
    with pytest.raises(ValueError, match=r"1\.png' is 4x4 pixels, not the model's input size 32x32\. Resize"):
        load_image_folder(tmp_path, image_size=(32, 32))


def test_values_the_client_side_and_the_defences_would_misread_are_refused(lenet_clf, heldout, default_prior) -> None:
    from art_gifd import LocalTraining
    from art_gifd.attacks.gifd import split_steps
    from art_gifd.defenses import DPSGD, Clip, FunctionDefense
    from art_gifd.defenses.transforms import AdditiveNoise
    from art_gifd.metrics import psnr
    from art_gifd.utility import measure_utility

    x, y = heldout[0][:2], heldout[1][:2]
    dp = {"max_grad_norm": 1.0, "sample_rate": 0.01, "steps": 100, "delta": 1e-5}
    for call, message in (
        # a string flag is true to Python: the client would compute a train-mode gradient where "false" was meant
        (lambda: client_gradients(lenet_clf, x, y, train_mode="false"), "train_mode must be True or False"),
        (lambda: measure_utility(None, lenet_clf, rounds=0, verbose="no"), "verbose must be True or False"),
        (lambda: measure_utility(None, lenet_clf, rounds=0, data=iter([x, y, x, y])), "data must be a tuple"),
        (lambda: LocalTraining(0.1, shuffle=np.array([True])), "shuffle must be True or False"),
        # choices given as arrays: named, not compared element-wise or stored as arrays
        (lambda: Prune(0.5, scope=np.array(["layer"])), "Unknown pruning scope"),
        (lambda: AdditiveNoise(0.1, np.array(["laplace"])), "Unknown noise distribution"),
        (lambda: DPSGD(1.0, accountant=np.array(["rdp"]), **dp), "Unknown accountant"),
        (lambda: LocalTraining(0.1, optimizer=np.array(["adam", "sgd"])), "optimizer must be one of"),
        # a tolerance of 0 never ended Opacus' search, NaN ended it at once with 20x the noise asked for
        (lambda: DPSGD.for_epsilon(1.0, epsilon_tolerance=0.0, **dp), r"epsilon_tolerance must lie in \[1e-09"),
        (lambda: DPSGD.for_epsilon(1.0, epsilon_tolerance=float("nan"), **dp), "epsilon_tolerance must be a finite"),
        (lambda: DPSGD(1e-200, **dp), r"noise_multiplier must lie in \[1e-12, 1e\+06\]"),
        (lambda: Clip(1e-300), r"max_norm must lie in \[1e-15, 1e\+15\]"),
        (lambda: psnr(np.zeros((1, 1, 4, 4)) + 0.5j, np.zeros((1, 1, 4, 4))), "reconstructed must hold real numbers"),
        (lambda: psnr(np.full((1, 1, 4, 4), "0.5"), np.zeros((1, 1, 4, 4))), "reconstructed must hold real numbers"),
        (lambda: psnr(np.zeros((1, 1, 4, 4)), np.ma.masked_array(np.zeros((1, 1, 4, 4)))), "original is a masked"),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert LocalTraining(0.1, optimizer="adam", betas=np.array([0.9, 0.99])).betas == (0.9, 0.99)
    assert split_steps(1000, 2, [1e308, 1e308]) == [500, 500]  # the weights' sum would overflow
    grads = client_gradients(lenet_clf, x[:1], y[:1])
    attack = InvertingGradientsAttack(lenet_clf, max_iter=1, num_restarts=1, verbose=False, seed=0)
    sparse = attack.reconstruct([torch.as_tensor(g).to_sparse() for g in grads], y[:1])
    assert np.array_equal(sparse.images, attack.reconstruct(grads, y[:1]).images)  # a sparse gradient: its numbers
    with pytest.raises(ValueError, match=r"Gradient of '0\.weight' is a meta tensor"):
        attack.reconstruct([torch.empty(g.shape, device="meta") for g in grads], y[:1])
    with pytest.warns(UserWarning, match="holds a plain function, which the attack does not replay"):
        InvertingGradientsAttack(lenet_clf, max_iter=1, defense=FunctionDefense(lambda gs: gs))
    nested = Compose([Compose([FunctionDefense(lambda gs: gs)]), Prune(0.5)])  # the function one level further down
    with pytest.warns(UserWarning, match="holds a plain function, which the attack does not replay"):
        InvertingGradientsAttack(lenet_clf, max_iter=1, defense=nested)


def test_models_and_priors_without_values_or_parameters_and_single_sample_batch_norm_are_named(lenet_clf) -> None:
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.models import ModelLoadError, lenet, make_classifier
    from art_gifd.priors.embedded import load_default_prior

    with torch.device("meta"):  # built lazily, its weights never loaded
        lazy = lenet(seed=0)
    with pytest.raises(ModelLoadError, match=r"weights \['0\.weight', .* are on the meta device \(no values\)"):
        make_classifier(lazy, (1, 32, 32))
    with pytest.raises(ValueError, match=r"The prior's weights .* are on the meta device \(no values\): load them"):
        GIFDAttack(lenet_clf, load_default_prior().to("meta"))

    class Buffers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.ones(16, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w

    x = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    buffers = PyTorchClassifier(Buffers(), torch.nn.CrossEntropyLoss(), (1, 4, 4), 3, clip_values=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"The FL model has no parameters \(buffers only\)"):
        client_gradients(buffers, x, [0, 1])
    torch.manual_seed(0)
    norm = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    with pytest.raises(ValueError, match=r"BatchNorm in train mode \(train_mode=True\) on a batch of 1 sample"):
        client_gradients(make_classifier(norm, (1, 4, 4), 3), x[:1], [0], train_mode=True)


def test_reconstruct_many_names_the_observation_that_fails(lenet_clf, heldout, default_prior) -> None:
    from art_gifd.models import build_model

    x, y = heldout
    grads = client_gradients(lenet_clf, x[:1], y[:1])
    other = make_classifier(build_model("convnet", 1, 32, 10, seed=0), (1, 32, 32))
    attack = InvertingGradientsAttack(lenet_clf, max_iter=1, num_restarts=1, verbose=False, seed=0)
    with pytest.raises(ValueError, match=r"observations holds 8 arrays, not gradients: .* pass \[gradient\]"):
        attack.reconstruct_many(grads)
    with pytest.raises(ValueError, match=r"^Observation 2: Gradient of '0.weight' has shape \(16, 1, 3, 3\)"):
        attack.reconstruct_many([grads, grads, client_gradients(other, x[:1], y[:1])])
    with pytest.raises(ValueError, match=r"^Observation 1: Labels must be class indices"):
        attack.reconstruct_many([grads, grads], labels=[y[:1], int(y[1])])
