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


def test_quality_records_of_other_seeds_are_also_pooled_into_one_row(speed, tmp_path: Path, monkeypatch) -> None:
    def record(seed: int, psnr: dict[str, float]) -> dict:
        cpu = {"reference": 10.0, "reference R=1": 3.0, "ours x0.25": 1.0, "ours x0.5": 2.0, "ours x1": 4.0}
        runs = [
            {"method": m, "first": 0, "seed": seed, "psnr": p, "cpu": cpu[m], "wall": cpu[m]} for m, p in psnr.items()
        ]
        table, ttq = speed.summarise_quality(runs)
        protocol = {"batch_size": 4, "steps_per_stage": 100, "seeds": [seed]}
        return {
            "case": {"name": "toy", "images": 4},
            "protocol": protocol,
            "ours_feature_restarts": "all",
            "table": table,
            "time_to_quality": ttq,
            "runs": runs,
        }

    methods = ("reference", "reference R=1", "ours x0.25", "ours x0.5", "ours x1")
    for seed, values in ((0, (30, 25, 20, 26, 32)), (1, (20, 18, 15, 18, 24))):
        path = tmp_path / f"quality_cpu_toy_b4_seed{seed}.json"
        path.write_text(json.dumps(record(seed, dict(zip(methods, values, strict=True)))))
    monkeypatch.setattr(speed, "RESULTS", tmp_path)
    text = speed.quality_report(speed.parse_args(["--mode", "quality-report", "--out", str(tmp_path / "q.md")]))
    rows = [line for line in text.splitlines() if line.startswith("| toy |")]
    assert len(rows) == 3 and "| 0 1 (pooled) |" in rows[2]
    # pooled: ours 28 against the reference's 25, paired +2 and +4; ours reaches 25 dB at 3 of the reference's 10 s
    assert "| 25.00 ± 5.00 |" in rows[2] and "| 28.00 ± 4.00 |" in rows[2]
    assert "| +3.00 ± 1.00 (2/2) |" in rows[2] and "| 3.33× |" in rows[2]
    assert all("| cpu, 1 / 1 |" in row for row in rows)  # CPU records name no GPU
    gpu = record(2, dict(zip(methods, (30, 25, 20, 26, 32), strict=True)))
    for run in gpu["runs"]:
        run["peak_gpu_memory_bytes"] = (3 if run["method"] == "reference" else 5) * 2**20
    gpu["table"], _ = speed.summarise_quality(gpu["runs"], "wall")
    gpu["protocol"].update(clock="wall", batch_size=1)  # a row of its own
    (tmp_path / "quality_cuda_toy_b1.json").write_text(json.dumps({**gpu, "device_name": "NVIDIA H100"}))
    text = speed.quality_report(speed.parse_args(["--mode", "quality-report", "--out", str(tmp_path / "q2.md")]))
    assert "| wall, 1 / 1, NVIDIA H100, peak 5 MiB |" in text


def test_time_to_quality_is_read_on_the_clock_asked_for(speed) -> None:
    # ours uses two threads: twice its wall time in CPU seconds; the reference one thread
    psnr = {"reference": 30.0, "reference R=1": 25.0, "ours x0.25": 20.0, "ours x0.5": 26.0, "ours x1": 32.0}
    wall = {"reference": 10.0, "reference R=1": 3.0, "ours x0.25": 1.0, "ours x0.5": 2.0, "ours x1": 4.0}
    runs = [
        {"method": m, "first": 0, "seed": 0, "psnr": p, "wall": wall[m], "cpu": wall[m] * (2 if "ours" in m else 1)}
        for m, p in psnr.items()
    ]
    _, on_cpu = speed.summarise_quality(runs, "cpu")
    table, on_wall = speed.summarise_quality(runs, "wall")
    # 30 dB is reached two thirds of the way from ½ to all of the steps: at 3.33 wall seconds, 6.67 CPU seconds
    assert on_wall["reference"]["speedup"] == pytest.approx(10 / (2 + 4 / 3))
    assert on_cpu["reference"]["speedup"] == pytest.approx(10 / (4 + 8 / 3))
    assert on_wall["reference"]["ours_wall_seconds"] == pytest.approx(2 + 4 / 3)
    assert table["ours x1"]["cpu"]["mean"] == 8.0 and table["ours x1"]["wall"]["mean"] == 4.0


def test_options_another_mode_reads_and_records_that_are_not_quality_records_are_named(
    speed, tmp_path: Path, capsys
) -> None:
    for argv, named in (
        (["--mode", "quality", "--case", "lenet-mnist", "--model", "resnet18"], "--model: not read by --mode quality"),
        (
            ["--mode", "equal", "--images", "4", "--clock", "wall"],
            "--clock, --images: not read by --mode equal; leave them",
        ),
    ):
        with pytest.raises(SystemExit):
            speed.parse_args([*argv, "--out", str(tmp_path / "x.json")])
        assert named in capsys.readouterr().err
    with pytest.raises(ValueError, match="--batch-size 5000 is more than the 1000 held-out digits"):
        speed.main(["--model", "lenet", "--batch-size", "5000", "--out", str(tmp_path / "x.json")])
    report = ["--mode", "quality-report", "--records", str(tmp_path), "--out", str(tmp_path / "q.md")]
    with pytest.raises(ValueError, match=r"holds no quality_\*\.json record: run --mode quality first"):
        speed.main(report)
    (tmp_path / "quality_zz.json").write_text('{"case": {"name": "x"}}')
    with pytest.raises(ValueError, match=r"quality_zz\.json' is not a quality record of this script \(case\.images is"):
        speed.main(report)
    (tmp_path / "quality_zz.json").write_text('{"case": ')
    with pytest.raises(ValueError, match=r"quality_zz\.json' cannot be read as a quality record \(Expecting value"):
        speed.main(report)
    assert not (tmp_path / "q.md").exists()
