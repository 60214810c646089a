"""
Peer check: our Inverting Gradients against breaching's, same model, same gradients, equal budget.

For each held-out MNIST digit (batch size 1) the client gradient of the seeded sigmoid LeNet is computed once with
``art_gifd.client_gradients``; then ``art_gifd.attacks.InvertingGradientsAttack`` and breaching's
``invertinggradients`` attack (PyPI ``breaching==0.1.2``, JonasGeiping) both reconstruct it with the true label, the
same number of Adam steps S and restarts R, pixels in [0, 1] (breaching's metadata mean/std set to 0/1), on CPU with
one torch thread. breaching runs twice: with its own config (TV scale 0.2, step-lr decay, randn init), and with only
its TV scale changed to ours (1e-4); ours runs with its default (paper) randn start and with a uniform start. Each
image is attacked once per ``--seeds`` value. Reports PSNR (``art_gifd.metrics.psnr``), seconds and the cosine
gradient distance of each reconstruction (float64, recomputed from the clipped image), mean ± std over all trials,
the spread of the per-seed means and the paired difference ours − breaching, and writes
``benchmarks/results/peer_breaching.json`` (``--out``; an existing file is replaced only with ``--overwrite``).

breaching is kept out of the project venv; install it into a side folder and put that on ``PYTHONPATH``::

    .venv/bin/pip install --no-deps --target /tmp/breaching-pkgs breaching==0.1.2 hydra-core==1.3.8 \\
        omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML==6.0.4
    PYTHONPATH=/tmp/breaching-pkgs .venv/bin/python benchmarks/peer_breaching.py --steps 200 800 --restarts 2 \\
        --num-images 8 --seeds 0 1 --overwrite

(scipy, lpips, torchvision, which breaching also imports, are already in the project venv.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from art_gifd import InvertingGradientsAttack, client_gradients
from art_gifd.cli import Distinct, count, real, run_script
from art_gifd.data import load_mnist32
from art_gifd.metrics import psnr
from art_gifd.models import lenet, make_classifier
from art_gifd.store import environment, write_json_atomic
from art_gifd.validation import MAX_SEED

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_commit, refuse_to_replace

INSTALL = {
    "target": "/tmp/breaching-pkgs (outside the project venv, on PYTHONPATH)",
    "command": (
        ".venv/bin/pip install --no-deps --target /tmp/breaching-pkgs breaching==0.1.2 hydra-core==1.3.8 "
        "omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 PyYAML==6.0.4"
    ),
    "packages": {
        "breaching": "0.1.2",
        "hydra-core": "1.3.8",
        "omegaconf": "2.3.0",
        "antlr4-python3-runtime": "4.9.3",
        "PyYAML": "6.0.4",
    },
    "from_project_venv": ["torch 2.14.1", "torchvision 0.29.1", "scipy", "lpips 0.1.4"],
    "notes": [
        "Unpinned `--no-deps ... hydra-core omegaconf antlr4-python3-runtime` picks omegaconf 2.4.0 and antlr4 4.13.2; "
        "`import breaching` then fails with 'Could not deserialize ATN with version 3 (expected 4)': hydra-core 1.3.x "
        "needs antlr4-python3-runtime==4.9.* and omegaconf<2.4 (its own Requires-Dist).",
        "PyYAML is needed too (breaching/utils.py imports yaml); it is not in the project venv.",
        "No source patch. One runtime workaround: breaching's TotalVariation hard-codes 3 colour groups "
        "(conv2d groups=3, weight 6x1x3x3) and raises on 1-channel images; the script sets groups=1 and keeps the "
        "first two (dx, dy) filters on the constructed regulariser instance.",
    ],
}
#: Compared reconstructions: ours with the default (paper) start and with a uniform start, breaching with its own
#: config and with only its TV weight set to ours.
METHODS = ("ours", "ours_uniform_init", "breaching_default", "breaching_tv_matched")


def cosine_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """``1 − cos`` between two gradients, all parameters concatenated."""
    va = np.concatenate([g.ravel() for g in a]).astype(np.float64)
    vb = np.concatenate([g.ravel() for g in b]).astype(np.float64)
    return float(1.0 - va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def breaching_attacker(model: torch.nn.Module, steps: int, restarts: int, tv_scale: float | None) -> Any:
    """breaching's ``invertinggradients`` attacker with our budget (and optionally our TV weight)."""
    import breaching
    from breaching.attacks.auxiliaries.regularizers import TotalVariation

    overrides = [f"optim.max_iterations={steps}", f"restarts.num_trials={restarts}", f"optim.callback={10 * steps}"]
    if tv_scale is not None:
        overrides.append(f"regularization.total_variation.scale={tv_scale}")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_attack_config prints one line; Hydra warns about version_base
        cfg = breaching.get_attack_config("invertinggradients", overrides=overrides)
    setup = {"dtype": torch.float, "device": torch.device("cpu")}
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg, setup)
    for reg in attacker.regularizers:
        if isinstance(reg, TotalVariation) and reg.groups == 3:
            # Grey images: one channel group, keep the (dx, dy) filter pair (breaching hard-codes 3 colour groups).
            reg.groups = 1
            reg.weight = reg.weight[:2]
    return attacker, cfg


def run_breaching(
    model: torch.nn.Module,
    grads: list[np.ndarray],
    label: int,
    steps: int,
    restarts: int,
    tv_scale: float | None,
    seed: int,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Reconstruct one image with breaching; returns image (1, 1, 32, 32), seconds and its config summary."""
    from omegaconf import OmegaConf

    attacker, cfg = breaching_attacker(model, steps, restarts, tv_scale)
    metadata = OmegaConf.create({"shape": [1, 32, 32], "mean": [0.0], "std": [1.0], "modality": "vision"})
    # buffers=[] (not None) makes breaching put its model copy in eval mode, as the client was.
    payload = [{"parameters": [p.detach().clone() for p in model.parameters()], "buffers": [], "metadata": metadata}]
    shared = [
        {
            "gradients": [torch.as_tensor(g) for g in grads],
            "buffers": None,
            "metadata": {"num_data_points": 1, "labels": torch.tensor([label]), "local_hyperparams": None},
        }
    ]
    torch.manual_seed(seed)  # breaching draws its randn init from the global generator
    start = time.perf_counter()
    rec, _stats = attacker.reconstruct(payload, shared, server_secrets={}, dryrun=False)
    seconds = time.perf_counter() - start
    summary = {
        "objective": cfg.objective.type,
        "tv_scale": float(cfg.regularization.total_variation.scale),
        "optimizer": cfg.optim.optimizer,
        "signed": cfg.optim.signed,
        "step_size": float(cfg.optim.step_size),
        "step_size_decay": cfg.optim.step_size_decay,
        "warmup": int(cfg.optim.warmup),
        "boxed": bool(cfg.optim.boxed),
        "init": cfg.init,
        "restart_scoring": cfg.restarts.scoring,
    }
    return rec["data"].detach().cpu().numpy().astype(np.float32), seconds, summary


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_ours(
    clf: Any, grads: list[np.ndarray], y: np.ndarray, steps: int, args: argparse.Namespace, init: str, seed: int
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Reconstruct one image with our Inverting Gradients; returns image, seconds and the search's own details."""
    attack = InvertingGradientsAttack(
        clf,
        max_iter=steps,
        num_restarts=args.restarts,
        learning_rate=args.learning_rate,
        tv_weight=args.tv_weight,
        init=init,
        seed=seed,
        verbose=False,
    )
    start = time.perf_counter()
    result = attack.reconstruct(grads, y)
    seconds = time.perf_counter() - start
    details = {"matching_loss_float32": result.best_loss, "restart": result.best_restart}
    return result.images, seconds, details


def summarise(per_image: list[dict[str, Any]], methods: list[str], seeds: list[int]) -> dict[str, Any]:
    """Mean ± std over all (image, seed) trials, the spread of the per-seed means, and paired differences."""
    summary: dict[str, Any] = {}
    for m in methods:
        summary[m] = {
            key: mean_std([r[m][key] for r in per_image]) for key in ("psnr", "seconds", "grad_cosine_distance")
        }
        seed_means = [statistics.fmean(r[m]["psnr"] for r in per_image if r["seed"] == s) for s in seeds]
        summary[m]["psnr_per_seed_mean"] = seed_means
        summary[m]["psnr_std_over_seed_means"] = mean_std(seed_means)["std"]
    for m in methods:
        if m.startswith("ours") and "breaching_tv_matched" in methods:
            diffs = [r[m]["psnr"] - r["breaching_tv_matched"]["psnr"] for r in per_image]
            stats = mean_std(diffs)
            summary[f"{m}_minus_breaching_tv_matched"] = {
                "psnr_difference": stats,
                "sem": stats["std"] / len(diffs) ** 0.5,
                "trials": len(diffs),
                "ours_higher": sum(d > 0 for d in diffs),
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=count(1), nargs="+", action=Distinct, default=[200], help="Adam steps S (one run per value)"
    )
    parser.add_argument("--restarts", type=count(1), default=2)
    parser.add_argument("--num-images", type=count(1), default=8)
    parser.add_argument("--start", type=count(0), default=600, help="first held-out index")
    parser.add_argument(
        "--seeds",
        type=count(0, (MAX_SEED - 999) // 1000),  # the trial seeds they derive stay seeds
        nargs="+",
        action=Distinct,
        default=[0],
        help="trial seed of image i: 1000 * seed + i",
    )
    parser.add_argument("--methods", nargs="+", action=Distinct, default=list(METHODS), choices=METHODS)
    parser.add_argument("--tv-weight", type=real(0), default=1e-4, help="our TV weight (and breaching's matched run)")
    parser.add_argument("--learning-rate", type=real(0, low_open=True), default=0.1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "peer_breaching.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # 2 shared CPU cores: avoid OpenMP thrashing with other jobs

    if any(m.startswith("breaching") for m in args.methods) and importlib.util.find_spec("breaching") is None:
        parser.error(
            "breaching is not importable: install it into a side folder and put that on PYTHONPATH (see --help: "
            "pip install --no-deps --target /tmp/breaching-pkgs breaching==0.1.2 ...), or run --methods ours "
            "ours_uniform_init only."
        )
    if args.start + args.num_images > 1000:
        parser.error(f"--start {args.start} + --num-images {args.num_images} is beyond the 1000 held-out digits.")
    refuse_to_replace(parser, [args.out], args.overwrite)
    load_before = os.getloadavg()

    x_all, y_all = load_mnist32("heldout")
    indices = list(range(args.start, args.start + args.num_images))
    model = lenet(seed=0)
    clf = make_classifier(model, (1, 32, 32))
    runs: list[dict[str, Any]] = []
    breaching_cfgs: dict[str, Any] = {}
    for steps in args.steps:
        per_image: list[dict[str, Any]] = []
        for seed in args.seeds:
            for i, idx in enumerate(indices):
                trial_seed = 1000 * seed + i
                x, y = x_all[idx : idx + 1], y_all[idx : idx + 1]
                grads = client_gradients(clf, x, y)
                row: dict[str, Any] = {"heldout_index": idx, "label": int(y[0]), "seed": seed, "trial_seed": trial_seed}
                for name in args.methods:
                    details: dict[str, Any] = {}
                    if name.startswith("ours"):
                        init = "uniform" if name == "ours_uniform_init" else "randn"
                        rec, seconds, details = run_ours(clf, grads, y, steps, args, init, trial_seed)
                    else:
                        tv = args.tv_weight if name == "breaching_tv_matched" else None
                        rec, seconds, breaching_cfgs[name] = run_breaching(
                            model, grads, int(y[0]), steps, args.restarts, tv, seed=trial_seed
                        )
                    rec_grads = client_gradients(clf, np.clip(rec, 0.0, 1.0), y)
                    row[name] = {
                        "psnr": float(psnr(rec, x)[0]),
                        "seconds": seconds,
                        "grad_cosine_distance": cosine_distance(rec_grads, grads),
                        "pixel_range": [float(rec.min()), float(rec.max())],
                        **details,
                    }
                per_image.append(row)
                print(
                    f"S={steps} seed {seed} img {idx}: "
                    + "  ".join(f"{m} {row[m]['psnr']:.2f} dB {row[m]['seconds']:.1f}s" for m in args.methods),
                    file=sys.stderr,
                    flush=True,
                )
        summary = summarise(per_image, args.methods, args.seeds)
        runs.append({"steps": steps, "restarts": args.restarts, "summary": summary, "per_image": per_image})

    commit = git_commit()  # with -dirty when tracked files differed from it
    record = {
        "benchmark": "peer_breaching",
        "command": (
            f"PYTHONPATH=/tmp/breaching-pkgs .venv/bin/python benchmarks/peer_breaching.py --steps "
            f"{' '.join(map(str, args.steps))} --restarts {args.restarts} --num-images {args.num_images} --start "
            f"{args.start} --seeds {' '.join(map(str, args.seeds))} --methods {' '.join(args.methods)} "
            f"--tv-weight {args.tv_weight} --learning-rate {args.learning_rate}"
            + (" --overwrite" if args.overwrite else "")
        ),
        "git_commit": commit or None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(0, "cpu"),
        "torch_num_threads": 1,
        "load_average_1_5_15min": {"start": list(load_before), "end": list(os.getloadavg())},
        "timing_note": "2 CPU cores shared with other jobs: seconds are indicative; methods run interleaved per image",
        "install": INSTALL,
        "data": {
            "split": "heldout",
            "indices": indices,
            "seeds": args.seeds,
            "batch_size": 1,
            "model": "art_gifd.models.lenet(seed=0) via make_classifier(model, (1, 32, 32)), eval mode",
        },
        "settings": {
            "ours": {
                "objective": "1 - cosine (all parameters concatenated), float32",
                "tv_weight": args.tv_weight,
                "tv": "mean |dx| + mean |dy| over interior neighbour pairs",
                "optimizer": "Adam on the sign of the gradient",
                "learning_rate": args.learning_rate,
                "schedule": "step decay, x0.1 at 3/8, 5/8 and 7/8 of the steps, no warm-up (the default)",
                "init": "ours: randn N(0, 1) in the model's input units clamped to [0, 1] (the default); "
                "ours_uniform_init: uniform [0, 1]",
                "projection": "clamp to [0, 1] after every step",
                "restarts": "batched (vmapped) restarts, best iterate and restart by float32 matching loss",
                "labels": "given",
                "seeds": "seed=1000 * seed + i for image i",
            },
            "breaching": breaching_cfgs,
            "breaching_common": {
                "metadata": "OmegaConf shape [1, 32, 32], mean [0], std [1], modality vision",
                "overrides": "optim.max_iterations=S, restarts.num_trials=R (breaching_tv_matched also "
                "regularization.total_variation.scale=<our tv_weight>)",
                "labels": "given (shared_data metadata labels)",
                "seeds": "torch.manual_seed(1000 * seed + i) before image i (breaching uses the global generator)",
                "restarts": "sequential Python loop over trials, best by cosine-similarity score",
            },
            "matched": [
                "Objective (cosine over all parameters), signed Adam, learning rate, step-decay milestones, restarts, "
                "labels, clamping to [0, 1], and (in breaching_tv_matched and ours) the TV weight.",
                "Initialisation (ours): breaching and the paper draw randn N(0, 1) in the normalised input space "
                "(here mean 0, std 1); ours draws the same but clamps it into [0, 1] before the first step, breaching "
                "after the first step.",
            ],
            "not_matched": [
                "TV: breaching's default scale 0.2 (2000x ours) in breaching_default; breaching_tv_matched uses "
                "1e-4. breaching's TV also counts the zero-padded border differences and adds eps 1e-8.",
                "Best iterate: breaching keeps the candidate *after* the step whose pre-step total objective "
                "(cosine + TV) was lowest; ours keeps the best iterate by matching loss alone (float32), keeping "
                "the first of equal values.",
                "Timing: ours runs restarts batched, breaching one after another; both single-threaded CPU.",
            ],
        },
        "runs": runs,
    }
    write_json_atomic(args.out, record)

    print(f"{'S':>5} {'R':>2}  {'method':<22} {'PSNR dB (mean ± std)':>22} {'seconds/img':>12} {'1-cos':>8}")
    for run in runs:
        for m in args.methods:
            p, sec = run["summary"][m]["psnr"], run["summary"][m]["seconds"]
            print(
                f"{run['steps']:>5} {run['restarts']:>2}  {m:<22} {p['mean']:>13.2f} ± {p['std']:<6.2f}"
                f" {sec['mean']:>12.2f} {run['summary'][m]['grad_cosine_distance']['mean']:>8.1e}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_script(main)
