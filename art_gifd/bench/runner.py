"""
Run benchmark jobs and keep their results in an append-only JSON-lines file that survives crashes.

Every finished job appends one line (written in one call, flushed and fsynced), so a job is either entirely in the
file or not at all; a line torn by a crash during the write is discarded when the file is opened again. A rerun
skips the jobs already in the file, so killing a run at any moment and starting it again loses and duplicates
nothing. A job that raises is recorded as an error line (exception and traceback summary) and the grid goes on.
A line of the wrong shape (edited by hand) is skipped with a warning naming it, and its job is run again.

Line types (``schema`` ``art-gifd/bench/v1``):

- ``{"type": "run", ...}``: one per invocation: command, git commit, date, device, configuration and its hash.
- ``{"type": "job", "status": "ok", ...}``: the job's configuration, the attack's scores (``result``: PSNR, SSIM,
  LPIPS means and per-image values, label accuracy, steps, chosen stages), the defence with its (epsilon, delta),
  the utility (:func:`~art_gifd.utility.measure_utility`), seconds, device and threads. A utility measurement that
  failed after the attack finished leaves ``utility`` null and its error in ``utility_error`` (type, message).
- ``{"type": "job", "status": "error", ...}``: the job's configuration and the error.

Reconstructions (8-bit, for figures only) go to ``<results stem>.recon/<job id>.npz`` before the job's line.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_gifd.bench.config import BenchConfig
from art_gifd.bench.executors import Executor, ExecutorFailure, LocalExecutor
from art_gifd.bench.grid import Job, JobOutcome, expand_grid, job_id
from art_gifd.store import (
    NULL,
    NUMBER,
    ResultsFile,
    environment,
    shape_problem,
    source_commit,
    terminate_as_interrupt,
)
from art_gifd.validation import inside_image_folder

logger = logging.getLogger(__name__)

SCHEMA = "art-gifd/bench/v1"
#: Frames kept in the traceback summary of a failed job.
TRACEBACK_FRAMES = 8

_MAYBE_NUMBER = (*NUMBER, NULL)
_STRENGTH = (*NUMBER, str, NULL)  # a grid may list text values too (a pruning scope, an accountant)
#: What the report reads of a run header (see :func:`~art_gifd.store.shape_problem`): the title and grid order.
RUN_SHAPE = {
    "config": {
        "name?": str,
        "datasets?": [{"name": str}],
        "models?": [str],
        "batch_sizes?": [int],
        "attacks?": [{"label": str}],
        "defenses?": [{"name": str, "points": [{"strength": _STRENGTH, "adaptive": bool}]}],
    },
    "executor?": dict,
}
#: What the report and a resumed run read of a failed job's line.
ERROR_SHAPE = {"job_id": str, "label": str, "error": {"type": str, "message": str}}
#: What they read of a successful job's line (``shared_label`` is missing from lines written before it was kept).
OK_SHAPE = {
    "job_id": str,
    "label": str,
    "config": {
        "dataset": {"name": str},
        "model": str,
        "batch_size": int,
        "seed": int,
        "attack": {"name": str, "label": str},
        "defense": {"name": str, "type": str, "grid": (str, NULL), "strength": _STRENGTH},
    },
    "result": {
        "per_image": {
            "psnr": [NUMBER],
            "ssim": (NULL, [NUMBER]),
            "lpips": (NULL, [NUMBER]),
            "shared_label?": (NULL, [bool]),
        },
        "label_accuracy": _MAYBE_NUMBER,
        "lpips_unavailable_reason?": (str, NULL),
    },
    "defense": {"adaptive": bool},
    "epsilon": _MAYBE_NUMBER,
    "delta": _MAYBE_NUMBER,
    "utility_key": (str, NULL),
    "utility": (NULL, {"accuracy": _MAYBE_NUMBER, "gradient_cosine": _MAYBE_NUMBER}),
    "seconds": NUMBER,
}


def run_job(job: Job, utility: dict[str, Any] | None = None) -> JobOutcome:
    """
    Run one job: a pure function of its configuration and seed (same configuration, seed and device → same numbers).

    Exceptions of the job are caught and returned as an error record, so an executor never loses a failure.

    :param job: The job.
    :param utility: Its utility measurement if already known (jobs with the same ``utility_key`` share it);
                    ``None`` measures it.
    :return: The outcome, ``record["status"]`` ``"ok"`` or ``"error"``.
    """
    import torch

    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(int(job.resources["cpus"]))
        return _execute(job, utility, start)
    except Exception as exc:  # recorded, not raised: the grid goes on
        logger.warning("job %s failed: %s: %s", job.label, type(exc).__name__, exc)
        return JobOutcome(error_record(job, exc, time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)


def _execute(job: Job, utility: dict[str, Any] | None, start: float) -> JobOutcome:
    import torch

    from art_gifd.bench.components import load_images, utility_data
    from art_gifd.defenses.registry import cached_defense
    from art_gifd.experiment import Budget, Case, Experiment, run_experiment
    from art_gifd.federated import local_training
    from art_gifd.models import build_model, make_classifier
    from art_gifd.priors.registry import load_prior
    from art_gifd.utility import measure_utility

    cfg = job.config
    seed, device = cfg["seed"], cfg["device"]
    dataset, attack, defense_spec = cfg["dataset"], cfg["attack"], cfg["defense"]
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy's global generator takes 32 bits; a seed may have 63
    torch.manual_seed(seed)
    x, y, num_classes = load_images(dataset)
    defense = cached_defense(defense_spec["type"], defense_spec["params"])
    prior_name = cfg["prior"]["name"] if cfg["prior"] else None
    case = Case(
        cfg["model"],
        dataset["name"],
        cfg["batch_size"],
        dataset["num_images"],
        split=dataset["split"],
        offset=dataset["offset"],
        defense=defense,
        adaptive=defense_spec["adaptive"],
        data=(x, y),
        num_classes=num_classes,
        training=local_training(cfg.get("federated")),
    )
    experiment = Experiment(
        [case],
        (attack["name"],),
        Budget(**attack["budget"]),
        seed=seed,
        device=device,
        verbose=False,
        attack_params={attack["name"]: attack["params"]},
        labels_known=attack.get("labels") == "known",
    )
    batches: list[tuple[np.ndarray, np.ndarray]] = []
    prior = load_prior(cfg["prior"]["spec"], device) if cfg["prior"] else None
    result = run_experiment(experiment, prior, prior_name, on_batch=lambda c, a, xs, rs: batches.append((xs, rs)))[0]
    utility_error = None
    if cfg["utility"] is not None and utility is None:
        try:
            model = build_model(cfg["model"], x.shape[1], x.shape[-1], num_classes, seed=seed)
            estimator = make_classifier(model, x.shape[1:], nb_classes=num_classes, device=device)
            data, description = utility_data(dataset)
            measured = measure_utility(defense, estimator, data=data, seed=seed, **cfg["utility"])
            utility = {**measured.as_dict(), "data": description}
        except Exception as exc:  # the attack's numbers are kept: only the utility is lost (and recorded as failed)
            logger.warning("utility of job %s failed: %s: %s", job.label, type(exc).__name__, exc)
            utility_error = {"type": type(exc).__name__, "message": str(exc)}
    described = result["defense"]
    record = {
        **_job_fields(job),
        "status": "ok",
        "result": result,
        "defense": described,
        "epsilon": described["epsilon"],
        "delta": described["delta"],
        "utility_key": job.utility_key,
        "utility": utility,
        **({"utility_error": utility_error} if utility_error else {}),
        "seconds": time.perf_counter() - start,
        **_where(job),
    }
    originals = np.concatenate([xs for xs, _ in batches])
    reconstructions = np.concatenate([rs for _, rs in batches])
    return JobOutcome(record, originals, reconstructions)


def _job_fields(job: Job) -> dict[str, Any]:
    return {"type": "job", "schema": SCHEMA, "job_id": job.job_id, "label": job.label, "config": job.config}


def _where(job: Job) -> dict[str, Any]:
    return {
        "device": job.config["device"],
        "threads": int(job.resources["cpus"]),
        "host": platform.node(),
        "finished": _now(),
    }


def error_record(job: Job, exc: BaseException, seconds: float | None = None) -> dict[str, Any]:
    """
    The results line of a failed job: exception type, message and the last frames of its traceback.

    :param job: The job.
    :param exc: What it raised.
    :param seconds: How long it ran, if known.
    """
    frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    return {
        **_job_fields(job),
        "status": "error",
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": [f"{Path(f.filename).name}:{f.lineno} in {f.name}: {f.line or ''}".strip() for f in frames],
        },
        "seconds": seconds,
        **_where(job),
    }


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------- reading back


class NotBenchResults(ValueError):
    """The file given as a results file is of another kind (an audit's records, a JSON report)."""


def record_problem(record: dict[str, Any]) -> str | None:
    """
    What is wrong with a line of a results file, read back after a hand edit or a write by another program.

    :param record: A JSON object of the file.
    :return: ``None`` for a run header or job line of the shape this module writes, else the problem in one phrase.
    """
    if record.get("type") == "run":
        return shape_problem(record, RUN_SHAPE)
    if record.get("status") not in ("ok", "error"):
        return f'status is {json.dumps(record.get("status"))}, expected "ok" or "error"'
    problem = shape_problem(record, OK_SHAPE if record["status"] == "ok" else ERROR_SHAPE)
    if problem is not None or record["status"] == "error":
        return problem or _edited(record)
    defense = record["config"]["defense"]
    if defense["grid"] is not None and defense["strength"] is None:
        return f"config.defense.strength is null, expected the {defense['grid']} of the grid point"
    per_image = record["result"]["per_image"]
    lengths = {
        k: len(v) for k, v in per_image.items() if k in ("psnr", "ssim", "lpips", "shared_label") and v is not None
    }
    if len(set(lengths.values())) > 1:
        return f"result.per_image holds lists of different lengths ({lengths})"
    return _edited(record)


def _edited(record: dict[str, Any]) -> str | None:
    """Whether a job line's identifier is not the hash of its configuration (another setting under its name)."""
    if isinstance(record.get("config"), dict) and record["job_id"] != job_id(record["config"]):
        return "job_id is not the hash of its config (a line edited by hand?): the job will run again"
    return None


def _other_kind(path: Path) -> str | None:
    """
    What kind of file ``path`` is if it is clearly not a results file of this module (a JSON document, the records
    file of an audit, text that is not JSON lines), judged before its lines are read one by one (a run would
    otherwise truncate what looks like a torn last line and append to it); ``None`` otherwise.
    """
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:  # JSON lines never parse as one document, a report does
        try:
            document = json.loads(text)
        except ValueError:
            pass
        else:
            schema = document.get("schema") if isinstance(document, dict) else None
            return "a JSON document" + (f" (schema {schema})" if isinstance(schema, str) else "")
    try:
        first = json.loads(lines[0]) if lines else None
    except ValueError:
        # a first record cut by an interrupted write still starts as one; notes, a report or a config do not
        return None if lines[0].lstrip().startswith("{") else "a file whose first line is not JSON"
    # an audit's lines: {job_id, config_hash, run | utility}; a capture audit's: one flat record per update
    if isinstance(first, dict) and "type" not in first and "config_hash" in first:
        if "update_explained" in first:
            return "the records file of an art-gifd capture audit"
        if "run" in first or "utility" in first:
            return "the records file of an art-gifd audit (its report is report.html in the audit's output folder)"
    return None


def read_results(
    store: ResultsFile,
    way_out: str = "give 'art-gifd bench' a results file of its own (--results)",
    repair: bool = False,
) -> tuple[list[dict], list[dict]]:
    """
    The run headers and job records of a results file; a line of the wrong shape (:func:`record_problem`) is skipped
    with a warning naming its line number, so that nothing is computed from it.

    :param store: The results file.
    :param way_out: What to do when it is of another kind, for the error message.
    :param repair: As in :meth:`~art_gifd.store.ResultsFile.read`.
    :return: ``(runs, jobs)``.
    :raises NotBenchResults: If the file is of another kind (checked before any line is read).
    """
    kind = _other_kind(store.path)
    if kind is not None:
        raise NotBenchResults(
            f"'{store.path}' is {kind}, not the JSON-lines results file of art-gifd bench: {way_out}."
        )
    return store.read(repair=repair, check=record_problem)


# ---------------------------------------------------------------------------------------------------------- driver


@dataclass
class BenchSummary:
    """What a call of :func:`run_benchmark` did."""

    results: Path
    total: int
    already_done: int
    ok: int = 0
    errors: int = 0
    #: Jobs skipped because the file records them as failed (without ``retry_errors``).
    failed_before: int = 0
    interrupted: bool = False
    failed_labels: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        """Jobs still to run (after an interruption)."""
        return self.total - self.already_done - self.ok - self.errors


def run_benchmark(
    config: BenchConfig,
    results: str | Path,
    executor: Executor | None = None,
    retry_errors: bool = False,
    progress: bool = True,
    command: str | None = None,
    check_inputs: bool = True,
) -> BenchSummary:
    """
    Run the jobs of ``config`` that ``results`` does not hold yet and append their lines to it.

    Ctrl-C (SIGINT) or ``kill`` (SIGTERM) stops cleanly: no partial line is written, unfinished jobs and their
    worker processes are stopped, and a rerun resumes. One run at a time writes a results file (a lock).

    :param config: The validated configuration.
    :param results: The JSON-lines results file (created if missing, resumed if present).
    :param executor: Where jobs run (default: :class:`~art_gifd.bench.executors.LocalExecutor`, sequential).
    :param retry_errors: Run again the jobs whose last line is an error, or whose utility measurement failed.
    :param progress: Show a progress bar.
    :param command: The command line recorded in the run header.
    :param check_inputs: Load every data set and prior once before the first job, to fail early (with the
                         configuration line) on missing files and shape mismatches.
    :return: Counts of what was done.
    :raises ConfigError: If ``check_inputs`` finds a problem.
    :raises ClusterTooSmall: If the executor's workers could never run the jobs (too few CPUs or GPUs).
    :raises ResultsBusy: If another run is writing ``results``.
    :raises NotBenchResults: If ``results`` is a file of another kind (an audit's records, a JSON report).
    """
    executor = executor if executor is not None else LocalExecutor()
    store = ResultsFile(results)
    for i, spec in enumerate(config.datasets):
        for written in (store.path, store.arrays_dir) if spec["source"] == "folder" else ():
            problem = inside_image_folder(written, spec["root"])
            if problem is not None:
                raise config.error(("datasets", i, "root"), f"the results: {problem}")
    with store.lock(), terminate_as_interrupt():
        return _run_locked(config, store, executor, retry_errors, progress, command, check_inputs)


def _run_locked(
    config: BenchConfig,
    store: ResultsFile,
    executor: Executor,
    retry_errors: bool,
    progress: bool,
    command: str | None,
    check_inputs: bool,
) -> BenchSummary:
    _, previous = read_results(store, repair=True)
    latest = {record["job_id"]: record for record in previous}
    # with retry_errors, a job whose utility failed after its attack runs again too
    done = {k for k, r in latest.items() if (r["status"] == "ok" and "utility_error" not in r) or not retry_errors}
    utilities = {r["utility_key"]: r["utility"] for r in previous if r["status"] == "ok" and r.get("utility")}
    jobs = expand_grid(config)
    todo = [job for job in jobs if job.job_id not in done]
    failed_before = sum(job.job_id in done and latest[job.job_id]["status"] == "error" for job in jobs)
    summary = BenchSummary(store.path, len(jobs), len(jobs) - len(todo), failed_before=failed_before)
    if not todo:
        return summary
    if check_inputs:
        check_job_inputs(config, todo)
    # a file where the reconstructions go would fail each finished job's write: fail here, before the first job runs
    store.arrays_dir.mkdir(parents=True, exist_ok=True)
    executor.start(run_job, todo)
    bar = tqdm(total=len(todo), desc=config.name, unit="job", disable=not progress)
    pending: dict[Any, Job] = {}
    queue = list(reversed(todo))
    #: Jobs that were in flight when a worker process died: each runs again, alone, so that the one that kills its
    #: worker (e.g. out of memory) is found and recorded as an error while the others finish.
    suspects: set[str] = set()

    def record(outcome: JobOutcome) -> None:
        _store(store, outcome, summary, utilities)
        bar.update(1)
        bar.set_postfix(ok=summary.ok, errors=summary.errors)
        if outcome.record["status"] == "error":
            error = outcome.record["error"]
            bar.write(f"error in {outcome.record['label']}: {error['type']}: {error['message']}")
        elif "utility_error" in outcome.record:
            error = outcome.record["utility_error"]
            bar.write(f"utility not measured in {outcome.record['label']}: {error['type']}: {error['message']}")

    try:
        store.append(_run_header(config, executor, command, summary))
        while queue or pending:
            while queue and len(pending) < executor.slots and not suspects & {j.job_id for j in pending.values()}:
                if queue[-1].job_id in suspects and pending:
                    break  # a suspect waits until it can run alone
                job = queue.pop()
                pending[executor.submit(job, utilities.get(job.utility_key))] = job
            for handle in executor.wait(list(pending)):
                job = pending.pop(handle)
                try:
                    outcome = executor.result(handle)
                except ExecutorFailure as exc:
                    lost = [job, *pending.values()]
                    pending.clear()
                    bar.write(f"a worker died with {len(lost)} job(s) in flight; restarting the workers")
                    executor.restart()
                    for lost_job in lost:
                        if lost_job.job_id in suspects:  # it ran alone: it killed its worker
                            record(JobOutcome(error_record(lost_job, exc)))
                        else:
                            suspects.add(lost_job.job_id)
                            queue.append(lost_job)
                    break  # the other handles of this wait belonged to the broken pool
                except Exception as exc:  # the executor lost the job (e.g. a Ray worker died): record it
                    outcome = JobOutcome(error_record(job, exc))
                record(outcome)
    except KeyboardInterrupt:
        summary.interrupted = True
        executor.cancel(list(pending))
    finally:
        bar.close()
        try:
            executor.shutdown()
        except KeyboardInterrupt:  # Ctrl-C while the workers wind down: stop them now
            executor.cancel([])
            summary.interrupted |= summary.remaining > 0
    return summary


def _store(store: ResultsFile, outcome: JobOutcome, summary: BenchSummary, utilities: dict[str, Any]) -> None:
    record = outcome.record
    if record["status"] == "ok":
        if outcome.originals is not None:
            images = {"originals": outcome.originals, "reconstructions": outcome.reconstructions}
            path = store.save_arrays(record["job_id"], {k: _to_uint8(v) for k, v in images.items()})
            record["reconstructions"] = f"{path.parent.name}/{path.name}"
        if record.get("utility"):
            utilities[record["utility_key"]] = record["utility"]
        summary.ok += 1
    else:
        summary.errors += 1
        summary.failed_labels.append(record["label"])
    store.append(record)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in ``[0, 1]`` as 8 bits: the saved reconstructions serve figures only."""
    return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def _run_header(config: BenchConfig, executor: Executor, command: str | None, summary: BenchSummary) -> dict:
    git = source_commit() or {}
    return {
        "type": "run",
        "schema": SCHEMA,
        "command": command,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "date": _now(),
        "device": config.device,
        "config_source": config.source,
        "config_hash": config.config_hash,
        "config": config.as_dict(),
        "executor": executor.describe(),
        "environment": {**environment(config.seeds[0], config.device), "seed": config.seeds},
        "jobs_total": summary.total,
        "jobs_already_done": summary.already_done,
    }


def check_job_inputs(config: BenchConfig, jobs: list[Job]) -> None:
    """
    Check the device, and load every data set, prior and model the jobs use once and check that they fit together.

    :raises ConfigError: Naming the configuration key (and line) of an unusable device, a missing file, a data set
                         with too few images (for the attack, or for the utility run's ``utility.batch_size``), a
                         prior whose images do not have the data set's shape, a model that cannot be built, or an
                         attack whose parameters its constructor refuses.
    """
    from art_gifd.attacks.registry import Budget, build_attack
    from art_gifd.bench.components import load_images
    from art_gifd.federated import local_training
    from art_gifd.models import build_model, make_classifier
    from art_gifd.priors.registry import load_prior
    from art_gifd.validation import check_device

    try:
        check_device(config.device)
    except ValueError as exc:
        raise config.error(
            ("device",),
            f"{str(exc).rstrip('.')}, run on a GPU machine, or skip these checks (--skip-checks) when the jobs go to "
            "Ray workers that have GPUs",
        ) from None
    datasets = {d["name"]: i for i, d in enumerate(config.datasets)}
    attacks = {a["label"]: i for i, a in enumerate(config.attacks)}
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    priors: dict[str, Any] = {}
    for name in dict.fromkeys(job.config["dataset"]["name"] for job in jobs):
        spec = config.datasets[datasets[name]]
        try:
            x, _, num_classes = load_images(spec)
        except (OSError, ValueError) as exc:
            raise config.error(("datasets", datasets[name]), f"cannot load the images: {exc}") from None
        if spec["offset"] + spec["num_images"] > len(x):
            raise config.error(
                ("datasets", datasets[name], "num_images"),
                f"offset {spec['offset']} + num_images {spec['num_images']} exceeds the {len(x)} images of split "
                f"'{spec['split']}'",
            )
        shapes[name] = (tuple(x.shape[1:]), num_classes)
        if config.utility is not None:
            _check_utility_data(config, datasets[name])
    for model, name in dict.fromkeys((job.config["model"], job.config["dataset"]["name"]) for job in jobs):
        shape, num_classes = shapes[name]
        try:
            build_model(model, shape[0], shape[-1], num_classes)
        except ValueError as exc:
            raise config.error(("models", config.models.index(model)), f"on data set '{name}': {exc}") from None
    for label, prior_name, name in dict.fromkeys(
        (job.config["attack"]["label"], job.config["prior"]["name"], job.config["dataset"]["name"])
        for job in jobs
        if job.config["prior"]
    ):
        try:
            prior = priors.get(prior_name) or load_prior(config.priors[prior_name], "cpu")
        except (OSError, ValueError) as exc:
            raise config.error(("priors", prior_name), f"cannot load the generator: {exc}") from None
        priors[prior_name] = prior
        if tuple(prior.image_shape) != shapes[name][0]:
            raise config.error(
                ("attacks", attacks[label], "prior"),
                f"prior '{prior_name}' generates images of shape {tuple(prior.image_shape)} but data set '{name}' has "
                f"{shapes[name][0]}: use a prior of the data's shape or restrict the attack with datasets = [...]",
            )
    # Every attack is built once per model, data set and client size, so that its parameter checks run before any
    # job. One that no job can build is a configuration error; one that fails only with some models (GradInversion
    # without BatchNorm) runs where it can and its other jobs are recorded as failed.
    failures: dict[str, str] = {}
    usable: set[str] = set()
    tried: set[str] = set()
    for job in jobs:
        cfg, attack = job.config, job.config["attack"]
        label = attack["label"]
        # jobs that differ only in defence or seed build the same attack: one build each
        what = json.dumps([label, cfg["model"], cfg["dataset"]["name"], cfg["batch_size"], cfg.get("federated")])
        if label in usable or what in tried:
            continue
        tried.add(what)
        shape, num_classes = shapes[cfg["dataset"]["name"]]
        model = build_model(cfg["model"], shape[0], shape[-1], num_classes)
        try:
            build_attack(
                attack["name"],
                make_classifier(model, shape, nb_classes=num_classes),
                priors[cfg["prior"]["name"]] if cfg["prior"] else None,
                Budget(**attack["budget"]),
                cfg["batch_size"],
                0,
                verbose=False,
                training=local_training(cfg.get("federated")),
                **attack["params"],
            )
        except ValueError as exc:
            failures.setdefault(label, f"on model '{cfg['model']}' with data set '{cfg['dataset']['name']}': {exc}")
        else:
            usable.add(label)
    for label, problem in failures.items():
        if label not in usable:
            attack = config.attacks[attacks[label]]
            raise config.error(
                ("attacks", attacks[label], "params" if attack["params"] else "name"),
                f"attack '{label}' cannot run in any job of this grid, e.g. {problem}",
            )


def _check_utility_data(config: BenchConfig, index: int) -> None:
    """
    Check that the utility run of data set ``index`` can draw ``utility.batch_size`` distinct training images (what
    :func:`~art_gifd.utility.measure_utility` would refuse after each job's attack).

    :raises ConfigError: Naming ``utility.batch_size`` (or the data set if its utility data cannot be loaded).
    """
    from art_gifd.bench.components import utility_data

    spec = config.datasets[index]
    try:
        (x_train, *_), description = utility_data(spec)
    except (OSError, ValueError) as exc:
        raise config.error(("datasets", index), f"cannot load the utility data: {exc}") from None
    batch_size = config.utility["batch_size"]
    if batch_size > len(x_train):
        raise config.error(
            ("utility", "batch_size"),
            f"{batch_size} is more than the {len(x_train)} training images of the utility run on data set "
            f"'{spec['name']}' ({description}): lower it to at most {len(x_train)}, use more images, or turn the "
            "utility off (enabled = false)",
        )


__all__ = [
    "SCHEMA",
    "BenchSummary",
    "JobOutcome",
    "NotBenchResults",
    "check_job_inputs",
    "error_record",
    "read_results",
    "record_problem",
    "run_benchmark",
    "run_job",
]
