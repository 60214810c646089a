"""
Many clients in one search: throughput of ``reconstruct_many`` against attacking the same client updates one at a
time, and whether the reconstructions are the same.

The FL model is the ReLU ConvNet of ``benchmarks/fedavg.py`` mid-training (its ``trained_model``: 30 FedAvg rounds on
the public digits; the *two rounds* case puts half of the clients at the 15-round model). Each client holds 4 held-out
digits (images 940–971, used by no other benchmark, test or default) and runs FedAvg's local training: 2 epochs of 2
mini-batches of 2 in a known order, lr 0.05, as the Flower example's clients. GIFD (4 stages × 25 steps, 2 restarts,
labels given) attacks ``T`` clients' updates one at a time (``reconstruct``) and all together
(``reconstruct_many``), side by side in one process on one thread, with the same seeds::

    python benchmarks/many_clients.py --overwrite   # -> benchmarks/results/many_clients.json and many_clients.md

An existing ``many_clients.json`` or ``many_clients.md`` in ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_gifd import GIFDAttack, LocalTraining, client_update
from art_gifd.cli import THREADS, Distinct, count, output_folder, run_script
from art_gifd.data import load_mnist32
from art_gifd.metrics import evaluate_batch
from art_gifd.priors import load_default_prior
from art_gifd.store import environment, write_bytes_atomic, write_json_atomic
from benchmarks.common import git_commit, mean_sem, refuse_to_replace
from benchmarks.fedavg import trained_model

RESULTS = Path(__file__).resolve().parent / "results"
#: Held-out digits the clients hold.
PRIVATE = (940, 972)
PER_CLIENT = 4


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    prior = load_default_prior()
    late, accuracy = trained_model(30)
    early, _ = trained_model(15)
    x, y = load_mnist32("heldout")
    x, y = x[PRIVATE[0] : PRIVATE[1]], y[PRIVATE[0] : PRIVATE[1]]
    rows = []
    for case in args.cases:
        for clients in args.clients:
            if case == "two rounds" and clients < 2:
                continue
            models = [late if case == "one round" or t % 2 else early for t in range(clients)]
            truths = [
                (x[PER_CLIENT * t : PER_CLIENT * (t + 1)], y[PER_CLIENT * t : PER_CLIENT * (t + 1)])
                for t in range(clients)
            ]
            # one search replays one local training: every client here shuffles with the same known seed
            training = LocalTraining(0.05, epochs=2, batch_size=2, shuffle_seed=100)
            updates = [
                client_update(m, xi, yi, training, seed=t)
                for t, (m, (xi, yi)) in enumerate(zip(models, truths, strict=True))
            ]
            settings = dict(
                steps_per_stage=args.steps_per_stage,
                num_restarts=args.restarts,
                batch_size=PER_CLIENT,
                training=training,
                verbose=False,
            )
            start = time.perf_counter()
            alone = [
                GIFDAttack(m, prior, seed=t, **settings).reconstruct(u, yi)
                for t, (m, u, (_, yi)) in enumerate(zip(models, updates, truths, strict=True))
            ]
            alone_s = time.perf_counter() - start
            start = time.perf_counter()
            together = GIFDAttack(models[0], prior, **settings).reconstruct_many(
                updates, [yi for _, yi in truths], estimators=models, seeds=list(range(clients))
            )
            together_s = time.perf_counter() - start
            psnr_alone = [
                evaluate_batch(r.images, xi, r.labels, yi)["psnr"] for r, (xi, yi) in zip(alone, truths, strict=True)
            ]
            psnr_together = [
                evaluate_batch(r.images, xi, r.labels, yi)["psnr"] for r, (xi, yi) in zip(together, truths, strict=True)
            ]
            identical = all(np.array_equal(a.images, b.images) for a, b in zip(alone, together, strict=True))
            row = {
                "case": case,
                "clients": clients,
                "alone_s": alone_s,
                "together_s": together_s,
                "speedup": alone_s / together_s,
                "images_per_s_alone": clients * PER_CLIENT / alone_s,
                "images_per_s_together": clients * PER_CLIENT / together_s,
                "psnr_alone": psnr_alone,
                "psnr_together": psnr_together,
                "identical": identical,
                "model_accuracy": accuracy,
            }
            rows.append(row)
            print(
                f"{case}, {clients} clients: alone {alone_s:.1f} s, together {together_s:.1f} s "
                f"(×{row['speedup']:.2f}), PSNR {np.mean(psnr_alone):.2f} / {np.mean(psnr_together):.2f}, "
                f"identical {identical}",
                flush=True,
            )
    return rows


def write(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> None:
    header = {
        "command": " ".join(["python benchmarks/many_clients.py", shlex.join(argv)]).strip(),
        "commit": git_commit(),
        "environment": environment(0, "cpu"),
        "threads": args.threads,
        "steps_per_stage": args.steps_per_stage,
        "restarts": args.restarts,
        "images_per_client": PER_CLIENT,
    }
    write_json_atomic(args.out / "many_clients.json", {"header": header, "rows": rows})
    lines = [
        "# Many clients in one search (`reconstruct_many`) against one at a time",
        "",
        f"Command: `{header['command']}` at commit `{header['commit']}`, CPU, {args.threads} torch thread(s), "
        f"torch {header['environment'].get('torch')}. GIFD 4 stages × {args.steps_per_stage} steps, "
        f"{args.restarts} restarts, labels given; ConvNet after 30 FedAvg rounds (accuracy "
        f"{rows[0]['model_accuracy']:.3f}); each client 4 held-out digits (940–971), FedAvg 2 epochs × 2 mini-batches "
        "of 2, lr 0.05; *two rounds*: every other client at the 15-round model. Same seeds both ways, run side by side "
        "in one process.",
        "",
        "| case | clients | one at a time (s) | together (s) | speed-up | images/s alone | images/s together "
        "| PSNR alone | PSNR together | paired Δ (dB) | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, sa = mean_sem(r["psnr_alone"])
        b, sb = mean_sem(r["psnr_together"])
        d, sd = mean_sem(list(np.subtract(r["psnr_together"], r["psnr_alone"])))
        fmt = lambda m, s: f"{m:.2f}" + ("" if np.isnan(s) else f" ± {s:.2f}")  # noqa: E731
        lines.append(
            f"| {r['case']} | {r['clients']} | {r['alone_s']:.1f} | {r['together_s']:.1f} | {r['speedup']:.2f} "
            f"| {r['images_per_s_alone']:.3f} | {r['images_per_s_together']:.3f} | {fmt(a, sa)} | {fmt(b, sb)} "
            f"| {fmt(d, sd)} | {'yes' if r['identical'] else 'no'} |"
        )
    lines += [
        "",
        "*identical*: every reconstruction bit-for-bit the one attacked alone. Clients of one round share the "
        "weights, so their candidates are rows of one batch (a FedAvg replay's later steps run at per-candidate "
        "weights: bit for bit here, for this ConvNet, not guaranteed for every model); clients of different rounds "
        "take batched weights, whose kernels round differently, and Adam amplifies that over the search: the "
        "reconstructions then differ, their quality does not (paired Δ).",
    ]
    write_bytes_atomic(args.out / "many_clients.md", ("\n".join(lines) + "\n").encode())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    most = (PRIVATE[1] - PRIVATE[0]) // PER_CLIENT
    parser.add_argument(
        "--clients",
        type=count(1, most),
        nargs="+",
        action=Distinct,
        default=[1, 2, 4, 8],
        help=f"client counts (1 to {most})",
    )
    parser.add_argument(
        "--cases", nargs="+", action=Distinct, default=["one round", "two rounds"], choices=["one round", "two rounds"]
    )
    parser.add_argument("--steps-per-stage", type=count(1), default=25)
    parser.add_argument("--restarts", type=count(1), default=2)
    parser.add_argument("--threads", type=THREADS, default=1)
    parser.add_argument("--out", type=output_folder, default=RESULTS, help="folder of the JSON and Markdown results")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    args = parser.parse_args(argv)
    if "one round" not in args.cases and max(args.clients) < 2:  # every row would be skipped: nothing to report
        parser.error("'two rounds' needs at least 2 clients (one per round): give --clients 2 or more.")
    refuse_to_replace(parser, [args.out / "many_clients.json", args.out / "many_clients.md"], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    write(measure(args), args, argv)


if __name__ == "__main__":
    run_script(main)
