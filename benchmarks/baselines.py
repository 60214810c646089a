"""
Baselines side by side: every attack on the same model, gradients and images, at equal step budget and at equal
wall-clock budget, batch sizes 1 and 4, on the embedded data and prior.

Equal steps: every attack runs ``--steps`` optimisation steps per restart (GIFD 4 stages of a quarter each, GIAS two
halves, DLG/iDLG L-BFGS objective evaluations, GGL CMA-ES generations). Equal wall-clock: each attack's steps are
rescaled so that its time in the equal-steps run would match GIFD's (per model and batch size). The time is the
process CPU time of the row (single-threaded: wall-clock time on an idle machine; attacks plus the same set-up of
model, gradients and scoring), which stays comparable when other jobs share the cores; rows measured before CPU time
was recorded are rescaled by their wall-clock seconds.

Resumable: each finished (model, mode, batch size, attack) row is a record of the results file ``--jsonl``
(:class:`art_gifd.store.ResultsFile`) with the command, commit and load average that produced it, and skipped on
rerun; ``--out`` gets the results document (``art-gifd/results/v1``) of every row in ``--jsonl``, all models
together, and an existing one is replaced only with ``--overwrite`` (checked before any row runs). GradInversion needs
BatchNorm, so it runs on ``convnet-bn`` beside a few other attacks; the second call rewrites the document of the first
with the rows of both::

    .venv/bin/python benchmarks/baselines.py --steps 200 --images 16 --overwrite
    .venv/bin/python benchmarks/baselines.py --steps 200 --images 16 --model convnet-bn \
        --attacks gifd latent-only pixel idlg gi --overwrite

The CPU is shared with other jobs: the load average (1/5/15 min) at the start and end of each row is recorded, and
the wall-clock rows are indicative only.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
from pathlib import Path

import torch

from art_gifd.attacks.registry import ATTACKS, BASELINES, Budget
from art_gifd.cli import THREADS, Distinct, count, run_script
from art_gifd.experiment import SCHEMA, Case, Experiment
from art_gifd.experiment import run_experiment as run_grid
from art_gifd.models import MODELS
from art_gifd.priors.embedded import DEFAULT_PRIOR, load_default_prior
from art_gifd.store import ResultsFile, environment, write_json_atomic

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_commit, refuse_to_replace

ALL_ATTACKS = (*ATTACKS, *BASELINES)


#: Held-out digits of the embedded MNIST data.
HELDOUT = 1000


def job_id(model: str, mode: str, batch_size: int, attack: str, settings: dict) -> str:
    """The results-file key of one row: its cell and the invocation's settings (steps, restarts, images, …)."""
    tag = "-".join(f"{k}{v}" for k, v in settings.items())
    return f"{model}-{mode}-b{batch_size}-{attack}-{tag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=count(1), default=200, help="steps per restart in the equal-steps mode")
    parser.add_argument("--restarts", type=count(1), default=2)
    parser.add_argument("--images", type=count(1), default=16)
    parser.add_argument("--offset", type=count(0), default=100, help="first held-out image (demo and tests use others)")
    parser.add_argument("--model", default="lenet", choices=MODELS, help="FL model (GI needs convnet-bn)")
    parser.add_argument("--attacks", nargs="+", action=Distinct, default=list(ALL_ATTACKS), choices=ALL_ATTACKS)
    parser.add_argument("--batch-sizes", nargs="+", type=count(1), action=Distinct, default=[1, 4])
    parser.add_argument("--threads", type=THREADS, default=1, help="torch CPU threads (1 avoids thrashing beside jobs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jsonl", type=Path, default=Path("bench-out/baselines.jsonl"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "baselines.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    if "gifd" not in args.attacks:
        parser.error("--attacks must include gifd: it is the reference of the equal wall-clock mode")
    if args.steps < 4 or args.steps % 4:  # GIFD would run fewer steps than the row records
        parser.error(f"--steps must be a multiple of 4 (GIFD splits them over 4 stages), got {args.steps}.")
    for size in args.batch_sizes:
        if args.images % size:
            parser.error(f"--images ({args.images}) must be a multiple of every batch size (--batch-sizes {size}).")
    if args.offset + args.images > HELDOUT:
        parser.error(f"--offset {args.offset} + --images {args.images} is beyond the {HELDOUT} held-out digits.")
    refuse_to_replace(parser, [args.out], args.overwrite, appended=[args.jsonl])
    # rows of other settings in --jsonl are neither reused nor reported under this invocation's budget
    settings = {k: getattr(args, k) for k in ("steps", "restarts", "images", "offset", "device")}
    command = "python benchmarks/baselines.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("jsonl", "out", "overwrite")  # where the rows go, not what they are
    )
    commit = git_commit()  # with -dirty when tracked files differed from it
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    prior = load_default_prior(device=args.device)
    store = ResultsFile(args.jsonl)
    with store.lock("benchmarks/baselines.py", "another --jsonl file"):  # one writer per results file
        done = {
            (r["model"], r["mode"], r["batch_size"], r["attack"]): r
            for r in store.latest(repair=True).values()
            if r.get("settings") == settings
        }

        def run(mode: str, batch_size: int, attack: str, steps: int, basis: str | None = None) -> None:
            key = (args.model, mode, batch_size, attack)
            if key in done:
                return
            budget = Budget(steps_per_stage=steps // 4, stages=4, num_restarts=args.restarts)
            if attack != "gifd":
                budget = Budget(steps_per_stage=steps, stages=1, num_restarts=args.restarts)
            case = Case(args.model, "mnist32", batch_size, args.images, offset=args.offset)
            experiment = Experiment([case], (attack,), budget, seed=0, device=args.device, verbose=False)
            load_start, start, cpu_start = os.getloadavg(), time.perf_counter(), time.process_time()
            try:
                row = run_grid(experiment, prior, DEFAULT_PRIOR)[0]
            except ValueError as err:  # e.g. GradInversion on a model without BatchNorm
                row = {"attack": attack, "model": args.model, "batch_size": batch_size, "error": str(err)}
                row["traceback"] = traceback.format_exc(-2)
            row.update(mode=mode, wall_seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start)
            row.update(command=command, git_commit=commit or None, time_basis=basis)
            row.update(date=time.strftime("%Y-%m-%d"), load_average={"start": load_start, "end": os.getloadavg()})
            row["settings"] = settings
            store.append({"job_id": job_id(*key, settings), **row})
            done[key] = row
            summary = f"PSNR {row['psnr']:.2f} ± {row['psnr_std']:.2f}" if "psnr" in row else f"n/a: {row['error']}"
            print(f"{mode:10s} B={batch_size} {attack:12s} steps {steps:5d} {summary} ({row['wall_seconds']:.0f} s)")

        for batch_size in args.batch_sizes:
            for attack in args.attacks:
                run("steps", batch_size, attack, args.steps)
        for batch_size in args.batch_sizes:
            reference = done[(args.model, "steps", batch_size, "gifd")]
            for attack in args.attacks:
                row = done[(args.model, "steps", batch_size, attack)]
                if "seconds" not in row or attack == "gifd":  # failed, or the reference itself: nothing to rescale
                    continue
                basis = "cpu_seconds" if "cpu_seconds" in row and "cpu_seconds" in reference else "seconds"
                steps = max(4, round(args.steps * reference[basis] / row[basis]))
                run("wallclock", batch_size, attack, steps, basis)

        for (model, mode, batch_size, attack), row in list(done.items()):  # every model's, not only this invocation's
            if mode == "steps" and ("seconds" not in row or attack == "gifd"):
                done.setdefault((model, "wallclock", batch_size, attack), {**row, "mode": "wallclock"})
        rows = [done[key] for key in sorted(done)]
        document = {
            "schema": SCHEMA,
            "title": "baselines at equal steps and equal wall-clock",
            "commands": list(dict.fromkeys(row["command"] for row in rows)),
            "git_commit": commit or None,
            "date": time.strftime("%Y-%m-%d"),
            "environment": environment(0, args.device),
            "budget": {"equal_steps": args.steps, "num_restarts": args.restarts},
            "timing_note": "2 CPU cores shared with other jobs (load averages recorded per row): the wall-clock rows "
            "rescale steps by the process CPU seconds of the equal-steps rows (wall-clock seconds for rows without "
            "cpu_seconds), so they are indicative only; each row records its own command, commit and date",
            "runs": [{k: v for k, v in row.items() if k not in ("traceback", "job_id", "settings")} for row in rows],
        }
        write_json_atomic(args.out, document)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_script(main)
