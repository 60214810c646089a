"""Benchmark runner: grid expansion and stable job ids, resume after a crash or a torn line, failures recorded while
the grid goes on, located configuration errors, Ctrl-C, the Ray executor against the local one, the report's
numbers against the results file, damaged or foreign results files, and the exit status of a run with failed jobs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from art_gifd.bench import ConfigError, LocalExecutor, ResultsFile, expand_grid, load_config, run_benchmark
from art_gifd.bench import runner as runner_module
from art_gifd.bench.config import parse_document, validate_config
from art_gifd.bench.executors import ExecutorFailure
from art_gifd.bench.grid import defense_label
from art_gifd.bench.report import aggregate, markdown, write_report
from art_gifd.bench.runner import read_results
from art_gifd.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "art_gifd" / "bench" / "profiles" / "smoke.toml"
FULL = ROOT / "art_gifd" / "bench" / "profiles" / "full.toml"

#: A small configuration written inline; ``MARK:`` comments locate the lines the error tests refer to.
BASE_TOML = """\
name = "t"
models = ["lenet"]
seeds = [0, 1]

[federated]
batch_sizes = [1]

[budget]
steps_per_stage = 1
stages = 2
num_restarts = 1

[utility]
enabled = false

[[datasets]]
name = "mnist"
source = "mnist32"
num_images = 2   # MARK:num_images

[priors.mnist]
type = "embedded"

[[attacks]]
name = "gifd"
prior = "mnist"
params = { l1_radius = 0.1 }   # MARK:params

[[attacks]]
name = "pixel"
defenses = ["none"]

[[defenses]]
label = "none"
type = "none"

[[defenses]]
label = "prune"
type = "prune"
adaptive = [false, true]
[defenses.params]
ratio = [0.5, 0.9]   # MARK:ratio
"""


def parse(text: str, fmt: str = "toml"):
    return validate_config(parse_document(text, fmt, source=f"test.{fmt}"))


def line_of(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if marker in line)


def job_numbers(path: Path) -> dict[str, tuple]:
    """Per job id: per-image PSNR and SSIM, label accuracy and utility accuracy of the ok lines."""
    return {
        r["job_id"]: (
            tuple(r["result"]["per_image"]["psnr"]),
            tuple(r["result"]["per_image"]["ssim"]),
            r["result"]["label_accuracy"],
            r["utility"]["accuracy"] if r["utility"] else None,
        )
        for r in read_results(ResultsFile(path))[1]
        if r["status"] == "ok"
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The smoke profile run once, sequentially, through the command line."""
    results = tmp_path_factory.mktemp("bench") / "smoke.jsonl"
    assert main(["bench", str(SMOKE), "--results", str(results), "--no-progress"]) == 0
    return results


# ---------------------------------------------------------------------------------------------------- grid


def test_grid_expansion_counts_restrictions_and_stable_ids():
    config = parse(BASE_TOML)
    jobs = expand_grid(config)
    # gifd: 2 seeds x (none + prune 2 ratios x 2 adaptive) = 10; pixel restricted to "none": 2 seeds
    assert len(jobs) == 2 * (1 + 4) + 2
    assert len({j.job_id for j in jobs}) == len(jobs)
    assert sum(j.config["attack"]["name"] == "pixel" for j in jobs) == 2
    assert {j.config["seed"] for j in jobs} == {0, 1}
    assert jobs[0].config["seed"] == 0 and jobs[-1].config["seed"] == 1  # seed by seed
    # the same grid written in another order and in YAML has the same ids
    reordered = BASE_TOML.replace('name = "prune"\ntype = "prune"', 'type = "prune"\nname = "prune"')
    assert [j.job_id for j in expand_grid(parse(reordered))] == [j.job_id for j in jobs]
    import yaml

    as_yaml = yaml.safe_dump(parse_document(BASE_TOML, "toml").data)
    assert sorted(j.job_id for j in expand_grid(parse(as_yaml, "yaml"))) == sorted(j.job_id for j in jobs)
    # changing one attack parameter changes exactly that attack's ids
    changed = {j.label: j.job_id for j in expand_grid(parse(BASE_TOML.replace("l1_radius = 0.1", "l1_radius = 0.2")))}
    for job in jobs:
        assert (changed[job.label] == job.job_id) == (job.config["attack"]["name"] == "pixel")


# ------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("old", "new", "key", "marker", "words"),
    [
        ("ratio = [0.5, 0.9]", "ratoi = [0.5, 0.9]", "defenses[1].params.ratoi", "MARK:ratio", "did you mean 'ratio'"),
        ("ratio = [0.5, 0.9]", "ratio = [0.5, 1.5]", "defenses[1].params.ratio[1]", "MARK:ratio", "ratio"),
        ("num_images = 2", 'num_images = "two"', "datasets[0].num_images", "MARK:num_images", "integer"),
        (
            "{ l1_radius = 0.1 }",
            "{ l1_radius = 0.1, steps = 3 }",
            "attacks[0].params.steps",
            "MARK:params",
            "known keys",
        ),
        ("stages = 2", "stages = = 2", "(file)", "stages = = 2", "TOML syntax error"),
        # a TOML date would only fail when the setting is hashed, deep inside the run
        ("ratio = [0.5, 0.9]", "ratio = 1979-05-27", "defenses[1].params.ratio", "MARK:ratio", "got date"),
        # an empty list of attackers gave no setting at all, without a word
        ("adaptive = [false, true]", "adaptive = []", "defenses[1].adaptive", "adaptive = []", "empty list"),
        # a second baseline reran the first under another label
        (
            'label = "prune"',
            'label = "base"\ntype = "none"  # MARK:base\n[[defenses]]\nlabel = "prune"',
            "defenses[1].type",
            "MARK:base",
            "already defenses[0]",
        ),
        # two settings under one row: the report would mix them
        (
            "ratio = [0.5, 0.9]   # MARK:ratio",
            'ratio = [0.5, 0.9]\n[[defenses]]\nlabel = "prune(ratio=0.5)"  # MARK:row'
            '\ntype = "prune"\nparams = { ratio = 0.99 }',
            "defenses[2].label",
            "MARK:row",
            "gives the row",
        ),
    ],
)
def test_config_errors_name_the_key_and_the_line(old, new, key, marker, words):
    text = BASE_TOML.replace(old, new)
    with pytest.raises(ConfigError) as caught:
        parse(text)
    error = caught.value
    assert error.keys == [key] and error.line == line_of(text, marker) and words in error.message
    assert f"test.toml, line {error.line}: {key}: " in str(error)


def test_a_table_header_inside_a_multi_line_string_is_no_table():
    text = BASE_TOML.replace('name = "t"', 'name = "t"\ndescription = """\nold:\n[[attacks]]\nname = "x"\n"""')
    text = text.replace("{ l1_radius = 0.1 }", "{ l1_radius = 0.1, steps = 3 }")
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert caught.value.keys == ["attacks[0].params.steps"] and caught.value.line == line_of(text, "MARK:params")


def test_a_top_level_batch_sizes_is_sent_to_federated_as_in_an_audit():
    with pytest.raises(ConfigError) as caught:
        parse(BASE_TOML.replace("seeds = [0, 1]\n", "seeds = [0, 1]\nbatch_sizes = [1]\n"))
    assert caught.value.keys == ["batch_sizes"] and "under [federated]" in caught.value.message


def test_every_problem_of_a_bench_config_is_named_in_one_pass():
    text = BASE_TOML.replace("num_images = 2", 'num_images = "two"').replace("ratio = [0.5, 0.9]", "ratoi = [0.5, 0.9]")
    text = text.replace('name = "pixel"', 'name = "pixle"').replace("stages = 2", "stages = 0")
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert sorted(caught.value.keys) == [
        "attacks[1].name",
        "budget.stages",
        "datasets[0].num_images",
        "defenses[1].params.ratoi",
    ]
    lines = [p.line for p in caught.value.problems]
    assert all(lines) and lines == sorted(lines)  # each one located in the file, listed in the file's order
    assert "did you mean 'pixel'" in str(caught.value) and "did you mean 'ratio'" in str(caught.value)


def test_bench_and_audit_defences_share_their_keys(tmp_path):
    """The keys of a [[defenses]] table mean the same in both configurations: type, params, adaptive, label."""
    old_style = BASE_TOML.replace('label = "prune"', 'name = "prune"')
    with pytest.raises(ConfigError, match=r"defenses\[1\]\.name: unknown key in defenses\[1\]"):
        parse(old_style)


def test_yaml_errors_name_the_key_and_the_line():
    text = textwrap.dedent(
        """\
        name: t
        models: [lenet]
        budget: {steps_per_stage: 1, stages: 1, num_restarts: 1}
        datasets:
          - {name: d, source: mnist32, num_images: 1}
        attacks:
          - name: pixle
        """
    )
    with pytest.raises(ConfigError) as caught:
        parse(text, "yaml")
    assert (
        caught.value.key == "attacks[0].name" and caught.value.line == 7 and "did you mean 'pixel'" in str(caught.value)
    )
    duplicated = text + "models: [convnet]\n"
    with pytest.raises(ConfigError, match="duplicated key") as caught:
        parse(duplicated, "yaml")
    assert caught.value.line == 8


def test_yaml_aliases_that_expand_without_bound_are_refused_and_number_keys_located():
    nested = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for here, there in zip("bcdefg", "abcdef", strict=True):  # each level lists the one before ten times: 10^7 values
        nested.append(f"{here}: &{here} [{', '.join([f'*{there}'] * 10)}]")
    with pytest.raises(ConfigError, match=r"YAML aliases expand this file to more than 100,000 values"):
        parse("\n".join(nested), "yaml")
    with pytest.raises(ConfigError, match="an alias refers to its own anchor"):
        parse("a: &a [1, *a]\n", "yaml")
    with pytest.raises(ConfigError) as caught:
        parse("name: t\n1: x\n", "yaml")
    assert (caught.value.problems[0].key, caught.value.problems[0].line) == ("[1]", 2)
    with pytest.raises(ConfigError) as caught:
        parse('"tïtle" = "x"\n' + BASE_TOML)
    assert caught.value.keys == ["tïtle"] and caught.value.line == 1


def test_a_job_line_edited_by_hand_is_left_out_and_runs_again(reference, tmp_path, caplog):
    results = tmp_path / "edited.jsonl"
    lines = reference.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if '"status": "ok"' in line)
    record = json.loads(lines[index])
    record["config"]["seed"] += 1  # another setting under the same identifier
    lines[index] = json.dumps(record)
    results.write_text("\n".join(lines) + "\n")
    assert record["job_id"] not in {r["job_id"] for r in read_results(ResultsFile(results))[1]}
    assert "job_id is not the hash of its config" in caplog.text


def test_thread_and_cpu_counts_beyond_any_machine_are_refused(tmp_path, capsys):
    for argv in (
        ["demo", "--threads", "100000"],
        ["bench", "smoke", "--workers", "2147483648"],
        ["bench", "smoke", "--executor", "ray", "--ray-cpus", "100000"],
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2 and "expected an integer in [1, 1024]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"resources\.cpus"):
        parse(BASE_TOML.replace("[budget]", "[resources]\ncpus = 100000\n\n[budget]"))


def test_full_profile_names_the_missing_data_folder():
    with pytest.raises(ConfigError) as caught:
        load_config(FULL)
    text = FULL.read_text()
    assert caught.value.key == "datasets[0].root" and caught.value.message.startswith("is empty. Set it to a local")
    assert caught.value.line == line_of(text, "root = ")


def test_cli_reports_config_errors(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(BASE_TOML.replace("stages = 2", "stages = 0"))
    assert main(["bench", str(config), "--results", str(tmp_path / "r.jsonl")]) == 2
    assert f"{config}, line {line_of(config.read_text(), 'stages = 0')}: budget.stages" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ resume, errors


def test_resume_after_a_crash_and_a_torn_line_loses_and_duplicates_nothing(tmp_path, monkeypatch, reference):
    results = tmp_path / "smoke.jsonl"
    append, written = ResultsFile.append, []

    def dying_append(self, record):  # the process dies after the third job ran, before its line is written
        if record["type"] == "job" and len(written) == 2:
            raise SystemExit(9)
        written.append(record["job_id"]) if record["type"] == "job" else None
        append(self, record)

    monkeypatch.setattr(ResultsFile, "append", dying_append)
    with pytest.raises(SystemExit):
        run_benchmark(load_config(SMOKE), results, progress=False)
    monkeypatch.setattr(ResultsFile, "append", append)
    assert list(job_numbers(results)) == written
    with results.open("ab") as handle:  # and a later write torn half-way
        handle.write(b'{"type": "job", "status": "ok", "job_id": "')
    summary = run_benchmark(load_config(SMOKE), results, progress=False)
    assert (summary.already_done, summary.ok, summary.errors) == (2, summary.total - 2, 0)
    runs, jobs = ResultsFile(results).read()
    assert len(runs) == 2 and results.read_bytes().endswith(b"\n")
    assert len(jobs) == len({j["job_id"] for j in jobs}) == summary.total
    assert job_numbers(results) == job_numbers(reference)  # the numbers of an uninterrupted run
    assert run_benchmark(load_config(SMOKE), results, progress=False).ok == 0  # nothing left to do


def test_an_append_after_an_unrepaired_torn_line_stays_readable_and_damaged_bytes_are_skipped(tmp_path, caplog):
    store = ResultsFile(tmp_path / "r.jsonl")
    store.append({"job_id": "a", "v": 1})
    with store.path.open("ab") as handle:  # a kill mid-write, read since without repair=True
        handle.write(b'{"job_id": "b", "v"')
    store.append({"job_id": "c", "v": 3})
    with store.path.open("ab") as handle:  # a byte damaged inside a string
        handle.write(b'{"job_id": "d\xff", "v": 4}\n')
    with caplog.at_level("WARNING"):
        assert {k: r["v"] for k, r in store.latest().items()} == {"a": 1, "c": 3}
    assert "r.jsonl:2: skipping a line that is not JSON" in caplog.text
    assert "r.jsonl:4: skipping a line that is not UTF-8 text" in caplog.text


def one_image_config(attacks: str, defenses: str):
    """A one-seed, one-image, one-step grid on LeNet without utility runs: ``attacks`` and ``defenses`` as TOML."""
    head = textwrap.dedent(
        """\
        name = "tiny"
        models = ["lenet"]
        budget = { steps_per_stage = 1, stages = 2, num_restarts = 1 }
        utility = { enabled = false }
        datasets = [{ name = "mnist", source = "mnist32", num_images = 1 }]
        """
    )
    return parse(f"{head}attacks = {attacks}\n\n{textwrap.dedent(defenses)}")


def test_failing_job_is_recorded_and_the_grid_goes_on(tmp_path):
    config = one_image_config(
        '[{ name = "gi" }, { name = "pixel" }]',
        """\
            [[defenses]]
            label = "none"
            type = "none"

            [[defenses]]
            label = "dp"
            type = "dp"
            [defenses.params]
            noise_multiplier = 1.0
            max_grad_norm = 1.0
            sample_rate = 0.01
            steps = 10
            delta = 1e-5
            """,
    )
    results = tmp_path / "r.jsonl"
    # GradInversion matches BatchNorm statistics and LeNet has none: the checks before the first job refuse an attack
    # that no job of the grid can run ...
    with pytest.raises(ConfigError, match=r"attack 'gi' cannot run in any job of this grid, e\.g\. on model 'lenet'"):
        run_benchmark(config, results, progress=False)
    # ... and without them its jobs fail one by one, recorded, and the pixel ones after them run
    summary = run_benchmark(config, results, progress=False, check_inputs=False)
    latest = ResultsFile(results).latest()
    assert [r["label"] for r in latest.values()] == [
        "mnist/lenet/B1/none/gi/seed0",
        "mnist/lenet/B1/none/pixel/seed0",
        "mnist/lenet/B1/dp/gi/seed0",
        "mnist/lenet/B1/dp/pixel/seed0",
    ]
    assert [r["status"] for r in latest.values()] == ["error", "ok", "error", "ok"]
    failed = next(iter(latest.values()))
    assert failed["error"]["type"] == "ValueError" and "BatchNorm" in failed["error"]["message"]
    assert failed["error"]["traceback"] and failed["config"]["attack"]["name"] == "gi"
    assert (summary.ok, summary.errors) == (2, 2)
    dp = list(latest.values())[3]
    assert dp["epsilon"] > 0 and dp["delta"] == 1e-5 and dp["defense"]["params"]["noise_multiplier"] == 1.0
    assert run_benchmark(config, results, progress=False, check_inputs=False).ok == 0  # recorded failures are skipped


def test_a_grid_of_text_values_runs_and_reads_back(tmp_path):
    config = one_image_config(
        '[{ name = "pixel" }]',
        """\
        [[defenses]]
        label = "prune"
        type = "prune"
        params = { ratio = 0.5, scope = ["layer", "global"] }
        """,
    )
    results = tmp_path / "r.jsonl"
    assert run_benchmark(config, results, progress=False).ok == 2
    latest = ResultsFile(results).latest()  # every line passes the record check, text strengths included
    assert [r["label"] for r in latest.values()] == [
        "mnist/lenet/B1/prune(scope=layer)/pixel/seed0",
        "mnist/lenet/B1/prune(scope=global)/pixel/seed0",
    ]
    assert [r["config"]["defense"]["strength"] for r in latest.values()] == ["layer", "global"]
    assert run_benchmark(config, results, progress=False).ok == 0  # resumed: nothing is redone


class _Handle:
    def __init__(self, job, utility):
        self.job, self.utility = job, utility


class DyingWorkers(LocalExecutor):
    """Two slots, jobs run in this process; while the ``killer`` job is in flight, every job in flight is lost, as
    when a pool worker is killed (out of memory) and the pool breaks."""

    def __init__(self, killer: str) -> None:
        super().__init__(workers=1)
        self.slots, self.killer, self.in_flight, self.restarts = 2, killer, [], 0

    def submit(self, job, utility):
        handle = _Handle(job, utility)
        self.in_flight.append(handle)
        return handle

    def wait(self, handles):
        return handles[:1]

    def result(self, handle):
        if any(h.job.label == self.killer for h in self.in_flight):
            raise ExecutorFailure("the worker process running this job died")
        self.in_flight.remove(handle)
        return runner_module.run_job(handle.job, handle.utility)

    def restart(self) -> None:
        self.restarts += 1
        self.in_flight = []


def test_a_job_that_kills_its_worker_is_found_and_recorded_while_the_others_finish(tmp_path):
    config = parse(
        textwrap.dedent(
            """            name = "dying"
            models = ["lenet"]
            seeds = [0, 1]
            budget = { steps_per_stage = 1, stages = 2, num_restarts = 1 }
            utility = { enabled = false }
            datasets = [{ name = "mnist", source = "mnist32", num_images = 1 }]
            priors = { mnist = { type = "embedded" } }
            attacks = [{ name = "latent-only", prior = "mnist" }, { name = "pixel" }]
            defenses = [{ type = "none" }]
            """
        )
    )
    killer = "mnist/lenet/B1/none/pixel/seed0"
    executor = DyingWorkers(killer)
    results = tmp_path / "r.jsonl"
    summary = run_benchmark(config, results, executor, progress=False)
    records = ResultsFile(results).read()[1]
    # one line per job: the killer, which broke the pool beside another job and then again alone, is an error
    assert sorted(r["label"] for r in records) == sorted(j.label for j in expand_grid(config))
    assert {r["label"]: r["status"] for r in records if r["status"] == "error"} == {killer: "error"}
    failed = next(r for r in records if r["status"] == "error")
    assert failed["error"]["type"] == "ExecutorFailure" and "died" in failed["error"]["message"]
    assert executor.restarts == 2 and (summary.ok, summary.errors, summary.remaining) == (3, 1, 0)


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path, monkeypatch, reference):
    results = tmp_path / "r.jsonl"
    calls = []
    real = runner_module._execute

    def interrupted(job, utility, start):
        calls.append(job.job_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, utility, start)

    monkeypatch.setattr(runner_module, "_execute", interrupted)
    summary = run_benchmark(load_config(SMOKE), results, LocalExecutor(), progress=False)
    assert summary.interrupted and (summary.ok, summary.remaining) == (1, summary.total - 1)
    assert len(ResultsFile(results).read()[1]) == 1
    monkeypatch.setattr(runner_module, "_execute", real)
    assert run_benchmark(load_config(SMOKE), results, progress=False).ok == summary.total - 1
    assert job_numbers(results) == job_numbers(reference)


def test_report_of_an_unfinished_grid_names_the_missing_jobs(reference, tmp_path):
    lines = reference.read_text().splitlines()
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(lines[:2]) + "\n")  # the run header and the first job
    write_report(partial, tmp_path / "report")
    tables = json.loads((tmp_path / "report" / "tables.json").read_text())
    planned = expand_grid(load_config(SMOKE))
    assert tables["jobs"]["finished"] == 1 and tables["jobs"]["missing"] == [job.label for job in planned[1:]]
    markdown = (tmp_path / "report" / "tables.md").read_text()
    assert f"**incomplete**: 1 of the latest configuration's {len(planned)} jobs finished" in markdown


def test_an_adaptive_attacker_against_noise_is_refused():
    config = SMOKE.read_text().replace(
        'label = "prune"\ntype = "prune"', 'label = "noise"\ntype = "gaussian"\nadaptive = true'
    )
    config = config.replace("ratio = [0.5]", "sigma = [0.01]")
    with pytest.raises(
        ConfigError, match=r"defenses\[1\]\.adaptive: a gaussian defence is random noise that an attacker"
    ):
        parse(config)


def test_report_states_the_protocol_and_the_labels_given():
    config = {
        "federated": {"learning_rate": 0.05, "epochs": 3, "batch_size": 1, "shuffle_seed": 0},
        "attacks": [{"name": "gifd", "label": "gifd"}, {"name": "pixel", "label": "pixel", "labels": "known"}],
    }
    text = markdown([], [], [{"config": config}], "fedavg grid")
    assert "- protocol: FedAvg, SGD, 3 epoch(s) in mini-batches of 1, learning rate 0.05, known order" in text
    assert "- labels given to pixel (not inferred)" in text


def test_repeated_defence_strengths_are_refused():
    config = SMOKE.read_text().replace("ratio = [0.5]", "ratio = [0.5, 0.50]")
    with pytest.raises(ConfigError, match=r"defenses\[1\]\.params\.ratio: has repeated values: \[0\.5, 0\.5\]"):
        parse(config)


def test_a_strength_grid_longer_than_any_run_could_use_is_refused_before_building_it(monkeypatch):
    import art_gifd.defenses.registry as registry

    built = []
    monkeypatch.setattr(registry, "cached_defense", lambda kind, point: built.append(point))
    grid = ", ".join(f"{0.001 * (k + 1):.3f}" for k in range(registry.MAX_STRENGTHS + 1))
    config = SMOKE.read_text().replace("ratio = [0.5]", f"ratio = [{grid}]")
    with pytest.raises(ConfigError, match=r"defenses\[1\]\.params\.ratio: has 257 strengths, more than the 256"):
        parse(config)
    assert not any("ratio" in point for point in built)  # refused before any point (a DP calibration each) is built


def test_attacking_the_embedded_priors_own_training_images_is_warned_about(recwarn):
    text = SMOKE.read_text()
    parse(text)
    assert not [w for w in recwarn if "training images of prior" in str(w.message)]
    with pytest.warns(UserWarning, match=r"\(mnist32, split 'train'\) include the training images of prior 'mnist'"):
        parse(text.replace('split = "heldout"', 'split = "train"'))


def test_a_folder_data_set_whose_images_change_gets_new_job_ids(tmp_path):
    from PIL import Image

    for k in range(2):
        (tmp_path / "data" / str(k)).mkdir(parents=True)
        for i in range(5):
            pixels = np.full((32, 32), 40 * k + i, dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "data" / str(k) / f"{i}.png")
    text = SMOKE.read_text().replace(
        'source = "mnist32"\nsplit = "heldout"', f'source = "folder"\nroot = "{tmp_path / "data"}"\nchannels = 1'
    )
    before = {job.job_id for job in expand_grid(parse(text))}
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8), mode="L").save(tmp_path / "data" / "1" / "extra.png")
    after = {job.job_id for job in expand_grid(parse(text))}
    assert before and not before & after  # the held-out part is drawn again: no earlier result is reused
    # results written inside the image folder: their reconstructions folder would be read as a class next time
    with pytest.raises(ConfigError, match=r"datasets\[0\]\.root.*the results: .*data/r\.jsonl' lies inside"):
        run_benchmark(parse(text), tmp_path / "data" / "r.jsonl", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["0", "1"]


# ---------------------------------------------------------------------------------------------- executors


def test_ray_executor_matches_the_local_one(tmp_path, reference):
    pytest.importorskip("ray")
    from art_gifd.bench import RayExecutor

    results = tmp_path / "ray.jsonl"
    summary = run_benchmark(load_config(SMOKE), results, RayExecutor(num_cpus=2), progress=False)
    assert (summary.ok, summary.errors) == (summary.total, 0)
    assert ResultsFile(results).read()[0][0]["executor"] == {
        "name": "ray",
        "address": None,
        "num_cpus": 2,
        "num_gpus": None,
    }
    assert job_numbers(results) == job_numbers(reference)


def test_jobs_larger_than_every_ray_node_stop_before_the_first_job(tmp_path, monkeypatch, capsys) -> None:
    ray = pytest.importorskip("ray")
    from art_gifd.bench import RayExecutor
    from art_gifd.bench.executors import ClusterTooSmall

    # Ray would keep such a job pending for ever: fail (instead of hanging) if one is submitted
    def no_submit(self, job, utility):
        raise AssertionError(f"{job.label} was submitted to a cluster that cannot run it")

    monkeypatch.setattr(RayExecutor, "submit", no_submit)
    smoke = SMOKE.read_text()
    # a GPU per job on a local Ray without GPUs: one line from the command, nothing recorded, Ray stopped again
    config = tmp_path / "gpu.toml"
    config.write_text(smoke.replace("cpus = 1\n", "cpus = 1\ngpus = 1\n"))
    results = tmp_path / "gpu.jsonl"
    argv = ["bench", str(config), "--results", str(results), "--no-progress", "--skip-checks", "--executor", "ray"]
    assert main([*argv, "--ray-cpus", "1", "--ray-gpus", "0"]) == 2
    err = capsys.readouterr().err  # after the log line of Ray's start, if Ray writes one
    assert "Traceback" not in err and err.splitlines()[-1] == (
        "error: each job asks for cpus = 1, gpus = 1 ([resources] of the configuration), but no node of the Ray "
        "cluster has that many (its nodes: cpus = 1, gpus = 0), so Ray would never start them: set [resources] "
        "gpus = 0, or run on a cluster with larger nodes (--ray-address, or --ray-cpus / --ray-gpus for a local Ray)"
    )
    assert not ray.is_initialized() and not (results.exists() and results.read_text())
    # more CPU threads per job than the local Ray has
    with pytest.raises(ClusterTooSmall, match=r"cpus = 2, gpus = 0 .* set \[resources\] cpus = 1, or run"):
        run_benchmark(
            parse(smoke.replace("cpus = 1\n", "cpus = 2\n")),
            tmp_path / "cpus.jsonl",
            RayExecutor(num_cpus=1, num_gpus=0),
            progress=False,
            check_inputs=False,
        )
    assert not ray.is_initialized()


# ------------------------------------------------------------------------------------------------- report


def test_report_tables_equal_the_results_file(reference, tmp_path):
    written = write_report(reference, tmp_path / "report")
    tables = json.loads((tmp_path / "report" / "tables.json").read_text())
    markdown = (tmp_path / "report" / "tables.md").read_text()
    records = ResultsFile(reference).read()[1]
    assert len(tables["rows"]) == len(records) == len(expand_grid(load_config(SMOKE))) and not tables["errors"]
    by_id = {r["job_id"]: r for r in records}
    for row in tables["rows"]:
        jobs = [by_id[i] for i in row["job_ids"]]
        psnr = [v for j in jobs for v in j["result"]["per_image"]["psnr"]]
        ssim = [v for j in jobs for v in j["result"]["per_image"]["ssim"]]
        assert row["psnr"] == pytest.approx(np.mean(psnr), rel=1e-12)
        assert row["psnr_std"] == pytest.approx(np.std(psnr), abs=1e-12)
        assert row["ssim"] == pytest.approx(np.mean(ssim), rel=1e-12)
        assert row["accuracy"] == pytest.approx(np.mean([j["utility"]["accuracy"] for j in jobs]), rel=1e-12)
        assert f"{row['psnr']:.2f} ± {row['psnr_std']:.2f}" in markdown
        assert f"{row['ssim']:.3f} ± {row['ssim_std']:.3f}" in markdown
    assert tables["runs"][0]["command"] and tables["runs"][0]["config_hash"]
    assert tables["jobs"] == {"planned": len(records), "finished": len(records), "failed": 0, "missing": []}
    assert f"complete: all {len(records)} jobs of the latest configuration finished" in markdown
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.name.split("_")[0] for p in pngs} >= {"leakage", "privacy", "reconstructions"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_report_tables_and_figure_names_hold_any_label(reference, tmp_path):
    from art_gifd.store import file_slug

    write_report(reference, tmp_path / "report")
    rows = json.loads((tmp_path / "report" / "tables.json").read_text())["rows"]
    hostile = [{**row, "defense_label": "noise | <i>a</i>\n## b"} for row in rows]
    text = markdown(hostile, [], [], "title | x")
    header = next(line for line in text.splitlines() if line.startswith("| data |"))
    body = [line for line in text.splitlines() if line.startswith(f"| {rows[0]['dataset']} |")]
    assert body and all(line.replace("\\|", "").count("|") == header.count("|") for line in body)
    assert "noise \\| &lt;i&gt;a&lt;/i&gt; ## b" in body[0] and "<i>" not in text
    # labels that a file name cannot tell apart get distinct figure names
    labels = ["noise a", "noise-a", "ε", "σ", "x" * 300]
    names = [file_slug(label) for label in labels]
    assert names[1] == "noise-a" and len(set(names)) == len(labels) and all(0 < len(n) <= 60 for n in names)


def test_report_rows_follow_the_grid_whatever_order_jobs_finished_in(reference, tmp_path):
    lines = Path(reference).read_text().splitlines()
    headers = [line for line in lines if json.loads(line)["type"] == "run"]
    jobs = [line for line in lines if json.loads(line)["type"] == "job"]
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(headers + jobs[::-1]) + "\n")  # as if parallel workers finished back to front
    write_report(shuffled, tmp_path / "report")
    rows = json.loads((tmp_path / "report" / "tables.json").read_text())["rows"]
    grid = [job.config for job in expand_grid(load_config(SMOKE)) if job.config["seed"] == 0]
    assert [(r["defense_label"], r["attack"]) for r in rows] == [
        (defense_label(c["defense"]), c["attack"]["label"]) for c in grid
    ]


def test_results_header_records_provenance(reference):
    run = ResultsFile(reference).read()[0][0]
    assert run["device"] == "cpu" and run["date"]
    assert run["command"] == f"art-gifd bench {SMOKE} --results {reference} --no-progress"
    assert run["config_hash"] == load_config(SMOKE).config_hash
    assert "git_commit" in run and run["environment"]["torch"]
    assert os.path.basename(run["config_source"]) == "smoke.toml"


def test_a_second_run_on_a_locked_results_file_is_refused(tmp_path, capsys) -> None:
    results = tmp_path / "r.jsonl"
    with ResultsFile(results).lock():
        assert main(["bench", str(SMOKE), "--results", str(results), "--no-progress"]) == 2
    assert "is being written by another art-gifd bench" in capsys.readouterr().err
    assert not results.exists() or ResultsFile(results).read() == ([], [])


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (Linux ``/proc``)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_killing_the_driver_stops_its_workers(tmp_path, signal_name) -> None:
    import signal
    import subprocess
    import sys
    import time

    config = SMOKE.read_text().replace("steps_per_stage = 2", "steps_per_stage = 5000")
    (tmp_path / "slow.toml").write_text(config.replace('name = "smoke"', 'name = "slow"'))
    results = tmp_path / "slow.jsonl"
    command = [sys.executable, "-m", "art_gifd.cli", "bench", str(tmp_path / "slow.toml"), "--results", str(results)]
    driver = subprocess.Popen(
        [*command, "--workers", "2", "--no-progress", "--skip-checks"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_children(driver.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(8)  # the workers import torch and start their jobs
        workers = _children(driver.pid)
        assert len(workers) >= 2, "the pool did not start"
        driver.send_signal(getattr(signal, signal_name))
        driver.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(w) for w in workers), f"workers outlived the driver after {signal_name}"
        if signal_name == "SIGTERM":
            assert driver.returncode == 130
            _, jobs = ResultsFile(results).read()
            assert all(j["status"] == "ok" for j in jobs)  # nothing half-written or recorded as failed
    finally:
        driver.kill()


def test_report_tells_apart_runs_of_different_configurations_in_one_file(tmp_path) -> None:
    results = tmp_path / "mixed.jsonl"
    config = load_config(SMOKE)
    run_benchmark(config, results, progress=False, check_inputs=False)
    other = tmp_path / "other.toml"
    other.write_text(SMOKE.read_text().replace("steps_per_stage = 2", "steps_per_stage = 3"))
    run_benchmark(load_config(other), results, progress=False, check_inputs=False)
    _, jobs = ResultsFile(results).read()
    rows, _ = aggregate(list({j["job_id"]: j for j in jobs}.values()))
    shown = [(r["attack"], r["defense_label"]) for r in rows]
    assert len(shown) == len(set(shown)) == 2 * len(expand_grid(config))  # no two rows print alike
    assert {r["variant"] for r in rows} == {"attack.budget.steps_per_stage=2", "attack.budget.steps_per_stage=3"}
    write_report(results, tmp_path / "report")
    table = (tmp_path / "report" / "tables.md").read_text()
    assert "[attack.budget.steps_per_stage=2]" in table and "[attack.budget.steps_per_stage=3]" in table


def test_the_grid_shows_each_reconstruction_beside_the_image_it_attacked(reference, tmp_path, monkeypatch) -> None:
    from art_gifd.report import figures

    results = tmp_path / "smoke.jsonl"
    shutil.copy(reference, results)
    shutil.copytree(reference.with_name("smoke.recon"), tmp_path / "smoke.recon")
    other = tmp_path / "offset.toml"  # the same grid on another held-out digit, into the same results file
    other.write_text(SMOKE.read_text().replace("num_images = 1", "num_images = 1\noffset = 7"))
    run_benchmark(load_config(other), results, progress=False, check_inputs=False)
    shown = []
    real = figures.reconstruction_grid
    monkeypatch.setattr(figures, "reconstruction_grid", lambda rows, *args: shown.append(rows) or real(rows, *args))
    write_report(results, tmp_path / "report")
    store = ResultsFile(results)
    saved = [store.load_arrays(r["job_id"]) for r in store.read()[1]]
    saved = [(a["originals"][0] / np.float32(255), a["reconstructions"][0] / np.float32(255)) for a in saved]
    (rows,) = shown
    assert [label for label, _, _ in rows] == ["none, images 1", "none, images 2", "prune(ratio=0.5), images 1",
                                              "prune(ratio=0.5), images 2"]  # fmt: skip
    assert not np.array_equal(rows[0][1], rows[1][1])  # the two offsets attacked different digits
    for _, original, reconstructions in rows:
        assert len(reconstructions) == 2  # gifd and pixel of one offset
        for image in reconstructions.values():  # each beside the original of the job that reconstructed it
            assert any(np.array_equal(image, r) and np.array_equal(original, o) for o, r in saved)


def test_a_report_replaces_its_earlier_figures_and_names_a_missing_reconstructions_folder(
    reference, tmp_path, caplog
) -> None:
    out = tmp_path / "report"
    first = write_report(reference, out)
    assert (out / "figures" / "reconstructions_mnist_lenet_1.png") in first
    stale = out / "figures" / "leakage_cifar10_convnet_4_dp.png"  # a case the next results file lacks
    stale.write_bytes(b"old")
    keep = out / "figures" / "notes.png"  # not a name the report writes: never touched
    keep.write_bytes(b"mine")
    copy = tmp_path / "copy" / "smoke.jsonl"  # copied without its smoke.recon/ folder
    copy.parent.mkdir()
    shutil.copy(reference, copy)
    written = write_report(copy, out)
    message = f"no reconstruction grid for mnist/lenet/1: '{copy.with_suffix('.recon')}' is missing; copy there"
    assert message in caplog.text
    assert set((out / "figures").iterdir()) == {p for p in written if p.suffix == ".png"} | {keep}
    assert keep.read_bytes() == b"mine" and not any(p.name.startswith("reconstructions_") for p in written)
    caplog.clear()
    copy.with_suffix(".recon").mkdir()
    write_report(copy, out)
    assert "smoke.recon' holds none of these jobs' reconstructions" in caplog.text


def test_a_report_counts_failed_jobs_apart_and_warns_when_none_succeeded(tmp_path, monkeypatch, caplog) -> None:
    results = tmp_path / "failed.jsonl"
    config = load_config(SMOKE)
    real = runner_module._execute

    failing = {"gifd", "pixel"}  # the attacks whose jobs fail

    def attack_fails(job, utility, start):
        if job.config["attack"]["name"] in failing:
            raise RuntimeError("broken on purpose")
        return real(job, utility, start)

    monkeypatch.setattr(runner_module, "_execute", attack_fails)
    run_benchmark(config, results, progress=False, check_inputs=False)
    write_report(results, tmp_path / "report")
    text = (tmp_path / "report" / "tables.md").read_text()
    assert "- **failed**: 4 of 4 jobs of the latest configuration failed (see Failed jobs)" in text
    assert "complete" not in text
    assert json.loads((tmp_path / "report" / "tables.json").read_text())["jobs"]["failed"] == 4
    assert f"none of the 4 jobs in '{results}' succeeded" in caplog.text
    caplog.clear()
    failing.discard("pixel")
    run_benchmark(config, results, retry_errors=True, progress=False, check_inputs=False)
    write_report(results, tmp_path / "report")
    text = (tmp_path / "report" / "tables.md").read_text()
    assert "- complete: all 4 jobs of the latest configuration finished, 2 of them failed (see Failed jobs)" in text
    assert "succeeded" not in caplog.text


def test_an_lpips_reason_is_reported_as_of_when_the_jobs_ran(reference) -> None:
    records = ResultsFile(reference).read()[1]
    for record in records:
        record["result"]["lpips_unavailable_reason"] = "AlexNet weights not found at /x.pth; copy them there."
    text = markdown(aggregate(records)[0], [], [], "smoke")
    line = next(line for line in text.splitlines() if line.startswith("LPIPS n/a"))
    assert line.startswith(
        "LPIPS n/a: when these jobs ran, LPIPS was unavailable: AlexNet weights not found at /x.pth; copy them there. "
        "They keep n/a"
    )
    assert "run the configuration into a new results file" in line and text.count("LPIPS n/a") == 1


def test_report_shows_images_that_share_their_label_apart(reference) -> None:
    _, jobs = ResultsFile(reference).read()
    records = list({j["job_id"]: j for j in jobs}.values())
    rows, _ = aggregate(records)
    assert all(r["num_images_shared_label"] == 0 for r in rows)  # one image per batch: no label is shared
    assert "share their label" not in markdown(rows, [], [], "smoke")
    for number, record in enumerate(records):  # as if each job had attacked a batch labelled [3, 3, 1, 2]
        values = [10.0 + number, 12.0 + number, 30.0 + number, 34.0 + number]
        record["result"]["per_image"].update(
            psnr=values, ssim=[0.5] * 4, lpips=None, shared_label=[True, True, False, False]
        )
    rows, _ = aggregate(records)
    text = markdown(rows, [], [], "smoke")
    for row in rows:
        jobs_of = [r for r in records if r["job_id"] in row["job_ids"]]
        shared = [v for r in jobs_of for v in r["result"]["per_image"]["psnr"][:2]]
        own = [v for r in jobs_of for v in r["result"]["per_image"]["psnr"][2:]]
        assert row["psnr_shared_label"] == pytest.approx(np.mean(shared))
        assert row["psnr_own_label"] == pytest.approx(np.mean(own))
        assert row["num_images_shared_label"] == row["num_images_own_label"] == 2 * len(jobs_of)
        cell = f"{len(shared)}, {row['psnr_shared_label']:.2f} ± {row['psnr_shared_label_std']:.2f}"
        assert cell in text


def test_source_commit_is_the_packages_own_checkout_only(tmp_path, monkeypatch) -> None:
    import subprocess

    from art_gifd import store

    def repo(path: Path) -> str:
        path.mkdir(parents=True)
        run = {"cwd": path, "check": True, "capture_output": True}
        subprocess.run(["git", "init", "-q"], **run)
        (path / "f.txt").write_text("x")
        subprocess.run(["git", "add", "f.txt"], **run)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], **run)
        return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()

    user_project = tmp_path / "project"
    repo(user_project)  # a user's repository with a venv inside it
    installed = user_project / ".venv" / "site-packages"  # the root of an installed art_gifd
    installed.mkdir(parents=True)
    assert store.checkout_commit(installed) is None
    checkout = tmp_path / "art-gifd"
    head = repo(checkout)
    assert store.checkout_commit(checkout) == {"commit": head, "dirty": False}
    (checkout / "f.txt").write_text("y")
    assert store.checkout_commit(checkout) == {"commit": head, "dirty": True}
    # what a run records was read when its code was imported: git is not asked again at the end of a long run
    expected = store.checkout_commit(Path(store.__file__).resolve().parents[1])
    monkeypatch.setattr(store.subprocess, "run", lambda *args, **kwargs: pytest.fail("git ran at record time"))
    assert (store.source_commit() or {}).get("commit") == (expected or {}).get("commit")


# -------------------------------------------------------------------------------------- damaged and foreign files


def _edit(record: dict, path: str, value) -> None:
    """Set the dotted ``path`` of ``record`` to ``value``; ``...`` deletes it."""
    *parents, last = path.split(".")
    for key in parents:
        record = record[key]
    if value is ...:
        del record[last]
    else:
        record[last] = value


@pytest.mark.parametrize(
    ("line", "path", "value", "words"),
    [
        (2, "result", None, "result is null, expected an object"),
        (2, "result", [1, 2], "result is [1, 2], expected an object"),
        (2, "result.per_image", None, "result.per_image is null"),
        (2, "result.per_image.psnr", [12.0, "x"], 'result.per_image.psnr[1] is "x", expected a number'),
        (2, "result.per_image.ssim", [0.5, 0.5], "result.per_image holds lists of different lengths"),
        (2, "utility", "x", 'utility is "x", expected null or an object'),
        (2, "utility.accuracy", "0.9", 'utility.accuracy is "0.9"'),
        (2, "config", None, "config is null"),
        (2, "config.batch_size", "1", 'config.batch_size is "1", expected an integer'),
        (2, "epsilon", "ten", 'epsilon is "ten", expected a number or null'),
        (2, "seconds", True, "seconds is true, expected a number"),
        (2, "status", "done", 'status is "done", expected "ok" or "error"'),
        (2, "label", 5, "label is 5, expected a string"),
        (4, "config.defense.strength", None, "config.defense.strength is null, expected the ratio"),
        (4, "defense.adaptive", ..., "defense.adaptive is missing"),
    ],
)
def test_report_leaves_out_a_damaged_record_and_names_its_line(
    reference, tmp_path, caplog, line, path, value, words
) -> None:
    lines = reference.read_text().splitlines()
    record = json.loads(lines[line - 1])
    _edit(record, path, value)
    lines[line - 1] = json.dumps(record)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join(lines) + "\n")
    write_report(damaged, tmp_path / "report")
    assert f"damaged.jsonl:{line}: skipping a damaged record ({words}" in caplog.text
    rows = json.loads((tmp_path / "report" / "tables.json").read_text())["rows"]
    runs, jobs = read_results(ResultsFile(reference))
    expected, _ = aggregate(jobs, runs[-1]["config"])
    # the other jobs' rows are those of the intact file; no number comes from the damaged line
    assert rows == [row for row in expected if row["job_ids"] != [record["job_id"]]]
    assert len(rows) == len(expected) - 1


def test_a_damaged_run_header_leaves_the_jobs_reported(reference, tmp_path, caplog) -> None:
    lines = reference.read_text().splitlines()
    header = json.loads(lines[0])
    header["executor"], header["config"]["defenses"] = None, "x"
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    write_report(damaged, tmp_path / "report")
    assert 'damaged.jsonl:1: skipping a damaged record (config.defenses is "x", expected a list)' in caplog.text
    tables = json.loads((tmp_path / "report" / "tables.json").read_text())
    assert not tables["runs"] and len(tables["rows"]) == len(lines) - 1


def test_a_damaged_record_is_run_again_by_a_resumed_bench(reference, tmp_path, caplog) -> None:
    lines = reference.read_text().splitlines()
    record = json.loads(lines[1])
    record["result"]["per_image"] = None
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    summary = run_benchmark(load_config(SMOKE), damaged, progress=False, check_inputs=False)
    assert (summary.already_done, summary.ok) == (summary.total - 1, 1)
    assert "damaged.jsonl:2: skipping a damaged record" in caplog.text
    assert job_numbers(damaged) == job_numbers(reference)


def _audit_records(path: Path) -> None:
    """The records file an audit writes (art_gifd.audit.run): one line per setting, one per defence's utility."""
    run = {"psnr": 11.0, "ssim": 0.4, "per_image": {"psnr": [11.0]}, "num_images": 1, "steps": 2, "num_restarts": 1}
    store = ResultsFile(path)
    store.append({"job_id": "b1-d0-gifd", "config_hash": "a7f4", "run": {**run, "recognisable_share": 0.0}})
    store.append({"job_id": "utility-d0", "config_hash": "a7f4", "utility": {"accuracy": 0.9}})


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("audit", "is the records file of an art-gifd audit"),
        ("capture", "is the records file of an art-gifd capture audit"),
        ("report", "is a JSON document (schema art-gifd/audit/v1)"),
    ],
)
def test_bench_and_its_report_refuse_a_file_of_another_kind_in_one_line(tmp_path, capsys, kind, words) -> None:
    path = tmp_path / "records.jsonl"
    if kind == "audit":
        _audit_records(path)
    elif kind == "capture":
        record = {"id": "u0", "round": 1, "node_id": 3, "attack": "gifd", "seed": 0, "update_explained": 0.9}
        ResultsFile(path).append({**record, "images": "u0.npz", "job_id": "u0-gifd-s0", "config_hash": "c1"})
    else:
        path.write_text(json.dumps({"schema": "art-gifd/audit/v1", "runs": [{"psnr": 1.0}] * 50}, indent=2) + "\n")
    content = path.read_bytes()
    for argv in (["bench-report", str(path)], ["bench", str(SMOKE), "--results", str(path), "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1  # no warning per line first
    assert path.read_bytes() == content  # bench appended nothing to it


def test_a_file_of_many_foreign_lines_names_only_the_first_few(tmp_path, caplog) -> None:
    from art_gifd.store import MAX_LINE_WARNINGS

    path = tmp_path / "table.csv"
    path.write_text("".join(f"a,b,{i}\n" for i in range(300)))
    with pytest.raises(ValueError, match="is a file whose first line is not JSON, not the JSON-lines results file"):
        write_report(path, tmp_path / "report")  # named by its first line, before any is read as a record
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    path.write_text(json.dumps({"type": "run", "config": {}}) + "\n" + "".join(f"a,b,{i}\n" for i in range(300)))
    with pytest.raises(ValueError, match="holds no finished job yet"):
        write_report(path, tmp_path / "report")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == MAX_LINE_WARNINGS + 1
    assert warnings[-1].endswith(f"skipped {300 - MAX_LINE_WARNINGS} more lines that are not results records")


def test_a_bench_with_failed_jobs_exits_1_and_says_where_their_errors_are(tmp_path, monkeypatch, capsys) -> None:
    config = tmp_path / "two.toml"
    config.write_text(
        textwrap.dedent(
            """\
            name = "two"
            models = ["lenet"]
            seeds = [0, 1]
            budget = { steps_per_stage = 1, stages = 1, num_restarts = 1 }
            utility = { enabled = false }
            datasets = [{ name = "mnist", source = "mnist32", num_images = 1 }]
            attacks = [{ name = "pixel" }]
            defenses = [{ type = "none" }]
            """
        )
    )
    results = tmp_path / "two.jsonl"
    real = runner_module._execute

    def second_seed_fails(job, utility, start):
        if job.config["seed"] == 1:
            raise RuntimeError("broken on purpose")
        return real(job, utility, start)

    monkeypatch.setattr(runner_module, "_execute", second_seed_fails)
    argv = ["bench", str(config), "--results", str(results), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: 1 of 2 jobs failed: their errors are recorded in {results.resolve()}" in err
    assert sorted(r["status"] for r in ResultsFile(results).read()[1]) == ["error", "ok"]  # what finished is kept
    assert main(argv) == 1  # the failure is still in the file
    assert "1 of 2 jobs failed (1 in an earlier run)" in capsys.readouterr().err
    monkeypatch.setattr(runner_module, "_execute", real)
    assert main([*argv, "--retry-errors"]) == 0


# ------------------------------------------------------------------------------- utility batch size, Ray address

#: Six images in a folder: 5 train the utility run, 1 is held out (and attacked).
FOLDER_TOML = """\
name = "small"
models = ["lenet"]
budget = { steps_per_stage = 1, stages = 1, num_restarts = 1 }
datasets = [{ name = "small", source = "folder", root = "ROOT", channels = 1, num_images = 1 }]
attacks = [{ name = "pixel" }]
defenses = [{ type = "none" }]

[utility]
rounds = 2
probe_batches = 1
batch_size = 32   # MARK:batch_size
"""


def _small_folder(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(6):
        folder = tmp_path / "images" / str(index % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{index}.png")
    return tmp_path / "images"


def test_a_utility_batch_larger_than_its_training_part_is_refused_before_the_first_job(tmp_path, capsys) -> None:
    config = tmp_path / "small.toml"
    config.write_text(FOLDER_TOML.replace("ROOT", str(_small_folder(tmp_path))))
    results = tmp_path / "small.jsonl"
    with pytest.raises(ConfigError) as caught:
        run_benchmark(load_config(config), results, progress=False)
    assert caught.value.key == "utility.batch_size" and caught.value.line == line_of(config.read_text(), "MARK:")
    assert "32 is more than the 5 training images" in caught.value.message
    assert ResultsFile(results).read()[1] == []  # no job ran
    # the default batch size (32), not written in the file, is named too
    config.write_text(config.read_text().replace("batch_size = 32", ""))
    assert main(["bench", str(config), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "utility.batch_size: 32 is more than the 5 training images" in err
    assert "Traceback" not in err


def test_attack_parameters_no_job_can_use_are_refused_before_the_first_job(tmp_path, capsys) -> None:
    text = SMOKE.read_text().replace('name = "gifd"\n', 'name = "gifd"\nparams = { latent_pool = 0 }  # MARK:\n')
    config = tmp_path / "pool.toml"
    config.write_text(text)
    results = tmp_path / "pool.jsonl"
    with pytest.raises(ConfigError) as caught:
        run_benchmark(load_config(config), results, progress=False)
    assert caught.value.key == "attacks[0].params" and caught.value.line == line_of(text, "MARK:")
    assert "latent_pool must be a positive integer" in caught.value.message
    assert not results.exists() or ResultsFile(results).read()[1] == []  # no job ran
    assert main(["bench", str(config), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "attacks[0].params" in err and "Traceback" not in err


def test_a_failed_utility_keeps_the_attacks_numbers_and_reports_no_accuracy(tmp_path) -> None:
    text = FOLDER_TOML.replace("ROOT", str(_small_folder(tmp_path)))
    results = tmp_path / "failed.jsonl"
    summary = run_benchmark(parse(text), results, progress=False, check_inputs=False)
    (record,) = ResultsFile(results).read()[1]
    assert (summary.ok, summary.errors) == (1, 0) and record["status"] == "ok" and record["utility"] is None
    assert record["utility_error"]["type"] == "ValueError" and "batch_size" in record["utility_error"]["message"]
    # the attack's numbers are those of the same job without a utility
    without = tmp_path / "without.jsonl"
    run_benchmark(parse(text.replace("rounds = 2", "enabled = false")), without, progress=False)
    (reference,) = ResultsFile(without).read()[1]
    assert record["result"]["per_image"] == reference["result"]["per_image"]
    rows, errors = aggregate([record])
    assert errors == [] and rows[0]["accuracy"] is None and rows[0]["gradient_cosine"] is None
    table = markdown(rows, errors, [], "failed")
    assert "| none | – | n/a | " in table
    # a plain rerun keeps it; --retry-errors runs it again (here the utility fails again, the numbers are the same)
    assert run_benchmark(parse(text), results, progress=False, check_inputs=False).ok == 0
    again = run_benchmark(parse(text), results, progress=False, check_inputs=False, retry_errors=True)
    rerun = ResultsFile(results).latest()[record["job_id"]]["result"]
    assert again.ok == 1 and rerun["per_image"] == record["result"]["per_image"]


def test_an_unreachable_ray_address_is_one_error_line(tmp_path, monkeypatch, capsys) -> None:
    ray = pytest.importorskip("ray")
    from art_gifd.bench.executors import RAY_PROBE_SECONDS

    calls = []

    def no_cluster(**kwargs):
        calls.append(kwargs["address"])
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    argv = ["bench", "smoke", "--results", str(tmp_path / "r.jsonl"), "--no-progress", "--ray-address"]
    assert main([*argv, "auto"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: cannot reach a Ray cluster at 'auto' (Could not find any running Ray instance): start one with "
        "`ray start --head`, or leave out --ray-address to run locally\n"
    )
    # a host:port where nothing listens fails at the probe, without Ray's minutes of retries
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    start = time.perf_counter()
    assert main([*argv, f"127.0.0.1:{port}"]) == 2
    assert time.perf_counter() - start < RAY_PROBE_SECONDS
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach a Ray cluster at '127.0.0.1:{port}' (nothing answers at 127.0.0.1:")
    assert err.count("\n") == 1 and calls == ["auto"]  # ray.init was not called for it


def test_failures_that_a_later_successful_job_replaced_are_marked(reference):
    records = ResultsFile(reference).read()[1]
    error = {"type": "ValueError", "message": "offset out of range"}
    old = {"job_id": "old", "label": records[0]["label"], "status": "error", "error": error}
    open_ = {"job_id": "open", "label": "never/ran/ok", "status": "error", "error": error}
    rows, errors = aggregate([old, open_, *records])
    assert [(e["job_id"], e["replaced"]) for e in errors] == [("old", True), ("open", False)]
    text = markdown(rows, errors, [], "t")
    assert f"| {records[0]['label']} (replaced by a later successful job) | ValueError" in text
    assert "| never/ran/ok | ValueError: offset out of range |" in text


def test_a_grid_is_counted_before_it_is_listed_and_a_huge_one_refused(monkeypatch, capsys, tmp_path):
    from art_gifd.bench import grid
    from art_gifd.cli import main

    quick = ROOT / "art_gifd" / "bench" / "profiles" / "quick.toml"
    for path in (SMOKE, quick):  # the count agrees with the listing, restrictions included
        config = load_config(path)
        assert grid.job_count(config) == len(expand_grid(config))
    monkeypatch.setattr(grid, "MAX_JOBS", 3)
    count = grid.job_count(load_config(SMOKE))
    assert main(["bench", "smoke", "--list", "--results", str(tmp_path / "r.jsonl")]) == 2
    error = capsys.readouterr().err
    assert f"the grid has {count:,} jobs" in error and "more than 3: split it" in error


def test_json_files_are_strict_json_with_null_for_non_finite_numbers(tmp_path) -> None:
    import json

    from art_gifd.store import write_json_atomic

    path = tmp_path / "out.json"
    write_json_atomic(path, {"sem": float("nan"), "rows": [{"max": float("inf"), "mean": 1.5}], "pair": (2, -np.inf)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}")) == {
        "sem": None,
        "rows": [{"max": None, "mean": 1.5}],
        "pair": [2, None],
    }


def test_more_torch_threads_than_cores_are_named_before_the_jobs(caplog, monkeypatch) -> None:
    from types import SimpleNamespace

    from art_gifd.bench.executors import LocalExecutor

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    jobs = [SimpleNamespace(resources={"cpus": 2, "gpus": 0})]
    with caplog.at_level("WARNING"):
        LocalExecutor(workers=1)._check_jobs(jobs)
    assert not caplog.text  # 2 threads on 2 cores
    with caplog.at_level("WARNING"):
        LocalExecutor(workers=2)._check_jobs(jobs)
    assert "2 worker(s) × [resources] cpus = 2 asks for 4 torch threads on 2 CPU core(s)" in caplog.text
