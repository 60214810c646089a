"""The benchmark scripts' command lines: bad values end in one line before any work, and outputs never land on the
committed results unless asked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def script(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("fedavg", ["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
        ("fedavg", ["--seeds", "-1"], "--seeds: expected an integer in [0, "),
        ("ablation", ["--case", "lenet-mnist", "--images", "40"], "case 'lenet-mnist' has 16 images in its tune split"),
        ("labels", ["--batches", "1"], "--batches: expected an integer >= 2, got 1"),
        ("labels", ["--pool", "905", "900"], "give a range of at least 8 digits"),
        ("many_clients", ["--clients", "9"], "--clients: expected an integer in [1, 8], got 9"),
        ("many_clients", ["--clients", "1", "--cases", "two rounds"], "'two rounds' needs at least 2 clients"),
        ("ood", ["--stages", "9"], "--stages: expected an integer in [1, 4], got 9"),
        ("ood", ["--model", "bogus"], "invalid choice: 'bogus'"),
        ("baselines", ["--images", "2", "--batch-sizes", "4"], "--images (2) must be a multiple of every batch size"),
        ("shared_labels", ["--seeds", "0", "-1"], "--seeds: expected an integer in [0, "),
        ("speed", ["--stages", "0"], "--stages: expected an integer >= 1, got 0"),
        ("speed", ["--learning-rate", "nan"], "--learning-rate: expected a finite number > 0, got nan"),
        ("train_prior", ["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        ("peer_breaching", ["--start", "999"], "is beyond the 1000 held-out digits"),
    ],
)
def test_bad_arguments_end_in_one_line(name: str, args: list[str], message: str) -> None:
    if name == "peer_breaching":
        args = [*args, "--methods", "ours"]  # breaching itself is not installed here
    done = script(name, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_late_setting_error_is_one_line_not_a_traceback() -> None:
    done = script("speed", "--model", "lenet", "--stages", "9", "--quick")  # the prior's 4 blocks: known on loading
    assert done.returncode == 2 and "--stages must lie in [1, 4]" in done.stderr and "Traceback" not in done.stderr


def test_the_shipped_prior_is_not_overwritten(tmp_path: Path) -> None:
    weights = ROOT / "art_gifd" / "priors" / "weights"
    done = script("train_prior", "--out", str(weights), "--epochs", "1")
    assert done.returncode == 2 and "mnist32_dcgan.pt exists: pass --overwrite" in done.stderr


def test_a_fedavg_report_of_other_runs_is_written_beside_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(RESULTS / "fedavg_runs", runs)
    committed = (RESULTS / "fedavg.md").read_text()
    done = script("fedavg", "--report", "--runs", str(runs))
    assert done.returncode == 0, done.stderr
    assert (RESULTS / "fedavg.md").read_text() == committed
    written = (runs / "fedavg.md").read_text()
    assert written.splitlines()[4:] == committed.splitlines()[4:]  # the same tables from the same runs
    with (runs / "size4.jsonl").open("a") as handle:  # a run of another FL model joins the folder
        handle.write(
            '{"setting": "1 step", "size": 4, "attack": "gifd", "method": "replay", "first": 0, "seed": 0, '
            '"steps_per_stage": 50, "restarts": 2, "rounds": 1, "psnr": 9.0, "model_accuracy": 0.1}\n'
        )
    done = script("fedavg", "--report", "--runs", str(runs))
    assert done.returncode != 0 and "runs of 2 FL models" in done.stderr
