"""The benchmark scripts' command lines: bad values end in one line before any work, and outputs never land on the
committed results unless asked."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS = ROOT / "art_gifd" / "priors" / "weights"


def script(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def refused(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """Run a script's ``main`` in this process on ``args``, expecting its one-line usage error; returns stderr."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"benchmarks.{name}").main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def committed_runs(tmp_path: Path, name: str, lines: int | None = None) -> Path:
    """A copy in ``tmp_path/runs`` of a committed runs folder, or of the first ``lines`` runs of one runs file."""
    runs = tmp_path / "runs"
    if lines is None:
        shutil.copytree(RESULTS / name, runs)
        return runs
    runs.mkdir()
    with (RESULTS / name).open() as handle:
        (runs / Path(name).name).write_text("".join(next(handle) for _ in range(lines)))
    return runs


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (its relative path) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("fedavg", ["--threads", "0"], "--threads: expected an integer in [1, 1024], got 0"),
        ("fedavg", ["--seeds", "-1"], "--seeds: expected an integer in [0, "),
        ("ablation", ["--case", "lenet-mnist", "--images", "40"], "case 'lenet-mnist' has 16 images in its tune split"),
        ("labels", ["--batches", "1"], "--batches: expected an integer >= 2, got 1"),
        ("labels", ["--pool", "905", "900"], "give a range of at least 8 digits"),
        ("many_clients", ["--clients", "9"], "--clients: expected an integer in [1, 8], got 9"),
        ("many_clients", ["--clients", "1", "--cases", "two rounds"], "'two rounds' needs at least 2 clients"),
        ("ood", ["--stages", "9"], "--stages: expected an integer in [1, 4], got 9"),
        ("ood", ["--model", "bogus"], "invalid choice: 'bogus'"),
        ("ood", ["--pairs", "faces-to-images", "--images", "40"], "--images 40 is more than the 32 images of the pair"),
        ("baselines", ["--images", "2", "--batch-sizes", "4"], "--images (2) must be a multiple of every batch size"),
        ("baselines", ["--steps", "201"], "--steps must be a multiple of 4 (GIFD splits them over 4 stages), got 201"),
        ("shared_labels", ["--seeds", "0", "-1"], "--seeds: expected an integer in [0, "),
        ("speed", ["--stages", "0"], "--stages: expected an integer >= 1, got 0"),
        ("speed", ["--learning-rate", "nan"], "--learning-rate: expected a finite number > 0, got nan"),
        ("train_prior", ["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        ("train_prior", ["--name", "../escape"], "--name is a file stem: letters, digits and _.+- not starting"),
        ("train_prior", ["--name", ""], "--name is a file stem"),
        ("peer_breaching", ["--seeds", "10000000000000000"], "--seeds: expected an integer in [0, 9223372036854774]"),
        ("peer_breaching", ["--start", "999"], "is beyond the 1000 held-out digits"),
    ],
)
def test_bad_arguments_end_in_one_line(name: str, args: list[str], message: str) -> None:
    if name == "peer_breaching":
        args = [*args, "--methods", "ours"]  # breaching itself is not installed here
    done = script(name, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_late_setting_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    out = str(tmp_path / "speed.json")
    done = script("speed", "--model", "lenet", "--stages", "9", "--quick", "--out", out)  # 4 blocks: known on loading
    assert done.returncode == 2 and "--stages must lie in [1, 4]" in done.stderr and "Traceback" not in done.stderr


def test_a_fedavg_report_of_other_runs_is_written_beside_them(tmp_path: Path) -> None:
    runs = committed_runs(tmp_path, "fedavg_runs")
    committed = (RESULTS / "fedavg.md").read_text()
    done = script("fedavg", "--report", "--runs", str(runs))
    assert done.returncode == 0, done.stderr
    assert (RESULTS / "fedavg.md").read_text() == committed
    written = (runs / "fedavg.md").read_text()
    assert written.splitlines()[4:] == committed.splitlines()[4:]  # the same tables from the same runs
    record = json.loads((runs / "size4.jsonl").read_text().splitlines()[0])
    with (runs / "size4.jsonl").open("a") as handle:  # a run of another FL model joins the folder
        handle.write(json.dumps({**record, "rounds": 1, "model_accuracy": 0.1, "psnr": 9.0}) + "\n")
    done = script("fedavg", "--report", "--runs", str(runs))
    assert done.returncode == 2 and f"{runs / 'fedavg.json'}, {runs / 'fedavg.md'} exist: pass --overwrite" in (
        done.stderr
    )
    done = script("fedavg", "--report", "--runs", str(runs), "--overwrite")
    assert done.returncode != 0 and "runs of 2 FL models" in done.stderr


#: Each script's default outputs that are committed results, and the arguments (besides the defaults) of a run that
#: would write them.
COMMITTED = [
    ("ablation", ["--report"], ["ablation.json", "ablation.md", "ablation_restarts.png"]),
    ("fedavg", ["--report"], ["fedavg.json", "fedavg.md"]),
    ("fedavg", ["--labels"], ["fedavg_runs/labels.json"]),
    ("fedavg", ["--memory"], ["fedavg_runs/memory.json"]),
    ("labels", [], ["labels.json", "labels.md"]),
    ("many_clients", [], ["many_clients.json", "many_clients.md"]),
    ("ood", [], ["ood.json", "ood.md"]),
    ("baselines", [], ["baselines.json"]),
    ("peer_breaching", ["--methods", "ours"], ["peer_breaching.json"]),  # breaching itself is not installed here
    ("shared_labels", [], ["shared_labels.json", "shared_labels.md"]),
    ("speed", [], ["speed_cpu_lenet_32.json"]),
    ("speed", ["--mode", "quality-report"], ["quality.md"]),
    ("speed", ["--mode", "profile", "--model", "convnet"], ["profile_cpu_convnet_32_b1.json"]),
    (
        "speed",
        ["--mode", "quality", "--case", "lenet-mnist", "--batch-size", "4", "--feature-restarts", "all"],
        ["quality_cpu_lenet-mnist_b4_all.json"],
    ),
]


@pytest.mark.parametrize(("name", "args", "files"), COMMITTED, ids=lambda v: v if isinstance(v, str) else None)
def test_a_committed_result_is_replaced_only_with_overwrite(
    name: str, args: list[str], files: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = tree(RESULTS)
    err = refused(name, args, monkeypatch, capsys)
    named = ", ".join(str(RESULTS / f) for f in files)
    assert f"{named} exist{'s' if len(files) == 1 else ''}: pass --overwrite to replace" in err
    assert tree(RESULTS) == before  # nothing replaced, nothing added (not even a lock file)


def test_the_shipped_prior_is_not_overwritten(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    before = tree(WEIGHTS)
    err = refused("train_prior", ["--out", str(WEIGHTS), "--epochs", "1"], monkeypatch, capsys)
    assert f"{WEIGHTS / 'mnist32_dcgan.pt'}, {WEIGHTS / 'mnist32_dcgan.json'} exist: pass --overwrite" in err
    assert "another --out or --name" in err and tree(WEIGHTS) == before


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("ood", ["--batch-sizes", "1", "1"], "argument --batch-sizes: 1 is given more than once"),
        ("ood", ["--pairs", "in-distribution", "in-distribution"], "'in-distribution' is given more than once"),
        ("many_clients", ["--clients", "1", "--cases", "two rounds", "two rounds"], "'two rounds' is given more"),
        ("many_clients", ["--clients", "2", "4", "2"], "argument --clients: 2 is given more than once"),
        ("fedavg", ["--seeds", "0", "0"], "argument --seeds: 0 is given more than once"),
        ("fedavg", ["--sizes", "4", "4"], "argument --sizes: 4 is given more than once"),
        ("ablation", ["--case", "lenet-mnist", "--configs", "new", "new"], "argument --configs: 'new' is given"),
        ("ablation", ["--case", "lenet-mnist", "--batch-sizes", "1", "1"], "argument --batch-sizes: 1 is given"),
        ("baselines", ["--attacks", "gifd", "gifd"], "argument --attacks: 'gifd' is given more than once"),
        ("peer_breaching", ["--methods", "ours", "--steps", "5", "5"], "argument --steps: 5 is given more than once"),
        ("shared_labels", ["--seeds", "3", "3"], "argument --seeds: 3 is given more than once"),
        ("speed", ["--mode", "quality", "--seeds", "1", "1"], "argument --seeds: 1 is given more than once"),
    ],
)
def test_a_repeated_list_value_is_refused(
    name: str, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A repeated batch size, seed or case would run the same work twice and count it twice (a grid 'complete')."""
    assert message in refused(name, args, monkeypatch, capsys)


def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "many_clients.json").mkdir()  # a folder where the results file goes
    err = refused("many_clients", ["--out", str(tmp_path), "--overwrite"], monkeypatch, capsys)
    assert f"'{tmp_path / 'many_clients.json'}' is a folder" in err
    (tmp_path / "a-file").write_text("")
    err = refused("labels", ["--out", str(tmp_path / "a-file" / "labels")], monkeypatch, capsys)
    assert f"'{tmp_path / 'a-file'}' is a file" in err


def test_a_summary_written_over_the_runs_file_it_resumes_from_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A summary over its own jobs file would lose every finished job (the rerun finds no job line and starts over)."""
    same = str(tmp_path / "j.json")
    for name, args in (
        ("ood", ["--jobs", same, "--out", same]),
        ("ood", ["--out", str(tmp_path / "s.json"), "--md", str(tmp_path / "s.json")]),
        ("ood", ["--out", str(tmp_path / "s.md")]),  # its Markdown defaults to the same path
        ("baselines", ["--jsonl", same, "--out", same]),
        ("shared_labels", ["--out", str(tmp_path / "j"), "--runs", same]),
    ):
        err = refused(name, args, monkeypatch, capsys)
        assert "is named for two of the files this run writes: give each file its own path" in err, (name, args)
    assert not list(tmp_path.iterdir())


def test_ood_refuses_a_jobs_file_of_another_tool(tmp_path: Path) -> None:
    foreign = tmp_path / "results.jsonl"  # e.g. a bench results file: ood would append its jobs to it
    foreign.write_text('{"type": "run", "job_id": "abc", "config_hash": "x"}\n')
    done = script("ood", "--pairs", "in-distribution", "--batch-sizes", "1", "--images", "4", "--jobs", str(foreign))
    assert done.returncode == 2 and "holds lines but no job of this script" in done.stderr, done.stderr
    assert foreign.read_text() == '{"type": "run", "job_id": "abc", "config_hash": "x"}\n'


def test_ablation_runs_of_other_settings_join_a_runs_file_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import ablation

    runs = committed_runs(tmp_path, "ablation_runs/lenet-mnist.jsonl", 4)  # 100 steps per stage, one thread
    before = tree(runs)
    base = ["--case", "lenet-mnist", "--runs", str(runs)]
    for args, message in (
        (["--steps", "3"], "holds runs of --steps 100 (this run: 3): give another --runs folder, or pass --overwrite"),
        (["--threads", "2"], "holds runs of --threads 1 (this run: 2)"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            ablation.parse_args([*base, *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        assert ablation.parse_args([*base, *args, "--overwrite"]).overwrite  # asked: they join as their own cells
    assert ablation.parse_args([*base, "--steps", "100", "--seeds", "5"]).steps == 100  # the same study resumes
    assert tree(runs) == before


def test_fedavg_runs_of_other_settings_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import fedavg

    runs = committed_runs(tmp_path, "fedavg_runs")
    before = tree(runs)
    for args, message in (
        (["--steps-per-stage", "5"], "holds runs of --steps-per-stage 50 (this run: 5)"),
        (["--rounds", "2", "--restarts", "1"], "--restarts 2 (this run: 1), --rounds 30 (this run: 2)"),
    ):
        for overwrite in ([], ["--overwrite"]):  # its report refuses a folder of several budgets: never mixed
            with pytest.raises(SystemExit) as exit_info:
                fedavg.parse_args(["--runs", str(runs), *args, *overwrite])
            assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert fedavg.parse_args(["--runs", str(runs), "--sizes", "4"]).sizes == [4]  # the same settings resume
    assert tree(runs) == before


def test_overwrite_replaces_a_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import ablation, speed

    runs = committed_runs(tmp_path, "ablation_runs/lenet-mnist.jsonl", 8)
    out = tmp_path / "report" / "ablation"
    out.parent.mkdir()
    for path in ablation.report_paths(out):
        path.write_text("an earlier report\n")
    argv = ["--report", "--runs", str(runs), "--out", str(out)]
    with pytest.raises(SystemExit):
        ablation.main(argv)
    assert "ablation.json, " in capsys.readouterr().err
    assert all(path.read_text() == "an earlier report\n" for path in ablation.report_paths(out))
    ablation.main([*argv, "--overwrite"])
    assert json.loads(out.with_suffix(".json").read_text())["rows"]
    assert out.with_suffix(".md").read_text().startswith("# GIFD ablation")

    quality = tmp_path / "quality.md"
    quality.write_text("an earlier report\n")
    with pytest.raises(SystemExit):
        speed.parse_args(["--mode", "quality-report", "--out", str(quality)])
    assert quality.read_text() == "an earlier report\n"
    speed.main(["--mode", "quality-report", "--out", str(quality), "--overwrite"])
    assert quality.read_text().startswith("# Time-to-quality")


def test_train_prior_replaces_a_prior_only_with_overwrite_and_refuses_a_batch_beyond_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    tiny = ["--out", str(tmp_path), "--epochs", "1", "--nz", "4", "--ngf", "4", "--threads", "1"]
    done = script("train_prior", *tiny, "--batch-size", "4001")
    assert done.returncode == 2 and "--batch-size 4001 exceeds the 4000 training images of mnist32" in done.stderr
    assert not any(tmp_path.iterdir())  # no untrained prior saved
    (tmp_path / "mnist32_dcgan.json").write_text("an earlier record\n")
    err = refused("train_prior", [*tiny, "--batch-size", "4000"], monkeypatch, capsys)
    assert f"{tmp_path / 'mnist32_dcgan.json'} exists: pass --overwrite" in err
    assert (tmp_path / "mnist32_dcgan.json").read_text() == "an earlier record\n"
    done = script("train_prior", *tiny, "--batch-size", "4000", "--overwrite")  # one step on all 4,000 images
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "mnist32_dcgan.json").read_text())
    assert record["batch_size"] == 4000 and len(record["history"]) == 1 and (tmp_path / "mnist32_dcgan.pt").is_file()


@pytest.mark.slow
def test_many_clients_writes_over_its_results_only_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "many_clients.md").write_text("an earlier table\n")
    tiny = ["--clients", "1", "--steps-per-stage", "1", "--restarts", "1", "--out", str(tmp_path)]
    done = script("many_clients", *tiny)
    assert done.returncode == 2 and "many_clients.md exists: pass --overwrite" in done.stderr
    assert (tmp_path / "many_clients.md").read_text() == "an earlier table\n"
    assert not (tmp_path / "many_clients.json").exists()
    done = script("many_clients", *tiny, "--overwrite")  # "two rounds" of one client is skipped: one row
    assert done.returncode == 0, done.stderr
    assert [r["clients"] for r in json.loads((tmp_path / "many_clients.json").read_text())["rows"]] == [1]
    assert (tmp_path / "many_clients.md").read_text().startswith("# Many clients")


def test_ood_resumes_its_finished_jobs_and_reruns_only_a_damaged_one(tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "ood.json"
    args = ["--pairs", "in-distribution", "--batch-sizes", "1", "--images", "4", "--steps-per-stage", "1"]
    args += ["--restarts", "1", "--stages", "1", "--jobs", str(jobs), "--out", str(out)]
    first = script("ood", *args)
    assert first.returncode == 0, first.stderr
    lines = jobs.read_text().splitlines()
    assert len(lines) == 3 and "0 of 3 jobs already done; 3 to run" in first.stderr
    again = script("ood", *args, "--overwrite")
    assert again.returncode == 0 and "3 of 3 jobs already done; 0 to run" in again.stderr, again.stderr
    assert "damaged" not in again.stderr and jobs.read_text().splitlines() == lines
    record = json.loads(lines[0])
    record["run"]["psnr"] = "high"
    jobs.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    repaired = script("ood", *args, "--overwrite")
    assert "2 of 3 jobs already done; 1 to run" in repaired.stderr and "run.psnr is" in repaired.stderr
    document = json.loads(out.read_text())
    assert len(document["runs"]) == 3
    # the summary names the commit as recorded: "-dirty" only where the tree differed from it
    commit_line = next(line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("Git"))
    assert commit_line == f"Git commit: `{document['git_commit']}`  " and "uncommitted" not in commit_line
