"""Command-line interface: ``art-gifd demo``, ``audit CONFIG``, ``bench CONFIG`` and ``bench-report RESULTS``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from art_gifd.validation import MAX_SEED, MAX_THREADS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    """Argument type: an integer ``>= low`` (and ``<= high``, if given)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


#: Argument type of a seed (the range every seed of the library takes).
SEED = count(0, MAX_SEED)
#: Argument type of a thread or worker count.
THREADS = count(1, MAX_THREADS)


class Distinct(argparse.Action):
    """
    Action of a list option (``nargs="+"``): a value given twice ends the parse with one line naming it, since a
    repeated batch size, seed or case would run the same work twice and count it twice.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        values = list(values or [])
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise argparse.ArgumentError(self, f"{repeated!r} is given more than once: give each value once.")
        setattr(namespace, self.dest, values)


def real(low: float, low_open: bool = False) -> Callable[[str], float]:
    """Argument type: a finite number ``>= low`` (``> low`` if ``low_open``)."""
    wanted = f"a finite number {'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    return parse


#: How to go on after an interruption: every long job appends its finished results as it goes.
RESUME_HINT = "run the same command again to resume (finished results are kept)"


def file_system_error(err: OSError) -> str:
    """One line for a file-system fault met while a job writes (full disk, permissions, a path of the wrong kind)."""
    where = f" '{err.filename}'" if err.filename else ""
    return f"cannot write or read{where} ({err.strerror or err}): free space or fix the path, then {RESUME_HINT}."


def run_script(main: Callable[[], object]) -> None:
    """
    Run a script's ``main``: a ``ValueError`` (the library's error for a setting it refuses, found only once the
    setting meets the data or the prior) or a results file another process writes ends it with that one-line message
    and exit status 2, a file-system fault with one line and status 1, Ctrl-C or ``kill`` with how to resume and 130;
    never a traceback.
    """
    from art_gifd.store import ResultsBusy, terminate_as_interrupt

    name = Path(sys.argv[0]).name
    try:
        with terminate_as_interrupt():
            main()
    except (ValueError, ResultsBusy) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"{name}: error: {file_system_error(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted: {RESUME_HINT}", file=sys.stderr)
        sys.exit(130)


def existing_file(text: str) -> Path:
    """Argument type: a file that exists."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a folder, a file is expected")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: '{path}'")
    return path


def output_folder(text: str) -> Path:
    """Argument type: a folder to write into (it may not exist yet, but must be creatable, and not a file)."""
    from art_gifd.validation import check_output_folder

    try:
        return check_output_folder(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def output_file(text: str) -> Path:
    """Argument type: a file to write or append to (it must not be a folder, nor lie under a file)."""
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"'{text}' is a folder: give the path of a file, e.g. '{path / 'run.jsonl'}'")
    try:
        path.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (before Python 3.13)
        raise argparse.ArgumentTypeError(
            f"'{path}' cannot be resolved ({err}): give a path without a symlink loop"
        ) from None
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"'{blocking}' is a file, so '{path}' cannot be created under it")
    if path.suffix == ".recon":  # the suffix of the folder that keeps a results file's arrays
        raise argparse.ArgumentTypeError(
            f"'{path}' would also be the folder of its reconstructions: give it another suffix, e.g. "
            f"'{path.with_suffix('.jsonl')}'"
        )
    return path


def device_name(text: str) -> str:
    """Argument type: a torch device this machine has."""
    from art_gifd.validation import check_device

    try:
        check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


THREADS_HELP = (
    "torch CPU threads (default: torch's, one per core); give 1 when other jobs keep the cores busy: with every core "
    "taken, torch's threads wait on each other and a run can take ten times longer. The thread count changes the "
    "order of float sums, so B > 1 reconstructions differ in their last digits and can then diverge"
)


#: ``--log-level`` after the command as well (``art-gifd bench smoke --log-level INFO``); the top-level default stays.
_LOG_LEVEL = argparse.ArgumentParser(add_help=False)
_LOG_LEVEL.add_argument("--log-level", default=argparse.SUPPRESS, type=str.upper, choices=LOG_LEVELS, help="as above")


def _parser() -> argparse.ArgumentParser:
    from art_gifd import __version__

    parser = argparse.ArgumentParser(prog="art-gifd", description="Measure what federated-learning gradients leak.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=LOG_LEVELS,
        help="Python logging level (default: WARNING); may also follow the command",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let LPIPS download its AlexNet weights (torchvision's file, into the torch hub cache) when missing; "
        "nothing is downloaded otherwise",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", parents=[_LOG_LEVEL], help="GIFD vs latent-only vs pixel-space attacks on the embedded data and prior"
    )
    demo.add_argument("--out", type=output_folder, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--quick", action="store_true", help="small grid, under 2 minutes on 2 idle CPU cores")
    demo.add_argument("--seed", type=count(0, MAX_SEED), default=0, help="seed of models and attacks (default: 0)")
    demo.add_argument("--device", type=device_name, default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--threads", type=THREADS, default=None, help=THREADS_HELP)
    audit = sub.add_parser(
        "audit", parents=[_LOG_LEVEL], help="audit your FL model: attacks under its defences, their cost, a report"
    )
    audit.add_argument(
        "config", type=existing_file, help="audit config, .toml or .yaml (format: art_gifd.audit.config)"
    )
    audit.add_argument("--overwrite", action="store_true", help="replace a report already in the output folder")
    audit.add_argument("--no-resume", action="store_true", help="rerun the settings an interrupted run finished")
    audit.add_argument("--no-progress", action="store_true", help="hide progress bars")
    audit.add_argument("--threads", type=THREADS, default=None, help=THREADS_HELP)
    _add_bench_parsers(sub)
    return parser


def _audit(args: argparse.Namespace) -> int:
    from art_gifd.audit import AuditConfigError, AuditRunError, run_audit
    from art_gifd.audit.captures import is_capture_audit, run_capture_audit
    from art_gifd.configfile import ConfigError
    from art_gifd.integrations.captures import CaptureError
    from art_gifd.store import read_json

    try:
        if is_capture_audit(args.config):
            paths = run_capture_audit(
                args.config, overwrite=args.overwrite, resume=not args.no_resume, verbose=not args.no_progress
            )
            summary = (read_json(paths["json"]) or {}).get("summary", {})
            risk = summary.get("highest_risk") or "n/a (no client_data to score against)"
            print(f"\nhighest risk: {risk}")
            print(f"report: {paths['html']}\nresults: {paths['json']}\nsummary: {paths['markdown']}")
            return 0
        report = run_audit(
            args.config, overwrite=args.overwrite, resume=not args.no_resume, verbose=not args.no_progress
        )
    except (AuditConfigError, ConfigError, CaptureError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except AuditRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        again = "the same command" if not (args.overwrite or args.no_resume) else "it without --overwrite/--no-resume"
        print(f"interrupted: run {again} again to resume (the settings it finished are kept)", file=sys.stderr)
        return 130
    print(f"\nhighest risk: {report.highest_risk}")
    print(f"report: {report.html}")
    print(f"results: {report.json}")
    print(f"summary: {report.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """
    Entry point of the ``art-gifd`` console script. Beyond each command's own handling, a file-system fault ends it
    with one line and status 1, and Ctrl-C or ``kill`` (during imports or input checks too) with how to resume and
    status 130.
    """
    from art_gifd.store import terminate_as_interrupt

    try:
        with terminate_as_interrupt():
            return _main(argv)
    except BrokenPipeError:  # the reader of the output went away (`art-gifd bench quick --list | head`): nothing failed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    except OSError as err:
        print(f"error: {file_system_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {RESUME_HINT}", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.allow_download:  # read by LPIPSMetric here and in worker processes, which inherit the environment
        from art_gifd.metrics import ALLOW_DOWNLOAD_ENV

        os.environ[ALLOW_DOWNLOAD_ENV] = "1"
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.command in BENCH_COMMANDS:
        return _run_bench_command(args)
    import torch

    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:  # the thread count is process-wide: restore it for callers of main() in their own process (tests, notebooks)
        return _audit(args) if args.command == "audit" else _demo(args)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace) -> int:
    from art_gifd.demo import run_demo

    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, device=args.device, verbose=not args.no_progress)
    except ValueError as err:  # an output folder or argument refused before any work
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        earlier = (args.out / "report.html").exists()
        print(
            "interrupted: the demo wrote no report"
            + (f" (the report in {args.out} is an earlier run's)" if earlier else "")
            + "; run it again (it starts over)",
            file=sys.stderr,
        )
        return 130
    print(f"\nreport: {(args.out / 'report.html').resolve()}")
    print(f"results: {(args.out / 'results.json').resolve()}")
    return 0


BENCH_COMMANDS = ("bench", "bench-report")


def _add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` and ``bench-report`` subcommands to the ``art-gifd`` parser."""
    bench = sub.add_parser(
        "bench",
        parents=[_LOG_LEVEL],
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
        "--workers", type=THREADS, default=1, help="local executor: parallel worker processes (default: 1)"
    )
    bench.add_argument("--ray-address", help="address of an existing Ray cluster (implies --executor ray)")
    bench.add_argument("--ray-cpus", type=THREADS, help="CPUs of the local Ray started on demand (default: all)")
    bench.add_argument("--ray-gpus", type=count(0), help="GPUs of the local Ray started on demand (default: all)")
    bench.add_argument("--retry-errors", action="store_true", help="run again the jobs recorded as errors")
    bench.add_argument("--list", action="store_true", help="list the jobs and whether they are done; run nothing")
    bench.add_argument("--skip-checks", action="store_true", help="do not load the data and priors before the jobs")
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    report = sub.add_parser(
        "bench-report",
        parents=[_LOG_LEVEL],
        help="tables (mean ± std) and figures from a benchmark results file",
        description="Aggregate a benchmark results file into Markdown/JSON tables and matplotlib figures.",
    )
    report.add_argument("results", type=existing_file, help="the JSON-lines results file of art-gifd bench")
    report.add_argument(
        "--out", type=output_folder, help="output folder (default: <results stem>-report beside the file)"
    )


def _run_bench_command(args: argparse.Namespace) -> int:
    """
    Run a ``bench`` or ``bench-report`` command.

    :return: Exit status: 0 done, 1 jobs failed (the others' results are written), 2 invalid configuration or input,
             130 interrupted.
    """
    from art_gifd.bench.config import ConfigError
    from art_gifd.bench.executors import ClusterTooSmall, ClusterUnreachable
    from art_gifd.bench.runner import NotBenchResults
    from art_gifd.store import ResultsBusy

    # bench-report's ValueErrors name a results file that cannot be reported (empty, or not one of bench's)
    expected = (
        ClusterTooSmall,
        ClusterUnreachable,
        ConfigError,
        FileNotFoundError,
        ImportError,
        NotBenchResults,
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
    from art_gifd.bench.runner import read_results, run_benchmark
    from art_gifd.store import ResultsFile

    ray = args.ray_address is not None or args.executor == "ray"
    ignored = (
        [o for o, v in (("--workers", args.workers != 1),) if v]
        if ray
        else [o for o, v in (("--ray-cpus", args.ray_cpus), ("--ray-gpus", args.ray_gpus)) if v is not None]
    )
    if ignored:
        other = "the local executor (leave out --executor ray and --ray-address)" if ray else "--executor ray"
        print(f"error: {' and '.join(ignored)} only apply with {other}.", file=sys.stderr)
        return 2
    config = load_config(resolve_config_path(args.config))
    results = args.results or Path("bench-out") / f"{config.name}.jsonl"
    if args.list:
        done = {r["job_id"]: r for r in read_results(ResultsFile(results))[1]}
        for job in expand_grid(config):
            print(f"{job.job_id}  {done.get(job.job_id, {}).get('status', 'todo'):5s}  {job.label}")
        return 0
    if ray:
        executor = RayExecutor(address=args.ray_address, num_cpus=args.ray_cpus, num_gpus=args.ray_gpus)
    else:
        executor = LocalExecutor(workers=args.workers)
    summary = run_benchmark(
        config,
        results,
        executor,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
        command=_bench_command(args),
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
    print(f"tables and figures: art-gifd bench-report {shlex.quote(str(summary.results))}")
    failed = summary.errors + summary.failed_before
    if failed:
        print(
            f"error: {failed} of {summary.total} jobs failed"
            + (f" ({summary.failed_before} in an earlier run)" if summary.failed_before else "")
            + f": their errors are recorded in {summary.results.resolve()} (and listed by bench-report); fix the "
            "cause, then rerun with --retry-errors",
            file=sys.stderr,
        )
        return 1
    return 0


def _bench_command(args: argparse.Namespace) -> str:
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

    default = args.results.with_name(args.results.stem + "-report")
    if args.out is None and default.exists() and not default.is_dir():
        print(
            f"error: '{default}' (the default report folder) is a file: give the report a folder with --out.",
            file=sys.stderr,
        )
        return 2
    written = write_report(args.results, args.out)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
