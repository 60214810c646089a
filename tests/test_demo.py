"""The demo's quick path writes a valid results.json, the figure and a report holding the measured numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from art_gifd.attacks.registry import ATTACKS
from art_gifd.cli import main
from art_gifd.experiment import SCHEMA

RUN_KEYS = {
    "attack",
    "defense",
    "dataset",
    "model",
    "prior",
    "batch_size",
    "num_images",
    "psnr",
    "ssim",
    "lpips",
    "label_accuracy",
    "seconds",
    "steps",
    "per_image",
}


def test_quick_demo(tmp_path, capsys) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "report.html") in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["schema"] == SCHEMA
    assert {"torch", "art", "device", "seed"} <= set(results["environment"])
    runs = results["runs"]
    assert {r["attack"] for r in runs} == set(ATTACKS)
    assert {r["batch_size"] for r in runs} == {1, 2, 4}
    fedavg = [r for r in runs if r["federated"]["algorithm"] == "fedavg"]
    assert {(r["model"], r["batch_size"], r["federated"]["epochs"]) for r in fedavg} == {("convnet", 2, 2)}
    assert "fedavg×4" in printed
    assert {r["model"] for r in runs} == {"lenet", "convnet"}
    assert {r["dataset"] for r in runs} == {"mnist32", "digits32"}
    budget = results["budget"]["total_steps"]
    for run in runs:
        assert set(run) >= RUN_KEYS
        assert len(run["per_image"]["psnr"]) == run["num_images"] == len(run["per_image"]["ssim"])
        assert run["psnr"] == pytest.approx(np.mean(run["per_image"]["psnr"]))
        assert run["steps"] == budget  # equal step budget for every attack
        assert run["label_accuracy"] == 1.0  # labels are exact for these batches (FedAvg's included)
        assert (run["lpips"] is None) == (run["lpips_unavailable_reason"] is not None)
    # the attacks reconstruct: in-distribution digits on the sigmoid LeNet are recognisable for GIFD
    gifd = next(
        r for r in runs if (r["attack"], r["model"], r["dataset"], r["batch_size"]) == ("gifd", "lenet", "mnist32", 1)
    )
    assert gifd["ssim"] > 0.5
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    for run in runs:
        assert f"{run['psnr']:.2f} ± {run['psnr_std']:.2f}" in html
    assert (tmp_path / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _interrupted_reruns_keep_one_runs_files(tmp_path, runs, capsys)


def _interrupted_reruns_keep_one_runs_files(out, runs, capsys) -> None:
    """A rerun into the folder, interrupted while its figure is drawn or its files are written (the search itself
    replaced by the first run's numbers): the folder holds one run's set of files, or no report at all."""
    import art_gifd.demo as demo

    before = {name: (out / name).read_bytes() for name in ("results.json", "report.html", "reconstructions.png")}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "run_experiment", lambda *args, **kwargs: runs)
        patch.setattr(demo, "reconstruction_grid", interrupt)
        assert main(["demo", "--quick", "--seed", "3", "--out", str(out), "--no-progress"]) == 130
    assert "is an earlier run's" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before  # the earlier run's set, untouched
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "run_experiment", lambda *args, **kwargs: runs)
        grid = demo.reconstruction_grid  # drawn from one blank row: the stand-in search collected none
        patch.setattr(
            demo, "reconstruction_grid", lambda rows, attacks, path: grid([("x", np.zeros((1, 4, 4)), {})], [], path)
        )
        patch.setattr(demo, "write_bytes_atomic", interrupt)  # the report, written last
        assert main(["demo", "--quick", "--seed", "3", "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "the demo wrote no report;" in err and not (out / "report.html").exists()
    assert json.loads((out / "results.json").read_text())["environment"]["seed"] == 3
    assert not list(out.glob(".*tmp*"))
