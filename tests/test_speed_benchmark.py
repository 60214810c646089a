"""``benchmarks/speed.py`` end to end on a tiny case: the batched attack and the sequential reference run the same
protocol from the same starts, so their outputs agree, and the JSON record holds what the summary reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def speed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import speed

    return speed


def test_reference_and_batched_reach_the_same_reconstruction(speed, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    argv = ["--model", "lenet", "--restarts", "2", "--stages", "2", "--steps-per-stage", "6", "--repeats", "1"]
    record = speed.main([*argv, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["speedup_median_paired"] == pytest.approx(record["speedup_median_paired"])
    assert saved["speedup_paired"] == [pytest.approx(saved["seconds"]["reference"][0] / saved["seconds"]["batched"][0])]
    assert saved["protocol"]["restarts"] == 2 and saved["steps_per_restart_measured"] == 12
    assert saved["full_protocol"]["extrapolated"] is True
    assert saved["device"] == "cpu" and saved["peak_gpu_memory_bytes"] is None
    quality = saved["quality"]
    reference, batched = quality["reference"], quality["batched"]
    # Same prior, objective, optimiser and starting latents: only the order of floating-point operations differs.
    assert batched["matching_loss"] == pytest.approx(reference["matching_loss"], rel=1e-3)
    np.testing.assert_allclose(batched["psnr_db"], reference["psnr_db"], atol=0.05)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--restarts", "0", "--restarts: expected an integer >= 1, got 0"), ("--device", "tpu", "--device must be cpu")],
)
def test_bad_arguments_are_named(speed, flag: str, value: str, message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        speed.parse_args([flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_each_mode_writes_its_own_default_file(speed) -> None:
    """The quality report, a Markdown summary, must never land on a committed speed record's JSON."""
    results = ROOT / "benchmarks" / "results"
    assert speed.parse_args(["--mode", "quality-report", "--overwrite"]).out == results / "quality.md"
    assert speed.parse_args(["--model", "lenet", "--overwrite"]).out == results / "speed_cpu_lenet_32.json"
    profile = speed.parse_args(["--mode", "profile", "--model", "convnet", "--batch-size", "1", "--overwrite"]).out
    assert profile == results / "profile_cpu_convnet_32_b1.json"
