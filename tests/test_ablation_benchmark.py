"""``benchmarks/ablation.py`` and the quality mode of ``benchmarks/speed.py`` end to end on tiny budgets: runs are
durable and resumed, reports hold the paired numbers of the runs, and time-to-quality is read off the curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import ablation, speed

    return ablation, speed


def test_ablation_runs_resume_and_report_paired_differences(benchmarks, tmp_path: Path) -> None:
    ablation, _ = benchmarks
    runs = tmp_path / "runs"
    argv = ["--case", "lenet-mnist", "--steps", "3", "--images", "2", "--seeds", "0", "1", "--batch-sizes", "1"]
    argv += ["--configs", "new", "old", "R=1", "tv summed over batch", "--runs", str(runs)]
    ablation.main(argv)
    lines = (runs / "lenet-mnist.jsonl").read_text().splitlines()
    # "tv summed over batch" is the new default itself at B=1, so it is skipped: 3 configurations × 2 images × 2 seeds
    assert len(lines) == 12
    ablation.main(argv)  # everything is there already: nothing runs again
    assert (runs / "lenet-mnist.jsonl").read_text().splitlines() == lines
    with open(runs / "lenet-mnist.jsonl", "a") as handle:  # a torn last line (interrupted write) is ignored
        handle.write('{"case": "lenet-mn')
    ablation.main(argv)  # resuming after the torn line repairs it, so later appends start on a fresh line
    assert (runs / "lenet-mnist.jsonl").read_text().splitlines() == lines
    from art_gifd.store import ResultsBusy, ResultsFile

    busy = pytest.raises(ResultsBusy, match=r"being written by another benchmarks/ablation\.py")
    with ResultsFile(runs / "lenet-mnist.jsonl").lock("another process"), busy:  # a second writer is refused at once
        ablation.main(argv)
    with open(runs / "lenet-mnist.jsonl", "a") as handle:
        handle.write('{"case": "lenet-mn')
    out = tmp_path / "report" / "ablation"
    out.parent.mkdir()
    ablation.main(["--report", "--runs", str(runs), "--out", str(out)])
    record = json.loads(out.with_suffix(".json").read_text())
    rows = {r["config"]: r for r in record["rows"]}
    assert set(rows) == {"new", "old", "R=1"}
    runs_by = {}
    for line in lines:
        run = json.loads(line)
        runs_by.setdefault(run["config"], {})[(run["first"], run["seed"])] = run["psnr"]
    diffs = [runs_by["R=1"][k] - runs_by["new"][k] for k in runs_by["new"]]
    assert rows["R=1"]["paired_diff"] == pytest.approx(np.mean(diffs))
    assert rows["R=1"]["baseline"] == "new" and rows["R=1"]["paired_runs"] == 4
    assert rows["new"]["psnr"] == pytest.approx(np.mean(list(runs_by["new"].values())))
    assert "| R=1 | 4 |" in out.with_suffix(".md").read_text()
    assert (out.parent / "ablation_restarts.png").stat().st_size > 0
    alone = tmp_path / "alone"  # R=1 without its baseline's runs: no difference, not nan over 0/0
    alone.mkdir()
    (alone / "lenet-mnist.jsonl").write_text("".join(f"{x}\n" for x in lines if '"config": "R=1"' in x))
    ablation.main(["--report", "--runs", str(alone), "--out", str(tmp_path / "report" / "alone")])
    row = json.loads((tmp_path / "report" / "alone.json").read_text())["rows"][0]
    assert row["config"] == "R=1" and row["paired_runs"] == 0 and row["wins"] is None
    assert "| — | — | — |" in (tmp_path / "report" / "alone.md").read_text()


def test_old_configuration_is_the_old_objective_in_new_units(benchmarks) -> None:
    ablation, _ = benchmarks
    from benchmarks.cases import CASES

    old = ablation.old(CASES["convnet-rgb64"], 4)
    # Σ_b 1e-6 Σ x_b² = mean_b (1e-6 · 3·64·64 · 4) · mean(x_b²); TV summed over 4 images = 4 × the mean
    assert old["norm_weight"] == pytest.approx(1e-6 * 3 * 64 * 64 * 4)
    assert old["tv_weight"] == pytest.approx(4e-4)
    assert old["latent_constraint"] == "none" and old["feature_restarts"] is None


def test_bad_ablation_arguments_are_named(benchmarks, capsys: pytest.CaptureFixture) -> None:
    ablation, _ = benchmarks
    for argv, message in (
        (["--case", "lenet-mnist", "--configs", "nope"], "unknown configuration"),
        (["--case", "lenet-mnist", "--images", "6", "--batch-sizes", "4"], "divide --images"),
        (["--split", "tune"], "--case is required"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            ablation.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_time_to_quality_interpolates_between_budgets(benchmarks) -> None:
    _, speed = benchmarks
    curve = [(1.0, 20.0), (2.0, 30.0), (4.0, 35.0)]
    assert speed.time_to_quality(curve, 25.0) == pytest.approx(1.5)
    assert speed.time_to_quality(curve, 18.0) == pytest.approx(1.0)
    assert speed.time_to_quality(curve, 35.0) == pytest.approx(4.0)
    assert speed.time_to_quality(curve, 36.0) is None


def test_quality_mode_records_every_run(benchmarks, tmp_path: Path) -> None:
    _, speed = benchmarks
    out = tmp_path / "quality.json"
    argv = ["--mode", "quality", "--case", "lenet-mnist", "--images", "1", "--seeds", "0", "--steps-per-stage", "4"]
    record = speed.main([*argv, "--out", str(out)])
    saved = json.loads(out.read_text())
    methods = {"reference", "reference R=1", "ours x0.25", "ours x0.5", "ours x1"}
    assert {r["method"] for r in saved["runs"]} == methods and len(saved["runs"]) == 5
    assert saved["table"]["ours x1"]["psnr"]["mean"] == pytest.approx(
        next(r["psnr"] for r in saved["runs"] if r["method"] == "ours x1")
    )
    assert saved["case"]["split"] == "eval" and record["time_to_quality"].keys() == {"reference", "reference R=1"}
    run = saved["runs"][0]
    assert run["labels"] == [3] and len(run["per_image_psnr"]) == 1  # the evaluation split's first digit is a 3
    assert run["per_image_psnr"][0] == pytest.approx(run["psnr"])


def test_quality_report_splits_batched_rows_by_shared_labels(benchmarks) -> None:
    _, speed = benchmarks
    record = {
        "case": {"name": "convnet-mnist"},
        "protocol": {"batch_size": 4, "seeds": [0]},
        "runs": [
            {"method": "ours x1", "labels": [3, 3, 1, 4], "per_image_psnr": [15.0, 17.0, 30.0, 34.0]},
            {"method": "reference", "labels": [3, 3, 1, 4], "per_image_psnr": [20.0, 20.0, 40.0, 40.0]},
            {"method": "ours x0.5", "labels": [3, 3, 1, 4], "per_image_psnr": [1.0, 1.0, 1.0, 1.0]},
        ],
    }
    table = speed._shared_label_table([record])
    assert "| convnet-mnist | 4 | 0 | ours x1 | 2, 32.00 ± 2.00 | 2, 16.00 ± 1.00 |" in table
    assert "| convnet-mnist | 4 | 0 | reference | 2, 40.00 ± 0.00 | 2, 20.00 ± 0.00 |" in table
    assert "ours x0.5" not in table and "reference R=1" not in table
    record["runs"] = [{k: v for k, v in r.items() if k != "per_image_psnr"} for r in record["runs"]]  # older records
    assert speed._shared_label_table([record]) == ""


def test_bad_quality_arguments_are_named(benchmarks, capsys: pytest.CaptureFixture) -> None:
    _, speed = benchmarks
    for argv, message in (
        (["--mode", "quality", "--case", "nope"], "--case must be one of"),
        (["--mode", "quality", "--feature-restarts", "some"], "--feature-restarts must be default, all, halving"),
        (["--mode", "quality", "--images", "6", "--batch-size", "4"], "must be a multiple of --batch-size"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            speed.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_label_multiplicity_splits_images_by_shared_labels(benchmarks) -> None:
    ablation, _ = benchmarks
    from benchmarks.cases import CASES

    labels = CASES["lenet-mnist"].images("tune", 16)[1][4:8].tolist()
    assert labels == [3, 8, 3, 0]  # images 0 and 2 share their label
    base = {"case": "lenet-mnist", "split": "tune", "batch_size": 4, "first": 4, "steps_per_stage": 100, "threads": 1}
    runs = [
        {**base, "config": "default", "seed": 0, "per_image_psnr": [10.0, 30.0, 12.0, 32.0]},
        {**base, "config": "default", "seed": 1, "per_image_psnr": [14.0, 34.0, 16.0, 36.0]},
        {**base, "batch_size": 1, "first": 0, "config": "default", "seed": 0, "per_image_psnr": [40.0]},
    ]
    (row,) = ablation.label_multiplicity(runs)  # B=1 runs have no batch to share a label with
    assert (row["unique_images"], row["shared_images"], row["batches"]) == (4, 4, 1)
    assert row["unique_psnr"] == pytest.approx(33.0) and row["shared_psnr"] == pytest.approx(13.0)
    assert "| lenet-mnist | tune | 4 | 100 | default | 1 | 4, 33.00 ± 1.29 | 4, 13.00 ± 1.29 |" in (
        ablation.multiplicity_markdown([row])
    )


def test_ablation_runs_of_other_threads_are_their_own_runs_and_cells(benchmarks, tmp_path: Path, capsys) -> None:
    import torch

    ablation, _ = benchmarks
    runs = tmp_path / "runs"
    argv = ["--case", "lenet-mnist", "--steps", "1", "--images", "1", "--batch-sizes", "1", "--seeds", "0"]
    argv += ["--runs", str(runs)]
    threads = torch.get_num_threads()
    try:
        ablation.main([*argv, "--configs", "new", "tv summed over batch"])
        # at B=1 TV summed over the batch is `new` itself: said, not run
        assert "'tv summed over batch' is 'new' itself at B=1: not run" in capsys.readouterr().out
        ablation.main([*argv, "--configs", "new", "--threads", "2", "--overwrite"])
    finally:
        torch.set_num_threads(threads)  # main sets the process's torch threads
    records = [json.loads(line) for line in (runs / "lenet-mnist.jsonl").read_text().splitlines()]
    assert [(r["config"], r["threads"]) for r in records] == [("new", 1), ("new", 2)]
    out = tmp_path / "ablation"
    ablation.main(["--report", "--runs", str(runs), "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["config"], r["threads"], r["runs"]) for r in rows] == [("new", 1, 1), ("new", 2, 1)]
    assert [r["cpu_seconds"] for r in rows] == pytest.approx([r["cpu_seconds"] for r in records])
    text = out.with_suffix(".md").read_text()
    assert "cpu s: process CPU seconds per run (the torch threads of its table)" in text
    assert "## lenet-mnist, tune split, B=1, 1 steps/stage, one torch thread\n" in text
    assert "## lenet-mnist, tune split, B=1, 1 steps/stage, 2 torch threads\n" in text


def test_an_ablation_that_would_run_only_configurations_equal_to_their_baseline_is_refused(benchmarks, capsys) -> None:
    ablation, _ = benchmarks
    argv = ["--case", "lenet-mnist", "--configs", "tv summed over batch", "default, tv summed over batch"]
    with pytest.raises(SystemExit) as exit_info:
        ablation.parse_args([*argv, "--batch-sizes", "1", "--images", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "nothing to run: at --batch-sizes 1, 'tv summed over batch' is 'new'" in err
    assert ablation.parse_args([*argv, "--batch-sizes", "1", "2", "--images", "2"]).batch_sizes == [1, 2]  # B=2 runs


def test_ablation_report_skips_damaged_and_foreign_records_and_states_their_threads(
    benchmarks, tmp_path: Path, caplog
) -> None:
    ablation, _ = benchmarks
    with (ROOT / "benchmarks" / "results" / "ablation_runs" / "lenet-mnist.jsonl").open() as handle:
        good = [{**json.loads(next(handle)), "threads": 2} for _ in range(8)]
    missing = {k: v for k, v in good[0].items() if k != "matching_loss"}
    foreign = [
        {**good[1], "case": "foo"},
        {**good[2], "split": "nope"},
        {**good[3], "first": 99},
        {**good[4], "per_image_psnr": [1.0, 2.0]},
    ]
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "lenet-mnist.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*good, missing, *foreign]))
    out = tmp_path / "ablation"
    with caplog.at_level("WARNING"):
        ablation.main(["--report", "--runs", str(runs), "--out", str(out)])
    assert "skipping a damaged record (matching_loss is missing)" in caplog.text
    assert "skipping a damaged record (a run of case 'foo', which benchmarks/cases.py does not define" in caplog.text
    assert "skipping a damaged record (a run of split 'nope', which case 'lenet-mnist' does not have" in caplog.text
    assert (
        "skipping a damaged record (a run of images 99–99, beyond the 16 images of the tune split of case 'lenet-mnist'"
        in caplog.text
    )
    assert "skipping a damaged record (a run of batch size 1 with 2 per-image PSNR values" in caplog.text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sum(r["runs"] for r in rows) == len(good)  # the report is the good records' alone
    expected = {}
    for r in good:
        expected.setdefault(r["config"], []).append(r["psnr"])
    assert {r["config"]: r["psnr"] for r in rows} == pytest.approx({k: np.mean(v) for k, v in expected.items()})
    text = out.with_suffix(".md").read_text()
    assert "cpu s: process CPU seconds per run (2 torch threads)" in text and "one torch thread" not in text
