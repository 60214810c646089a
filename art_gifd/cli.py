"""Command-line interface: ``art-gifd demo``, ``art-gifd audit CONFIG``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def count(low: int) -> Callable[[str], int]:
    """Argument type: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def existing_file(text: str) -> Path:
    """Argument type: a file that exists."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a folder, a file is expected")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: '{path}'")
    return path


def output_folder(text: str) -> Path:
    """Argument type: a folder to write into (it may not exist yet, but must not be a file)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a file, not a folder: give a folder to write the outputs into")
    return path


def output_file(text: str) -> Path:
    """Argument type: a file to write or append to (it must not be a folder)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{path}' is a folder: give the path of a file, e.g. '{path / 'run.jsonl'}'")
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="art-gifd", description="Measure what federated-learning gradients leak.")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=LOG_LEVELS,
        help="Python logging level (default: WARNING)",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let LPIPS download its AlexNet weights (torchvision's file, into the torch hub cache) when missing; "
        "nothing is downloaded otherwise",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="GIFD vs latent-only vs pixel-space attacks on the embedded data and prior")
    demo.add_argument("--out", type=output_folder, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--quick", action="store_true", help="small grid, under 2 minutes on 2 idle CPU cores")
    demo.add_argument("--seed", type=count(0), default=0, help="seed of models and attacks (default: 0)")
    demo.add_argument("--device", type=device_name, default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument("--threads", type=count(1), default=None, help=THREADS_HELP)
    audit = sub.add_parser("audit", help="audit your FL model: attacks under its defences, their cost, a report")
    audit.add_argument(
        "config", type=existing_file, help="audit config, .toml or .yaml (format: art_gifd.audit.config)"
    )
    audit.add_argument("--overwrite", action="store_true", help="replace a report already in the output folder")
    audit.add_argument("--no-resume", action="store_true", help="rerun the settings an interrupted run finished")
    audit.add_argument("--no-progress", action="store_true", help="hide progress bars")
    audit.add_argument("--threads", type=count(1), default=None, help=THREADS_HELP)
    from art_gifd.bench.cli import add_bench_parsers

    add_bench_parsers(sub)
    return parser


def _audit(args: argparse.Namespace) -> int:
    from art_gifd.audit import AuditConfigError, run_audit
    from art_gifd.audit.captures import is_capture_audit, run_capture_audit
    from art_gifd.configfile import ConfigError

    try:
        if is_capture_audit(args.config):
            paths = run_capture_audit(args.config, resume=not args.no_resume, verbose=not args.no_progress)
            print(f"\nreport: {paths['html']}\nresults: {paths['json']}\nsummary: {paths['markdown']}")
            return 0
        report = run_audit(
            args.config, overwrite=args.overwrite, resume=not args.no_resume, verbose=not args.no_progress
        )
    except (AuditConfigError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished settings are saved: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"\nhighest risk: {report.highest_risk}")
    print(f"report: {report.html}")
    print(f"results: {report.json}")
    print(f"summary: {report.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``art-gifd`` console script."""
    args = _parser().parse_args(argv)
    if args.allow_download:  # read by LPIPSMetric here and in worker processes, which inherit the environment
        from art_gifd.metrics import ALLOW_DOWNLOAD_ENV

        os.environ[ALLOW_DOWNLOAD_ENV] = "1"
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    from art_gifd.bench.cli import BENCH_COMMANDS, run_bench_command

    if args.command in BENCH_COMMANDS:
        return run_bench_command(args)
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
    except KeyboardInterrupt:
        print("interrupted; nothing was written for the unfinished demo", file=sys.stderr)
        return 130
    print(f"\nreport: {(args.out / 'report.html').resolve()}")
    print(f"results: {(args.out / 'results.json').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
