"""
Ablation of GIFD's search choices, one factor at a time, from the new defaults and from the old ones.

Every run attacks the FedSGD gradient of one private batch (labels given, so that only the search is compared)
with :class:`art_gifd.GIFDAttack`; runs of one cell differ only in the factor named by their configuration, and are
paired with the baseline configuration on the same batch and seed. Factors: norm prior (weight and form), TV
(weight and per-batch reduction), latent constraint, learning-rate schedule and warm-up, hand-on of a stage's best or
last iterate, the stage selection rule, learning rate, l1 radius and restarts (all through every stage, or the best
carried into each feature stage: "R=4, 4-2-1 on" runs 4 restarts through the latent stage and the first feature
stage, then the best 2, then the best 1).

*Old* is the objective and search before the scale-consistent objective: ``1e-6 · Σ x²`` and TV summed over the
batch (expressed exactly in today's per-image-mean units), no latent constraint, every restart through every stage.

Runs are appended to one JSONL file per case (one line per run, flushed and fsynced) and skipped when the file
already holds them, so an interrupted ablation resumes where it stopped, and more configurations, seeds, images or
splits join the same file. A runs file holds the runs of one number of steps per stage and torch threads (the report's
CPU seconds): a run with others is refused unless ``--overwrite`` adds it (the report then gives it its own tables),
so that a trial does not land in the committed ``benchmarks/results/ablation_runs``; give it another ``--runs``.
``--report`` turns the files into ``benchmarks/results/ablation.json``, ``ablation.md`` and
``ablation_restarts.png``, replacing them only with ``--overwrite``. Examples::

    python benchmarks/ablation.py --case lenet-mnist --split tune --steps 100
    python benchmarks/ablation.py --case convnet-rgb64 --split tune --steps 50 --configs new old
    python benchmarks/ablation.py --report --overwrite
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from art_gifd import GIFDAttack
from art_gifd.cli import SEED, THREADS, Distinct, count, output_folder, run_script
from art_gifd.report.figures import pyplot
from art_gifd.store import ResultsFile, environment, write_json_atomic
from benchmarks.cases import CASES, SPLITS, AttackCase, measured_run
from benchmarks.common import (
    git_commit,
    mean_sem,
    other_settings,
    psnr_by_label_multiplicity,
    read_runs,
    refuse_to_replace,
    threads_text,
)

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "ablation_runs"
STAGES = 4

#: Keyword arguments of a configuration for a case and batch size (private knobs start with ``_``).
Config = Callable[[AttackCase, int], dict[str, Any]]

#: The candidate defaults the factors are varied from. The default chosen on the tuning split (``"default"``, paired
#: with ``"old"``) differs from it in the restarts: every restart through every stage (``feature_restarts=None``,
#: the ``"R=4, all on"`` row; ``"R=4, 4-2-1 on"`` is ``feature_restarts="halving"``), and in the feature stages'
#: learning rate, which the default takes from the prior (0.03 for the face DCGAN: the ``"feature lr x0.3"`` row;
#: the learning rate for the digit priors).
NEW: dict[str, Any] = {
    "norm_weight": 0.0,
    "norm_form": "mean_square",
    "tv_weight": 1e-4,
    "latent_constraint": "auto",
    "schedule": "cosine",
    "learning_rate": 0.1,
    "feature_learning_rate": 0.1,
    "l1_radius": 0.2,
    "num_restarts": 4,
    "feature_restarts": 1,
    "_hand_on": "best",
    "_selection": "all",
    "step_split": "equal",
    "latent_pool": 1,
}


def old(case: AttackCase, batch: int) -> dict[str, Any]:
    """The old objective and search in today's units: ``Σ_b (1e-4 · TV_b + 1e-6 · Σ x_b²)``, no constraint."""
    numel = int(np.prod(case.input_shape))
    return {
        **NEW,
        "norm_weight": 1e-6 * numel * batch,
        "tv_weight": 1e-4 * batch,
        "latent_constraint": "none",
        "feature_restarts": None,
    }


def _from_new(**changes: Any) -> Config:
    return lambda case, batch: {**NEW, **changes}


def _from_old(**changes: Any) -> Config:
    return lambda case, batch: {**old(case, batch), **changes}


#: The default chosen on the tuning split: ``NEW`` with every restart through every stage, the prior's feature-stage
#: learning rate and the last-heavy step split. The shipped default adds a latent pool of 16 draws per restart (the
#: ``"default, pool=16"`` row; ``benchmarks/results/ablation_pool.md``).
DEFAULT: dict[str, Any] = {**NEW, "feature_restarts": None, "feature_learning_rate": None, "step_split": "last-heavy"}


def _from_default(**changes: Any) -> Config:
    return lambda case, batch: {**DEFAULT, **changes}


#: name -> (baseline it is paired with, configuration).
CONFIGS: dict[str, tuple[str, Config]] = {
    "new": ("new", _from_new()),
    "norm=old 1e-6*sum(x^2)": ("new", lambda case, batch: {**NEW, "norm_weight": old(case, batch)["norm_weight"]}),
    "norm=1e-6 mean_square": ("new", _from_new(norm_weight=1e-6)),
    "norm=1e-6 rms": ("new", _from_new(norm_weight=1e-6, norm_form="rms")),
    "tv=0": ("new", _from_new(tv_weight=0.0)),
    "tv=1e-5": ("new", _from_new(tv_weight=1e-5)),
    "tv=1e-3": ("new", _from_new(tv_weight=1e-3)),
    "tv summed over batch": ("new", lambda case, batch: {**NEW, "tv_weight": 1e-4 * batch}),
    "latent constraint=none": ("new", _from_new(latent_constraint="none")),
    "schedule=step": ("new", _from_new(schedule="step")),
    "schedule=constant": ("new", _from_new(schedule="constant")),
    "schedule=cosine, no warm-up": ("new", _from_new(schedule="cosine-no-warmup")),
    "hand on last iterate": ("new", _from_new(_hand_on="last")),
    "select last stage": ("new", _from_new(_selection="last")),
    "lr=0.03": ("new", _from_new(learning_rate=0.03, feature_learning_rate=0.03)),
    "lr=0.05": ("new", _from_new(learning_rate=0.05, feature_learning_rate=0.05)),
    "lr=0.3": ("new", _from_new(learning_rate=0.3, feature_learning_rate=0.3)),
    "radius=0.05": ("new", _from_new(l1_radius=0.05)),
    "radius=0.5": ("new", _from_new(l1_radius=0.5)),
    "R=1": ("new", _from_new(num_restarts=1)),
    "R=2, best 1 on": ("new", _from_new(num_restarts=2)),
    "R=8, best 1 on": ("new", _from_new(num_restarts=8)),
    "R=4, all on": ("new", _from_new(feature_restarts=None)),
    "R=8, best 2 on": ("new", _from_new(num_restarts=8, feature_restarts=2)),
    "R=4, 2-1-1 on": ("new", _from_new(feature_restarts=(2, 1, 1))),
    "R=4, 4-1-1 on": ("new", _from_new(feature_restarts=(4, 1, 1))),
    "R=4, 4-2-1 on": ("new", _from_new(feature_restarts=(4, 2, 1))),
    "R=2, all on": ("new", _from_new(num_restarts=2, feature_restarts=None)),
    "pool=4, all on": ("R=4, all on", _from_new(feature_restarts=None, latent_pool=4)),
    "pool=16, all on": ("R=4, all on", _from_new(feature_restarts=None, latent_pool=16)),
    "feature lr x0.3, all on": ("R=4, all on", _from_new(feature_restarts=None, feature_learning_rate=0.03)),
    "feature lr x3, all on": ("R=4, all on", _from_new(feature_restarts=None, feature_learning_rate=0.3)),
    "feature lr x0.5, all on": ("R=4, all on", _from_new(feature_restarts=None, feature_learning_rate=0.05)),
    "pool=16, feature lr x0.5, all on": (
        "R=4, all on",
        _from_new(feature_restarts=None, latent_pool=16, feature_learning_rate=0.05),
    ),
    "lr=0.03, all on": (
        "R=4, all on",
        _from_new(feature_restarts=None, learning_rate=0.03, feature_learning_rate=0.03),
    ),
    "lr=0.05, all on": (
        "R=4, all on",
        _from_new(feature_restarts=None, learning_rate=0.05, feature_learning_rate=0.05),
    ),
    "3 stages, all on": ("R=4, all on", _from_new(feature_restarts=None, _stages=3)),
    "radii 0.2-0.2-0.1, all on": ("R=4, all on", _from_new(feature_restarts=None, l1_radius=(0.2, 0.2, 0.1))),
    "steps 1/4-1/8-1/8-1/2, all on": (
        "R=4, all on",
        _from_new(feature_restarts=None, step_split=(0.25, 0.125, 0.125, 0.5)),
    ),
    "steps 1/8-1/8-1/4-1/2, all on": (
        "R=4, all on",
        _from_new(feature_restarts=None, step_split=(0.125, 0.125, 0.25, 0.5)),
    ),
    "steps 1/8-1/16-1/16-3/4, all on": (
        "R=4, all on",
        _from_new(feature_restarts=None, step_split=(0.125, 0.0625, 0.0625, 0.75)),
    ),
    "feature lr x0.3, steps 1/4-1/8-1/8-1/2, all on": (
        "feature lr x0.3, all on",
        _from_new(feature_restarts=None, feature_learning_rate=0.03, step_split=(0.25, 0.125, 0.125, 0.5)),
    ),
    "feature lr x0.3, steps 1/8-1/8-1/4-1/2, all on": (
        "feature lr x0.3, all on",
        _from_new(feature_restarts=None, feature_learning_rate=0.03, step_split=(0.125, 0.125, 0.25, 0.5)),
    ),
    "pool=16, R=2 all on": ("R=4, all on", _from_new(num_restarts=2, feature_restarts=None, latent_pool=16)),
    "default": ("old", _from_default()),
    "default, pool=16": ("default", _from_default(latent_pool=16)),
    "default, pool=64": ("default, pool=16", _from_default(latent_pool=64)),
    "default, steps 1/4-1/8-1/8-1/2": ("default", _from_default(step_split=(0.25, 0.125, 0.125, 0.5))),
    "default, latent lr 0.2": ("default", _from_default(learning_rate=0.2, feature_learning_rate=0.1)),
    "default, latent lr 0.3": ("default", _from_default(learning_rate=0.3, feature_learning_rate=0.1)),
    # 8 starts, halved into each feature stage (8-4-2): with the last-heavy split, the same restart × steps as R=4
    "default, R=8 halving": ("default", _from_default(num_restarts=8, feature_restarts="halving")),
    "default, tv summed over batch": ("default", lambda case, batch: {**DEFAULT, "tv_weight": 1e-4 * batch}),
    "default, steps equal": ("default", _from_default(step_split="equal")),
    "default, steps equal, pool=16": ("default", _from_default(step_split="equal", latent_pool=16)),
    "default, steps equal, R=8 halving": (
        "default",
        _from_default(step_split="equal", num_restarts=8, feature_restarts="halving"),
    ),
    "default, tv=1e-3": ("default", _from_default(tv_weight=1e-3)),
    "default, norm=old 1e-6*sum(x^2)": (
        "default",
        lambda case, batch: {**DEFAULT, "norm_weight": old(case, batch)["norm_weight"]},
    ),
    "default, latent constraint=none": ("default", _from_default(latent_constraint="none")),
    "old": ("old", old),
    "old + norm=0": ("old", _from_old(norm_weight=0.0)),
    "old + tv mean over batch": ("old", _from_old(tv_weight=1e-4)),
    "old + sphere": ("old", _from_old(latent_constraint="auto")),
    "old + best 1 on": ("old", _from_old(feature_restarts=1)),
}


def build(case: AttackCase, classifier: Any, kwargs: dict[str, Any], batch: int, steps: int, seed: int) -> GIFDAttack:
    """The attack of one configuration (private knobs set on the instance)."""
    public = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    stages = kwargs.get("_stages", STAGES)  # fewer stages get the same total steps
    attack = GIFDAttack(
        classifier,
        case.load_prior(),
        max_stage=stages,
        steps_per_stage=steps * STAGES // stages,
        batch_size=batch,
        seed=seed,
        verbose=False,
        **public,
    )
    attack._hand_on = kwargs["_hand_on"]
    attack._selection = kwargs["_selection"]
    return attack


def same_as_baseline(case: AttackCase, name: str, batch: int) -> bool:
    """Whether configuration ``name`` is its own baseline's at batch size ``batch`` (e.g. TV summed over one image)."""
    baseline, config = CONFIGS[name]
    return name != baseline and config(case, batch) == CONFIGS[baseline][1](case, batch)


def run_key(record: dict[str, Any]) -> tuple:
    """What identifies a run (for resuming): runs of other steps per stage or torch threads are other runs."""
    return (
        record["case"],
        record["split"],
        record["config"],
        record["batch_size"],
        record["first"],
        record["seed"],
        record["steps_per_stage"],
        record["threads"],
    )


#: What an ablation run record holds: every field the report reads. Records of other programs (or damaged ones) are
#: skipped with a warning.
_RECORD = {
    "case": str,
    "split": str,
    "config": str,
    "batch_size": int,
    "first": int,
    "seed": int,
    "steps_per_stage": int,
    "threads": int,
    "psnr": float,
    "ssim": float,
    "per_image_psnr": [float],
    "matching_loss": float,
    "cpu_seconds": float,
}


def _outside_cases(record: dict[str, Any]) -> str | None:
    """
    What places a well-formed record outside the cases of ``benchmarks/cases.py`` (a case or split it does not
    define, images beyond the split), or ``None``.
    """
    case = CASES.get(record["case"])
    if case is None:
        return f"a run of case {record['case']!r}, which benchmarks/cases.py does not define"
    if record["split"] not in case.splits:
        return f"a run of split {record['split']!r}, which case {case.name!r} does not have"
    lo, hi = case.splits[record["split"]]
    first, batch = record["first"], record["batch_size"]
    if batch < 1:
        return f"a run of batch size {batch}"
    if first < 0 or first + batch > hi - lo:
        split = f"the {hi - lo} images of the {record['split']} split of case {case.name!r}"
        return f"a run of images {first}–{first + batch - 1}, beyond {split}"
    if len(record["per_image_psnr"]) != batch:
        return f"a run of batch size {batch} with {len(record['per_image_psnr'])} per-image PSNR values"
    return None


def report_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of one runs file that the report can read; others are skipped with a warning naming them."""
    return read_runs(path, _RECORD, check=_outside_cases)


def run(args: argparse.Namespace) -> None:
    """Run every missing run of the selected case, split, configurations, batch sizes and seeds."""
    case = CASES[args.case]
    classifier = case.classifier()
    store = ResultsFile(args.runs / f"{case.name}.jsonl")
    # repair: appends start on a fresh line
    done = {run_key(r) for r in read_runs(store.path, _RECORD, repair=True)}
    commit = git_commit()
    names = args.configs or list(CONFIGS)
    for batch in args.batch_sizes:
        x_all, y_all = case.images(args.split, args.images)
        for name in names:
            baseline, config = CONFIGS[name]
            if same_as_baseline(case, name, batch):
                print(f"{name!r} is {baseline!r} itself at B={batch}: not run (its baseline's runs stand for it)")
                continue
            kwargs = config(case, batch)
            for first in range(0, len(x_all) - batch + 1, batch):
                x, y = x_all[first : first + batch], y_all[first : first + batch]
                gradient = None
                for seed in args.seeds:
                    record = {
                        "case": case.name,
                        "split": args.split,
                        "config": name,
                        "batch_size": batch,
                        "first": first,
                        "seed": seed,
                        "steps_per_stage": args.steps,
                        "threads": args.threads,
                    }
                    if run_key(record) in done:
                        continue
                    if gradient is None:
                        gradient = case.gradient(classifier, x, y)
                    attack = build(case, classifier, kwargs, batch, args.steps, seed)
                    result, measured = measured_run(attack, gradient, x, y)
                    record.update(
                        baseline=baseline,
                        **measured,
                        best_stage=result.stage_names[result.best_stage],
                        commit=commit,
                    )
                    store.append(record)
                    print(
                        f"{case.name} {args.split} B={batch} {name!r} first={first} seed={seed}: "
                        f"{measured['psnr']:.2f} dB, {measured['cpu_seconds']:.1f} cpu s",
                        flush=True,
                    )


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    One row per (case, split, B, steps, torch threads, configuration): means, s.e.m. and paired differences to its
    baseline.
    """
    cells: dict[tuple, dict[str, dict[tuple, dict[str, Any]]]] = {}
    for r in runs:
        cell = (r["case"], r["split"], r["batch_size"], r["steps_per_stage"], r["threads"])
        cells.setdefault(cell, {}).setdefault(r["config"], {})[(r["first"], r["seed"])] = r
    rows = []
    for (case, split, batch, steps, threads), configs in sorted(cells.items()):
        for name in [n for n in CONFIGS if n in configs]:
            baseline = CONFIGS[name][0]
            own = configs[name]
            base = configs.get(baseline, {})
            psnr, psnr_sem = mean_sem([r["psnr"] for r in own.values()])
            paired = [own[k]["psnr"] - base[k]["psnr"] for k in own if k in base]
            loss_lower = sum(own[k]["matching_loss"] < base[k]["matching_loss"] for k in own if k in base)
            compared = bool(paired) and name != baseline  # a baseline without runs on these batches: no comparison
            diff, diff_sem = mean_sem(paired) if compared else (float("nan"), float("nan"))
            rows.append(
                {
                    "case": case,
                    "split": split,
                    "batch_size": batch,
                    "steps_per_stage": steps,
                    "threads": threads,
                    "config": name,
                    "baseline": baseline,
                    "runs": len(own),
                    "psnr": psnr,
                    "psnr_sem": psnr_sem,
                    "ssim": float(np.mean([r["ssim"] for r in own.values()])),
                    "paired_diff": diff,
                    "paired_diff_sem": diff_sem,
                    "paired_runs": len(paired),
                    "wins": sum(d > 0 for d in paired) if compared else None,
                    "loss_lower": loss_lower if compared else None,
                    "cpu_seconds": float(np.mean([r["cpu_seconds"] for r in own.values()])),
                }
            )
    return rows


def label_multiplicity(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    PSNR of the images of batched runs (B > 1) split by whether their label is unique in the batch or shared with
    another image of it (:func:`~art_gifd.metrics.shared_labels`), per case, split, batch size, steps, torch threads
    and configuration.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r["batch_size"] > 1:
            key = (r["case"], r["split"], r["batch_size"], r["steps_per_stage"], r["threads"], r["config"])
            groups.setdefault(key, []).append(r)
    rows = []
    for (case, split, batch, steps, threads, config), cell in sorted(groups.items()):
        lo, hi = CASES[case].splits[split]
        labels = CASES[case].images(split, hi - lo)[1]
        split_psnr = psnr_by_label_multiplicity(
            (labels[r["first"] : r["first"] + batch], r["per_image_psnr"]) for r in cell
        )
        row = {
            "case": case,
            "split": split,
            "batch_size": batch,
            "steps_per_stage": steps,
            "threads": threads,
            "config": config,
            "batches": len({r["first"] for r in cell}),
        }
        for kind, values in split_psnr.items():
            mean, sem = mean_sem(values) if values else (float("nan"), float("nan"))
            row.update({f"{kind}_images": len(values), f"{kind}_psnr": mean, f"{kind}_psnr_sem": sem})
        rows.append(row)
    return rows


def multiplicity_markdown(rows: list[dict[str, Any]]) -> str:
    """The label-multiplicity rows as one Markdown table."""
    lines = [
        "",
        "## Batched runs: images whose label is unique in the batch against images that share it",
        "",
        "Per-image PSNR (Hungarian-matched), mean ± s.e.m. over the images of every run of the cell (batch × seed × "
        "slot). Images that share a label are told apart only by the layers below the classifier head.",
        "",
        "| case | split | B | steps/stage | configuration | batches | unique label: images, PSNR | shared label: "
        "images, PSNR |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, Any], kind: str) -> str:
        if not row[f"{kind}_images"]:
            return "0, —"
        return f"{row[f'{kind}_images']}, {row[f'{kind}_psnr']:.2f} ± {row[f'{kind}_psnr_sem']:.2f}"

    mixed = len({row["threads"] for row in rows}) > 1  # else the thread count is the report's, stated above
    for row in rows:
        steps = f"{row['steps_per_stage']}, {threads_text(row['threads'])}" if mixed else row["steps_per_stage"]
        lines.append(
            f"| {row['case']} | {row['split']} | {row['batch_size']} | {steps} | {row['config']} | "
            f"{row['batches']} | {cell(row, 'unique')} | {cell(row, 'shared')} |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict[str, Any]]) -> str:
    """
    The rows as Markdown tables, one per case, split, batch size, steps and torch threads (named in the headings
    when the runs were made with more than one thread count, else once in the introduction).
    """
    counts = sorted({row["threads"] for row in rows})
    threads = threads_text(counts[0]) if len(counts) == 1 else "the torch threads of its table"
    lines = [
        "# GIFD ablation",
        "",
        "PSNR in dB (Hungarian-matched at B=4), mean ± s.e.m. over runs (batch × seed); Δ: paired difference to the "
        "row's baseline (`new` or `old`) on the same batches and seeds, ± s.e.m.; wins: runs with higher PSNR than the "
        f"baseline; cpu s: process CPU seconds per run ({threads}). Labels given. "
        f"{STAGES} stages (latent + {STAGES - 1} feature) × the steps per stage stated.",
        "",
        "`new` is the candidate the factors were varied from: norm 0, TV 1e-4 (per-image means averaged over the "
        "batch), latent sphere, cosine schedule with warm-up, lr 0.1, l1 radius 0.2, R=4 with only the best restart "
        "of the latent stage carried on. `old` is the objective before (1e-6·Σx² and TV summed over the batch, no "
        "latent constraint, every restart through every stage). The chosen default, `default` (paired with `old`), "
        "is `new` with every restart through every stage (the `R=4, all on` row) and the prior's feature-stage "
        "learning rate (0.03 for the face DCGAN, the `feature lr x0.3` row; 0.1 for the digit priors), the last-heavy "
        "step split and one latent draw per restart; `GIFDAttack`'s shipped default is `default, pool=16` (16 latent "
        "draws per restart, the best by matching loss start the search). Tuning and evaluation splits are disjoint "
        "image sets (`benchmarks/cases.py`).",
        "",
    ]
    cell = None
    for row in rows:
        key = (row["case"], row["split"], row["batch_size"], row["steps_per_stage"], row["threads"])
        if key != cell:
            cell = key
            heading = (
                f"## {row['case']}, {row['split']} split, B={row['batch_size']}, {row['steps_per_stage']} steps/stage"
            )
            lines += [
                "",
                heading + (f", {threads_text(row['threads'])}" if len(counts) > 1 else ""),
                "",
                "| configuration | runs | PSNR | SSIM | Δ vs baseline | wins | loss lower | cpu s |",
                "|---|---|---|---|---|---|---|---|",
            ]
        delta = "—" if row["wins"] is None else f"{row['paired_diff']:+.2f} ± {row['paired_diff_sem']:.2f}"
        wins = "—" if row["wins"] is None else f"{row['wins']}/{row['paired_runs']}"
        lower = "—" if row["loss_lower"] is None else f"{row['loss_lower']}/{row['paired_runs']}"
        lines.append(
            f"| {row['config']} | {row['runs']} | {row['psnr']:.2f} ± {row['psnr_sem']:.2f} | {row['ssim']:.3f} | "
            f"{delta} | {wins} | {lower} | {row['cpu_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


#: The restart configurations of the PSNR-against-CPU figure, in the order they are drawn.
RESTART_CONFIGS = (
    "R=1",
    "R=2, best 1 on",
    "R=2, all on",
    "new",
    "R=4, 2-1-1 on",
    "R=4, 4-1-1 on",
    "R=4, 4-2-1 on",
    "R=4, all on",
    "R=8, best 1 on",
    "R=8, best 2 on",
)


def restarts_figure(rows: list[dict[str, Any]], path: Path) -> bool:
    """
    PSNR against CPU seconds of the restart configurations, one panel per case, batch size, steps and torch threads
    (tuning split) that has any; whether there was one to draw.
    """
    plt = pyplot()

    def panel(r: dict[str, Any]) -> tuple:
        return r["case"], r["batch_size"], r["steps_per_stage"], r["threads"]

    cells = sorted({panel(r) for r in rows if r["split"] == "tune" and r["config"] in RESTART_CONFIGS})
    if not cells:
        return False
    # steps and threads in a title only where a case and batch size has panels of several
    repeated = {cell[:2] for cell in cells if sum(other[:2] == cell[:2] for other in cells) > 1}
    fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.2), squeeze=False)
    for ax, cell in zip(axes[0], cells, strict=True):
        case, batch, steps, threads = cell
        chosen = {r["config"]: r for r in rows if r["split"] == "tune" and panel(r) == cell}
        for index, name in enumerate(RESTART_CONFIGS):
            if name in chosen:
                r = chosen[name]
                label = "R=4, best 1 on (new)" if name == "new" else name
                color = f"C{index}"  # one colour per configuration in every panel
                ax.errorbar(
                    r["cpu_seconds"], r["psnr"], yerr=r["psnr_sem"], fmt="o", capsize=2, label=label, color=color
                )
        budget = f", {steps} steps, {threads} thr." if (case, batch) in repeated else ""
        ax.set_title(f"{case}, B={batch}{budget}", fontsize=9)
        ax.set_xlabel("CPU seconds per run")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(args: argparse.Namespace) -> None:
    """Write ``ablation.json`` and ``ablation.md`` from the runs file."""
    runs = [r for path in sorted(args.runs.glob("*.jsonl")) for r in report_runs(path)]
    if not runs:
        raise SystemExit(f"error: no runs in '{args.runs}': run the ablation first.")
    rows = summarise(runs)
    multiplicity = label_multiplicity(runs)
    record = {
        "benchmark": "ablation",
        "command": shlex.join(["python", "benchmarks/ablation.py", *sys.argv[1:]]),
        "runs": f"one JSONL file per case in {_shown(args.runs)}",
        "commits": sorted({str(r.get("commit")) for r in runs}),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(0, "cpu"),
        "cases": {name: case.description for name, case in CASES.items()},
        "configs_new": NEW,
        "rows": rows,
        "label_multiplicity": multiplicity,
    }
    json_path, md_path, figure_path = report_paths(args.out)
    write_json_atomic(json_path, record)
    text = markdown(rows) + multiplicity_markdown(multiplicity)
    md_path.write_text(text)
    drawn = restarts_figure(rows, figure_path)
    print(text)
    print(f"-> {json_path}, {md_path}" + (f", {figure_path}" if drawn else " (no restart configurations: no figure)"))


def report_paths(out: Path) -> tuple[Path, Path, Path]:
    """The files ``--report`` writes for ``--out``: the JSON record, the Markdown tables and the restarts figure."""
    return out.with_suffix(".json"), out.with_suffix(".md"), out.parent / f"{out.name}_restarts.png"


def _shown(path: Path) -> str:
    """A path as a report names it: relative to the repository when inside it."""
    try:
        return f"{path.resolve().relative_to(RESULTS.parent.parent)}/"
    except ValueError:
        return f"{path}/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), help="the case to run (not needed with --report)")
    parser.add_argument("--split", choices=SPLITS, default="tune")
    parser.add_argument(
        "--configs", nargs="+", action=Distinct, default=None, help="configuration names (default: all)"
    )
    parser.add_argument("--batch-sizes", nargs="+", type=count(1), action=Distinct, default=[1, 4])
    parser.add_argument("--images", type=count(1), default=8, help="images per split and batch size")
    parser.add_argument("--seeds", nargs="+", type=SEED, action=Distinct, default=[0, 1])
    parser.add_argument("--steps", type=count(1), default=100, help="Adam steps per stage")
    parser.add_argument("--threads", type=THREADS, default=1, help="torch CPU threads")
    parser.add_argument(
        "--runs",
        type=output_folder,
        default=RUNS,
        help="folder of the runs files, one JSONL per case (appended, resumed)",
    )
    parser.add_argument("--report", action="store_true", help="summarise the runs file instead of running")
    parser.add_argument("--out", type=Path, default=RESULTS / "ablation", help="report path without suffix")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="--report: replace an existing report; a run: add runs of other --steps or --threads to a runs file",
    )
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs or [] if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}.")
    if not args.report and args.case is None:
        parser.error("--case is required (or --report).")
    if any(args.images % b for b in args.batch_sizes):
        parser.error(f"every --batch-sizes value must divide --images ({args.images}).")
    if args.case is not None:
        lo, hi = CASES[args.case].splits[args.split]
        if args.images > hi - lo:
            parser.error(f"--images {args.images}: case '{args.case}' has {hi - lo} images in its {args.split} split.")
    if args.report:
        refuse_to_replace(parser, report_paths(args.out), args.overwrite)
    else:
        case, names = CASES[args.case], args.configs or list(CONFIGS)
        if all(same_as_baseline(case, name, batch) for name in names for batch in args.batch_sizes):
            same = ", ".join(f"{name!r} is {CONFIGS[name][0]!r}" for name in names)
            parser.error(
                f"nothing to run: at --batch-sizes {' '.join(map(str, args.batch_sizes))}, {same} (its baseline) "
                "itself; give another batch size or configuration."
            )
        # The report pools a cell's runs and averages their CPU seconds: runs of other steps or threads in the same
        # file are another study (a trial, most often), added only when asked.
        runs = args.runs / f"{CASES[args.case].name}.jsonl"
        settings = {"steps_per_stage": ("--steps", args.steps), "threads": ("--threads", args.threads)}
        differing = other_settings(read_runs(runs, _RECORD), settings)
        if differing and not args.overwrite:
            parser.error(
                f"{runs} holds runs of {', '.join(differing)}: give another --runs folder, or pass --overwrite to add "
                "these runs to it."
            )
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the ablation or write its report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        report(args)
    else:  # one writer per runs file: a second process on it would do every run again
        with ResultsFile(args.runs / f"{CASES[args.case].name}.jsonl").lock("benchmarks/ablation.py", "another --runs"):
            run(args)


if __name__ == "__main__":
    run_script(main)
