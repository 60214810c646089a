"""
Batched restarts vs a plain Python loop over restarts, at the same steps, side by side in one process.

The batched run is one ``GIFDAttack`` with ``num_restarts=R`` (all restarts in one vmapped computation); the reference
runs R single-restart attacks one after the other (different seeds) and keeps the best by matching loss. Both run
the same stages and steps on the same gradient. Writes ``benchmarks/results/restart_speed.json``::

    .venv/bin/python benchmarks/restart_speed.py --restarts 4 --steps 50 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from art_gifd import GIFDAttack, client_gradients, load_default_prior
from art_gifd.data import load_mnist32
from art_gifd.experiment import environment, write_json_atomic
from art_gifd.models import build_model, make_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet", choices=["lenet", "convnet"])
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="steps per stage")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/restart_speed.json"))
    args = parser.parse_args()

    x, y = load_mnist32("heldout")
    x, y = x[: args.batch_size], y[: args.batch_size]
    clf = make_classifier(build_model(args.model), (1, 32, 32), device=args.device)
    grads = client_gradients(clf, x, y)
    prior = load_default_prior(device=args.device)
    common = {"steps_per_stage": args.steps, "batch_size": args.batch_size, "device": args.device, "verbose": False}

    def batched() -> float:
        return GIFDAttack(clf, prior, num_restarts=args.restarts, seed=0, **common).reconstruct(grads, y).best_loss

    def loop() -> float:
        losses = [
            GIFDAttack(clf, prior, num_restarts=1, seed=r, **common).reconstruct(grads, y).best_loss
            for r in range(args.restarts)
        ]
        return min(losses)

    timings: dict[str, list[float]] = {"batched": [], "loop": []}
    losses: dict[str, list[float]] = {"batched": [], "loop": []}
    batched()  # warm-up (allocator, kernels)
    for _ in range(args.repeats):
        for name, fn in (("loop", loop), ("batched", batched)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            losses[name].append(fn())
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - start)
    ratio = statistics.median(timings["loop"]) / statistics.median(timings["batched"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "benchmark": "restart_speed",
        "command": "python benchmarks/restart_speed.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "git_commit": commit or None,
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment(0, args.device),
        "stages": 4,
        "seconds": timings,
        "best_matching_loss": losses,
        "speedup_median": ratio,
    }
    write_json_atomic(args.out, record)
    print(
        f"{args.model} R={args.restarts} B={args.batch_size} steps/stage={args.steps}: loop "
        f"{statistics.median(timings['loop']):.2f} s, batched {statistics.median(timings['batched']):.2f} s, "
        f"speed-up {ratio:.2f}x; best loss loop {np.median(losses['loop']):.2e} "
        f"batched {np.median(losses['batched']):.2e}"
    )


if __name__ == "__main__":
    main()
