"""
Attacks against defences of growing strength, with the utility each defence costs.

Embedded case: DLG's sigmoid LeNet, held-out 32×32 MNIST digits from index ``--offset`` (500: not the demo's digits),
batch size 1, labels inferred from the gradient, the embedded MNIST DCGAN prior, and the quick demo's equal-step
budget for GIFD, latent-only and pixel-space attacks. Defences: none; Gaussian noise sigma 1e-4 … 1e-1; pruning 0.5 …
0.99 (non-adaptive and adaptive attacker); Opacus DP-SGD at epsilon 1, 10, 100 for the stated accounting (the noise
multiplier from Opacus' ``get_noise_multiplier``). Beside each: the cosine between the defended and clean gradient of
the attacked image, and ``measure_utility`` (cosine at batch 32, accuracy after a short seeded FedSGD run).

Resumable: every finished job appends one JSON line to ``--jobs`` (flushed and fsynced; a torn last line is ignored
on reload) and a rerun skips finished jobs. The summary goes to ``--out`` (JSON) and ``--md`` (Markdown)::

    .venv/bin/python benchmarks/defenses.py --images 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_gifd import client_gradients, load_default_prior
from art_gifd.attacks.registry import ATTACKS, Budget, build_attack
from art_gifd.data import load_mnist32
from art_gifd.defenses import DPSGD, Defense, GaussianNoise, Prune, describe_defense, measure_utility
from art_gifd.experiment import environment, write_json_atomic
from art_gifd.metrics import evaluate_batch
from art_gifd.models import lenet, make_classifier

SCHEMA = "art-gifd/defenses/v1"
BUDGET = Budget(steps_per_stage=50, stages=4, num_restarts=2)
#: DP accounting: the utility run's own training (batch 32 of the 4,000 training digits, 300 steps), delta < 1/4000.
DP_ACCOUNTING = {"max_grad_norm": 10.0, "sample_rate": 32 / 4000, "steps": 300, "delta": 1e-5}
#: Rises smaller than these are not counted against a monotone trend (noise between seeds and images).
PSNR_TOLERANCE, ACCURACY_TOLERANCE = 0.5, 0.005
UTILITY = {"rounds": 300, "batch_size": 32, "learning_rate": 0.05, "probe_batches": 8}


#: One defence setting: (key, family, strength, defence, whether the attacker knows it and replays it).
Setting = tuple[str, str, float | None, Defense | None, bool]


def defence_grid() -> list[Setting]:
    """Every defence setting of the sweep, weakest first within each family."""
    grid: list[Setting] = [("none", "none", None, None, False)]
    for sigma in (1e-4, 1e-3, 1e-2, 1e-1):
        grid.append((f"gaussian-{sigma:g}", "gaussian noise (sigma)", sigma, GaussianNoise(sigma), False))
    for adaptive in (False, True):
        family = "pruning, adaptive attacker (ratio)" if adaptive else "pruning (ratio)"
        for ratio in (0.5, 0.9, 0.99):
            grid.append((f"prune-{ratio:g}" + ("-adaptive" if adaptive else ""), family, ratio, Prune(ratio), adaptive))
    for epsilon in (1.0, 10.0, 100.0):
        grid.append(
            (f"dp-eps-{epsilon:g}", "DP-SGD (epsilon)", epsilon, DPSGD.for_epsilon(epsilon, **DP_ACCOUNTING), False)
        )
    return grid


def load_jobs(path: Path) -> dict[str, dict[str, Any]]:
    """Finished jobs by key; a torn (unparsable) line from an interrupted write is ignored."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["key"]] = record
    return done


def append_job(path: Path, record: dict[str, Any]) -> None:
    """Append one finished job as a JSON line, flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Cosine between two gradients, all parameters together."""
    fa, fb = np.concatenate([g.ravel() for g in a]), np.concatenate([g.ravel() for g in b])
    return float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="held-out digits attacked (batch size 1)")
    parser.add_argument("--offset", type=int, default=500, help="index of the first held-out digit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=Path, default=Path("benchmarks/results/defenses.jobs.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/defenses.json"))
    parser.add_argument("--md", type=Path, default=Path("benchmarks/results/defenses.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    x_all, y_all = load_mnist32("heldout")
    x_all, y_all = x_all[args.offset : args.offset + args.images], y_all[args.offset : args.offset + args.images]
    estimator = make_classifier(lenet(seed=args.seed), (1, 32, 32), device=args.device)
    prior = load_default_prior(device=args.device)
    grid = defence_grid()
    done = load_jobs(args.jobs)
    keys = []
    for key, *_, adaptive in grid:  # setting by setting, so that rows complete one after the other
        keys += [] if adaptive else [f"utility|{key}"]  # the attacker does not change the utility
        keys += [f"attack|{key}|{i}|{a}" for i in range(args.images) for a in ATTACKS]
    todo = [k for k in keys if k not in done]
    print(f"{len(keys) - len(todo)} of {len(keys)} jobs already done; {len(todo)} to run", file=sys.stderr)
    settings = {key: (defense, adaptive) for key, _, _, defense, adaptive in grid}
    for job in tqdm(todo, desc="defence sweep", unit="job"):
        kind, key, *rest = job.split("|")
        defense, adaptive = settings[key]
        start = time.perf_counter()
        if kind == "utility":
            record = measure_utility(defense, estimator, seed=args.seed, **UTILITY).as_dict()
        else:
            index, attack_name = int(rest[0]), rest[1]
            x, y = x_all[index : index + 1], y_all[index : index + 1]
            seed = args.seed + args.offset + index
            clean = client_gradients(estimator, x, y)
            grads = client_gradients(estimator, x, y, defense=defense, seed=seed)
            attack = build_attack(
                attack_name,
                estimator,
                prior,
                BUDGET,
                1,
                seed,
                defense=defense if adaptive else None,
                device=args.device,
                verbose=False,
            )
            result = attack.reconstruct(grads)
            scores = evaluate_batch(result.images, x, result.labels, y)
            record = {
                "image": args.offset + index,
                "attack": attack_name,
                "psnr": scores["psnr"],
                "ssim": scores["ssim"],
                "label_accuracy": scores["label_accuracy"],
                "observed_cosine": cosine(grads, clean),
                "adaptive": bool(result.extra["adaptive"]),
                "chosen_stage": result.stage_names[result.best_stage],
                "final_loss": result.best_loss,
            }
        record.update(key=job, defense_key=key, seconds=time.perf_counter() - start)
        append_job(args.jobs, record)
        tqdm.write(f"{job}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
    write_summary(args, grid, load_jobs(args.jobs))


def write_summary(args: argparse.Namespace, grid: list[Setting], done: dict[str, dict[str, Any]]) -> None:
    """Aggregate finished jobs into the JSON summary and the Markdown table."""
    rows = []
    for key, family, strength, defense, adaptive in grid:
        utility = done.get(f"utility|{key.removesuffix('-adaptive')}")
        row: dict[str, Any] = {
            "key": key,
            "family": family,
            "strength": strength,
            "defense": describe_defense(defense, adaptive=adaptive),
            "utility": utility,
            "attacks": {},
        }
        for attack in ATTACKS:
            jobs = [done.get(f"attack|{key}|{i}|{attack}") for i in range(args.images)]
            if all(jobs):
                psnr = [j["psnr"] for j in jobs]
                row["attacks"][attack] = {
                    "psnr": float(np.mean(psnr)),
                    "psnr_std": float(np.std(psnr)),
                    "ssim": float(np.mean([j["ssim"] for j in jobs])),
                    "label_accuracy": float(np.mean([j["label_accuracy"] for j in jobs])),
                    "per_image_psnr": psnr,
                    "chosen_stages": [j["chosen_stage"] for j in jobs],
                    "seconds": float(sum(j["seconds"] for j in jobs)),
                }
                row["observed_cosine"] = float(np.mean([j["observed_cosine"] for j in jobs]))
        rows.append(row)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = (
        f".venv/bin/python benchmarks/defenses.py --images {args.images} --offset {args.offset} --seed {args.seed}"
    )
    document = {
        "schema": SCHEMA,
        "command": command,
        "git_commit": commit or None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": environment(args.seed, args.device),
        "case": {
            "model": f"lenet (sigmoid, DLG init, seed {args.seed})",
            "data": f"mnist32 heldout [{args.offset}, {args.offset + args.images})",
            "batch_size": 1,
            "labels": "inferred from the gradient",
            "prior": "embedded mnist32 DCGAN",
            "budget": vars(BUDGET) | {"total_steps": BUDGET.total_steps},
        },
        "dp_accounting": DP_ACCOUNTING | {"accountant": "rdp"},
        "utility_settings": UTILITY | {"train": "mnist32 train (4,000)", "test": "mnist32 heldout (1,000)"},
        "rows": rows,
    }
    write_json_atomic(args.out, document)
    args.md.write_text(markdown(document))
    print(markdown(document))


def markdown(document: dict[str, Any]) -> str:
    """The Markdown table of the summary."""
    env = document["environment"]
    lines = [
        "# Attacks against defences (embedded case)",
        "",
        f"Command: `{document['command']}`  ",
        f"Git commit: `{document['git_commit']}` (plus uncommitted work in progress)  ",
        f"Device: {env['device']} ({env['cpu_threads']} threads, {env['platform']}), torch {env['torch']}  ",
        f"Date: {document['date']}",
        "",
        f"Case: {document['case']['model']}, {document['case']['data']}, batch 1, labels inferred, "
        f"budget {document['case']['budget']['total_steps']} steps × {document['case']['budget']['num_restarts']} "
        "restarts per attack. PSNR in dB, mean ± std over the images. `grad cos` = cosine between the defended and "
        "clean gradient of the attacked image (batch 1); utility = cosine at batch 32 and test accuracy after "
        f"{document['utility_settings']['rounds']} FedSGD rounds (batch {document['utility_settings']['batch_size']}, "
        f"lr {document['utility_settings']['learning_rate']}). DP accounting: "
        + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in document["dp_accounting"].items())
        + ".",
        "",
        "| defence | strength | ε (δ) | GIFD | latent-only | pixel | labels | grad cos (B=1) | utility cos (B=32) "
        "| accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        attacks = row["attacks"]
        cells = [f"{attacks[a]['psnr']:.2f} ± {attacks[a]['psnr_std']:.2f}" if a in attacks else "–" for a in ATTACKS]
        labels = np.mean([attacks[a]["label_accuracy"] for a in attacks]) if attacks else float("nan")
        defense = row["defense"]
        privacy = (
            f"{defense['epsilon']:.2f} ({defense['delta']:g})"
            if isinstance(defense, dict) and defense["epsilon"] is not None
            else "–"
        )
        if isinstance(defense, dict) and defense["name"] == "dp-sgd":
            privacy += f", σ = {defense['params']['noise_multiplier']:.3f}"
        utility = row["utility"]
        lines.append(
            f"| {row['family']} | {row['strength'] if row['strength'] is not None else '–'} | {privacy} | "
            + " | ".join(cells)
            + f" | {labels:.2f} | {row.get('observed_cosine', float('nan')):.4f} | "
            + (f"{utility['gradient_cosine']:.4f} | {utility['accuracy']:.3f} |" if utility else "– | – |")
        )
    lines += [
        "",
        "Trends as the defence's strength grows (from no defence): mean PSNR and accuracy; monotone = never rises by "
        f"more than {PSNR_TOLERANCE} dB (accuracy: {ACCURACY_TOLERANCE}) from one strength to the next, below the "
        "image-to-image spread.",
        "",
    ]
    lines += [f"- {trend}" for trend in trends(document["rows"])]
    return "\n".join(lines) + "\n"


def trends(rows: list[dict[str, Any]]) -> list[str]:
    """For every defence family, whether each attack's mean PSNR and the accuracy fall monotonically with strength."""
    baseline = rows[0]
    out = []
    for family in dict.fromkeys(r["family"] for r in rows[1:]):
        chain = [baseline] + [r for r in rows if r["family"] == family]
        stronger = "decreasing" if "epsilon" in family else "increasing"  # a smaller epsilon is a stronger defence
        if "epsilon" in family:
            chain = [baseline, *reversed(chain[1:])]
        series = {a: [r["attacks"].get(a, {}).get("psnr") for r in chain] for a in ATTACKS}
        series["accuracy"] = [(r["utility"] or {}).get("accuracy") for r in chain]
        parts = []
        for name, values in series.items():
            if None in values:
                continue
            tolerance = ACCURACY_TOLERANCE if name == "accuracy" else PSNR_TOLERANCE
            monotone = all(b <= a + tolerance for a, b in itertools.pairwise(values))
            parts.append(
                f"{name} {' → '.join(f'{v:.3g}' for v in values)} ({'monotone' if monotone else 'not monotone'})"
            )
        out.append(f"{family}, {stronger}: " + "; ".join(parts))
    return out


if __name__ == "__main__":
    main()
