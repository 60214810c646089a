"""The ``art-gifd bench`` and ``art-gifd bench-report`` subcommands (registered by :mod:`art_gifd.cli`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

BENCH_COMMANDS = ("bench", "bench-report")


def add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` and ``bench-report`` subcommands to the ``art-gifd`` parser."""
    from art_gifd.cli import count, existing_file, output_file, output_folder

    bench = sub.add_parser(
        "bench",
        help="run an attack x defence benchmark grid (resumable, local or Ray)",
        description="Run the jobs of a benchmark configuration that the results file does not hold yet.",
    )
    bench.add_argument(
        "config", help="YAML/TOML configuration, or a profile name (smoke, quick, full: art_gifd/bench/profiles)"
    )
    bench.add_argument(
        "--results",
        type=output_file,
        help="JSON-lines results file, resumed if it exists (default: bench-out/<name>.jsonl)",
    )
    bench.add_argument("--executor", choices=("local", "ray"), default="local", help="where jobs run (default: local)")
    bench.add_argument(
        "--workers", type=count(1), default=1, help="local executor: parallel worker processes (default: 1)"
    )
    bench.add_argument("--ray-address", help="address of an existing Ray cluster (implies --executor ray)")
    bench.add_argument("--ray-cpus", type=count(1), help="CPUs of the local Ray started on demand (default: all)")
    bench.add_argument("--ray-gpus", type=count(0), help="GPUs of the local Ray started on demand (default: all)")
    bench.add_argument("--retry-errors", action="store_true", help="run again the jobs recorded as errors")
    bench.add_argument("--list", action="store_true", help="list the jobs and whether they are done; run nothing")
    bench.add_argument("--skip-checks", action="store_true", help="do not load the data and priors before the jobs")
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    report = sub.add_parser(
        "bench-report",
        help="tables (mean ± std) and figures from a benchmark results file",
        description="Aggregate a benchmark results file into Markdown/JSON tables and matplotlib figures.",
    )
    report.add_argument("results", type=existing_file, help="the JSON-lines results file of art-gifd bench")
    report.add_argument(
        "--out", type=output_folder, help="output folder (default: <results stem>-report beside the file)"
    )


def run_bench_command(args: argparse.Namespace) -> int:
    """
    Run a ``bench`` or ``bench-report`` command.

    :return: Exit status: 0 done, 2 invalid configuration or input, 130 interrupted.
    """
    from art_gifd.bench.config import ConfigError
    from art_gifd.bench.runner import ResultsBusy

    # bench-report's ValueErrors name a results file that cannot be reported (empty, or not one of bench's)
    expected = (
        ConfigError,
        FileNotFoundError,
        ImportError,
        ResultsBusy,
        *((ValueError,) if args.command == "bench-report" else ()),
    )
    try:
        return _bench(args) if args.command == "bench" else _report(args)
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    from art_gifd.bench.config import load_config, resolve_config_path
    from art_gifd.bench.executors import LocalExecutor, RayExecutor
    from art_gifd.bench.grid import expand_grid
    from art_gifd.bench.runner import ResultsFile, run_benchmark

    config = load_config(resolve_config_path(args.config))
    results = args.results or Path("bench-out") / f"{config.name}.jsonl"
    if args.list:
        done = ResultsFile(results).latest()
        for job in expand_grid(config):
            print(f"{job.job_id}  {done.get(job.job_id, {}).get('status', 'todo'):5s}  {job.label}")
        return 0
    if args.ray_address or args.executor == "ray":
        executor = RayExecutor(address=args.ray_address, num_cpus=args.ray_cpus, num_gpus=args.ray_gpus)
    else:
        executor = LocalExecutor(workers=args.workers)
    summary = run_benchmark(
        config,
        results,
        executor,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        command=_command(args),
        check_inputs=not args.skip_checks,
    )
    print(
        f"{summary.total} jobs: {summary.already_done} already done, {summary.ok} ran, {summary.errors} failed"
        + (f", {summary.remaining} left" if summary.remaining else "")
    )
    for label in summary.failed_labels:
        print(f"  failed: {label}")
    print(f"results: {summary.results.resolve()}")
    if summary.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"tables and figures: art-gifd bench-report {summary.results}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The ``art-gifd bench`` command line equivalent to ``args`` (recorded in the results file)."""
    words = ["art-gifd", "bench", str(args.config)]
    for name in ("results", "executor", "workers", "ray_address", "ray_cpus", "ray_gpus"):
        value = getattr(args, name)
        if value is not None and value != {"executor": "local", "workers": 1}.get(name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    for name in ("retry_errors", "skip_checks", "no_progress"):
        if getattr(args, name):
            words.append(f"--{name.replace('_', '-')}")
    return shlex.join(words)


def _report(args: argparse.Namespace) -> int:
    from art_gifd.bench.report import write_report

    written = write_report(args.results, args.out)
    for path in written:
        print(path)
    return 0
