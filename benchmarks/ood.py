"""
Out-of-distribution priors and label-inconsistent class-conditional priors.

For each (prior domain → target domain) pair, GIFD, latent-only and pixel-space attacks reconstruct the same private
images from their FL gradients at an equal step budget, at batch sizes 1 and 4, labels inferred from the gradient:

==================  ======================================  ==================================================
pair                prior                                   private images (never shown to any prior)
==================  ======================================  ==================================================
in-distribution     ``mnist32`` DCGAN (digits)              MNIST ``heldout`` digits
digits-to-clothes   ``mnist32`` DCGAN (digits)              Fashion-MNIST ``heldout`` (test-file) images
clothes-to-digits   ``fashion32`` DCGAN (clothes)           MNIST ``heldout`` digits
faces-to-images     face DCGAN, 64×64 RGB (gan-face-gen.)   ``skimage64``: crops of scikit-image's sample photos
label-permuted      ``mnist32-conditional`` (digit classes)  MNIST ``heldout`` digits whose task labels are a known
                                                            permutation of the digits
==================  ======================================  ==================================================

In ``label-permuted`` the FL task calls digit ``d`` class ``TASK_LABEL_OF_DIGIT[d]``, and the FL model has been
trained on that task for ``--train-epochs`` epochs (on the 4,000 ``train`` digits) so that its predictions mean
something, as ``label_mapping="auto"``'s default confidence scorer needs. The generative attacks run with three label
mappings: ``identity`` (task label = generator class, the wrong digit), ``auto`` (chosen per batch by scoring the
generator classes) and ``true`` (the inverse permutation); the pixel attack needs no mapping and runs once.

Resumable: every finished (pair, mapping, attack, batch size) appends one line to ``--jobs`` and a rerun with the
same settings skips it. The summary goes to ``--out`` (``art-gifd/results/v1`` with one record per run under
``runs``; default ``benchmarks/results/ood.json``) and ``--md``, replacing existing ones only with ``--overwrite``
(checked before any job runs); a run over part of the grid writes none unless ``--out`` is given::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ood.py --steps-per-stage 50 --restarts 2 --images 16 --overwrite

On the CPU with one torch thread the whole grid (38 jobs) took 31 minutes on 2026-12-02; with ``--device cuda`` it
takes about 4.5 minutes on one H200 when split into one process per pair and batch size (``--pairs P
--batch-sizes B --jobs J_P_B.jsonl``), whose job files, concatenated into ``--jobs``, a last call turns into the
summary (it skips every finished job). Each run records the device it ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from art_gifd.attacks.registry import ATTACKS, Budget
from art_gifd.cli import SEED, Distinct, count, run_script
from art_gifd.data import load_dataset
from art_gifd.experiment import SCHEMA, Case, Experiment, run_experiment
from art_gifd.models import MODELS, build_model
from art_gifd.priors import LayeredGenerator, load_default_prior, load_face_dcgan
from art_gifd.priors.embedded import EMBEDDED_PRIORS
from art_gifd.store import NUMBER, ResultsFile, environment, shape_problem, write_json_atomic

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_commit, refuse_to_replace

#: What the summary reads of a finished job's record (see :func:`art_gifd.store.shape_problem`).
JOB_SHAPE = {
    "settings": str,
    "run": {"psnr": NUMBER, "psnr_std": NUMBER, "ssim": NUMBER, "label_accuracy": NUMBER},
}

#: Task label of each digit in the label-permuted pair: a fixed derangement (no digit keeps its label).
TASK_LABEL_OF_DIGIT = (7, 4, 9, 0, 2, 8, 1, 5, 3, 6)
#: The true label mapping of that pair: task label → generator class (= digit).
TRUE_MAPPING = {task: digit for digit, task in enumerate(TASK_LABEL_OF_DIGIT)}
GENERATIVE = ("gifd", "latent-only")
FACE_PRIOR = "face-dcgan"
THREAT_MODEL = (
    "An honest-but-curious server knows the FL model's architecture and current weights and observes the gradient "
    "of one FedSGD step of one client batch, and the batch size. Labels are inferred from the gradient. No defence. "
    "Every prior was trained on public data disjoint from the private images; in the OOD pairs the private images "
    "come from another domain than the prior's training data."
)


RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Pair:
    """A prior domain → target domain pair."""

    prior: str
    dataset: str
    description: str
    #: Label mappings to compare (class-conditional prior only); ``()`` for unconditional priors.
    mappings: tuple[str, ...] = ()


PAIRS = {
    "in-distribution": Pair("mnist32", "mnist32", "digits prior → held-out digits"),
    "digits-to-clothes": Pair("mnist32", "fashion32", "digits prior → held-out Fashion-MNIST clothes"),
    "clothes-to-digits": Pair("fashion32", "mnist32", "clothes prior → held-out digits"),
    "faces-to-images": Pair(FACE_PRIOR, "skimage64", "64×64 RGB faces prior → crops of scikit-image sample photos"),
    "label-permuted": Pair(
        "mnist32-conditional",
        "mnist32",
        "class-conditional digits prior → held-out digits whose task labels permute the digits",
        ("identity", "auto", "true"),
    ),
}


def load_prior(name: str, device: str) -> tuple[LayeredGenerator, dict[str, Any]]:
    """An embedded prior or the face DCGAN, and its description for the results."""
    if name == FACE_PRIOR:
        prior = load_face_dcgan(device=device)
        return prior, {"name": name, **prior.describe(), "source": "gan-face-generate 1.1.1 weights.tar"}
    prior = load_default_prior(name, device=device)
    return prior, {"name": name, **prior.describe(), "sha256": EMBEDDED_PRIORS[name]["sha256"]}


def train_task_model(model_name: str, epochs: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """
    Train the FL model of the label-permuted task (Adam, lr 3e-3, batch 64) on the 4,000 ``train`` digits with
    permuted labels; return its weights and a record with its held-out accuracy on the permuted task.
    """
    permute = np.asarray(TASK_LABEL_OF_DIGIT)
    x, digits = load_dataset("mnist32", "train")
    x, y = torch.as_tensor(x), torch.as_tensor(permute[digits])
    model = build_model(model_name, 1, 32, 10, seed=seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=rng).split(64):
            optimiser.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    x_test, digits_test = load_dataset("mnist32", "heldout")
    with torch.no_grad():
        predicted = model(torch.as_tensor(x_test)).argmax(dim=1).numpy()
    accuracy = float(np.mean(predicted == permute[digits_test]))
    record = {"epochs": epochs, "optimiser": "Adam lr 3e-3, batch 64", "data": "mnist32 train (4,000), permuted"}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, record | {"heldout_accuracy": accuracy}


def job_list(pairs: list[str], batch_sizes: list[int]) -> list[tuple[str, str, str, int]]:
    """Every (pair, mapping, attack, batch size) to run; mapping ``"-"`` for unconditional priors and pixel."""
    jobs = []
    for name in pairs:
        for batch_size in batch_sizes:
            for attack in ATTACKS:
                mappings = PAIRS[name].mappings if attack in GENERATIVE and PAIRS[name].mappings else ("-",)
                jobs += [(name, mapping, attack, batch_size) for mapping in mappings]
    return jobs


def settings_fingerprint(args: argparse.Namespace) -> str:
    """Hash of the settings a finished job depends on (jobs of other settings are not reused)."""
    keys = ("steps_per_stage", "stages", "restarts", "images", "model", "seed", "train_epochs")
    return hashlib.sha256(json.dumps({k: getattr(args, k) for k in keys}).encode()).hexdigest()[:12]


def run_job(
    args: argparse.Namespace,
    job: tuple[str, str, str, int],
    prior: LayeredGenerator,
    prior_name: str,
    task_weights: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """One (pair, mapping, attack, batch size) through :func:`~art_gifd.experiment.run_experiment`."""
    name, mapping, attack, batch_size = job
    pair = PAIRS[name]
    case = Case(args.model, pair.dataset, batch_size, args.images)
    params: dict[str, Any] = {}
    if pair.mappings:
        x, digits = load_dataset(pair.dataset, "heldout")
        case.dataset, case.data = "mnist32 (permuted labels)", (x, np.asarray(TASK_LABEL_OF_DIGIT)[digits])
        case.weights = task_weights
        if attack in GENERATIVE:
            params = {"label_mapping": {"identity": None, "auto": "auto", "true": TRUE_MAPPING}[mapping]}
    budget = Budget(args.steps_per_stage, args.stages, args.restarts)
    experiment = Experiment(
        [case], (attack,), budget, seed=args.seed, device=args.device, verbose=False, attack_params={attack: params}
    )
    (run,) = run_experiment(experiment, prior, prior_name)
    device = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "cpu"
    run.update(pair=name, label_mapping=mapping if mapping != "-" else None, device=device)
    if pair.mappings and attack in GENERATIVE:  # how often the generator got the right digit
        pairs = [
            (t, g)
            for tasks, gens in zip(run["task_labels"], run["generator_labels"], strict=True)
            for t, g in zip(tasks, gens, strict=True)
        ]
        run["generator_class_accuracy"] = float(np.mean([TRUE_MAPPING[t] == g for t, g in pairs]))
    return run


def paired(runs: dict[tuple, dict[str, Any]], a: tuple, b: tuple) -> dict[str, Any] | None:
    """PSNR of run ``a`` minus run ``b`` on the same images: mean, std, wins of ``a``; ``None`` if one is missing."""
    if a not in runs or b not in runs:
        return None
    diff = np.asarray(runs[a]["per_image"]["psnr"]) - np.asarray(runs[b]["per_image"]["psnr"])
    return {"mean": float(diff.mean()), "std": float(diff.std()), "wins": int((diff > 0).sum()), "n": int(diff.size)}


def claims(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Margins behind claims (a) GIFD beats latent-only, (b) it works OOD, (c) label mapping rescues the case."""
    by = {(r["pair"], r["label_mapping"], r["attack"], r["batch_size"]): r for r in runs}
    a, b, c = [], [], []
    for name, pair in PAIRS.items():
        for bs in (1, 4):
            for mapping in pair.mappings or (None,):
                margin = paired(by, (name, mapping, "gifd", bs), (name, mapping, "latent-only", bs))
                if margin:
                    a.append({"pair": name, "label_mapping": mapping, "batch_size": bs, "psnr_gain_db": margin})
            if name not in ("in-distribution", "label-permuted"):
                vs_latent = paired(by, (name, None, "gifd", bs), (name, None, "latent-only", bs))
                vs_pixel = paired(by, (name, None, "gifd", bs), (name, None, "pixel", bs))
                if vs_latent and vs_pixel:
                    b.append({"pair": name, "batch_size": bs, "vs_latent_only_db": vs_latent, "vs_pixel_db": vs_pixel})
            if pair.mappings:
                for attack in GENERATIVE:
                    entry: dict[str, Any] = {"attack": attack, "batch_size": bs}
                    for mapping in ("auto", "true"):
                        entry[f"{mapping}_minus_identity_db"] = paired(
                            by, (name, mapping, attack, bs), (name, "identity", attack, bs)
                        )
                    run = by.get((name, "auto", attack, bs))
                    entry["auto_generator_class_accuracy"] = run["generator_class_accuracy"] if run else None
                    if any(v is not None for k, v in entry.items() if k.endswith("_db")):
                        c.append(entry)
    return {"a_gifd_vs_latent_only": a, "b_ood": b, "c_label_mapping": c}


def fmt(run: dict[str, Any] | None) -> str:
    if run is None:
        return "–"
    return f"{run['psnr']:.2f} ± {run['psnr_std']:.2f} ({run['ssim']:.3f})"


def markdown(document: dict[str, Any]) -> str:
    """The OOD table and the claim margins, in Markdown."""
    budget, env = document["budget"], document["environment"]
    by = {(r["pair"], r["label_mapping"], r["attack"], r["batch_size"]): r for r in document["runs"]}
    lines = [
        "# GIFD with out-of-distribution and label-inconsistent priors",
        "",
        f"Command: `{document['command']}`  ",
        f"Git commit: `{document['git_commit']}`  ",
        f"Attacks ran on: {', '.join(document['run_devices'])}; summary written on {env['device']} with torch "
        f"{env['torch']}; date {document['date']}  ",
        f"Budget per attack: {budget['total_steps']} steps × {budget['num_restarts']} restarts (GIFD: "
        f"{budget['stages']} stages × {budget['steps_per_stage']}); FL model `{document['model']}`; "
        f"{document['images']} private images per row, labels inferred.",
        "",
        "PSNR in dB, mean ± std over the images (SSIM). LPIPS: "
        + (document["lpips"] or "see the runs").rstrip(".")
        + ".",
        "",
    ]
    if document["task_model"]:
        lines += [
            f"Label-permuted pair: FL model trained {document['task_model']['epochs']} epochs on the permuted task "
            f"(held-out accuracy {document['task_model']['heldout_accuracy']:.3f}); label mapping in brackets; "
            "`gen. class acc.` = share of GIFD's images whose generator class was the digit of their inferred task "
            "label; `labels` below 1 at B=4 come from label inference on this trained model.",
            "",
        ]
    lines += [
        "| pair | B | GIFD | latent-only | pixel | labels |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, pair in PAIRS.items():
        for bs in (1, 4):
            pixel = by.get((name, None, "pixel", bs))
            for mapping in pair.mappings or (None,):
                gifd, latent = by.get((name, mapping, "gifd", bs)), by.get((name, mapping, "latent-only", bs))
                present = [r for r in (gifd, latent, pixel) if r is not None]
                if not present:
                    continue
                label = name if mapping is None else f"{name} [{mapping}]"
                if gifd is not None and "generator_class_accuracy" in gifd:
                    label += f" (gen. class acc. {gifd['generator_class_accuracy']:.2f})"
                lines.append(
                    f"| {label} | {bs} | {fmt(gifd)} | {fmt(latent)} | "
                    f"{fmt(pixel) if mapping in (None, 'identity') else '(as above)'} | "
                    f"{np.mean([r['label_accuracy'] for r in present]):.2f} |"
                )
    lines += ["", "## Margins (paired over the same images: mean ± std dB, wins of the first / images)", ""]
    lines += ["| claim | row | margin |", "| --- | --- | --- |"]

    def margin(m: dict[str, Any] | None) -> str:
        return "–" if m is None else f"{m['mean']:+.2f} ± {m['std']:.2f} ({m['wins']}/{m['n']})"

    for e in document["claims"]["a_gifd_vs_latent_only"]:
        row = e["pair"] + (f" [{e['label_mapping']}]" if e["label_mapping"] else "") + f" B={e['batch_size']}"
        lines.append(f"| (a) GIFD − latent-only | {row} | {margin(e['psnr_gain_db'])} |")
    for e in document["claims"]["b_ood"]:
        row = f"{e['pair']} B={e['batch_size']}"
        lines.append(f"| (b) GIFD − latent-only, OOD | {row} | {margin(e['vs_latent_only_db'])} |")
        lines.append(f"| (b) GIFD − pixel, OOD | {row} | {margin(e['vs_pixel_db'])} |")
    for e in document["claims"]["c_label_mapping"]:
        row = f"{e['attack']} B={e['batch_size']}"
        lines.append(f"| (c) auto − identity mapping | {row} | {margin(e['auto_minus_identity_db'])} |")
        lines.append(f"| (c) true − identity mapping | {row} | {margin(e['true_minus_identity_db'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps-per-stage", type=count(1), default=50)
    parser.add_argument(
        "--stages", type=count(1, 4), default=4, help="GIFD stages, 1 to 4 (the others get stages × steps)"
    )
    parser.add_argument("--restarts", type=count(1), default=2)
    parser.add_argument("--images", type=count(1), default=16, help="private images per pair (a multiple of 4)")
    parser.add_argument("--pairs", nargs="+", action=Distinct, choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--batch-sizes", nargs="+", type=count(1), action=Distinct, choices=(1, 4), default=[1, 4])
    parser.add_argument("--model", default="convnet", choices=sorted(MODELS), help="FL model")
    parser.add_argument("--train-epochs", type=count(1), default=2, help="training of the label-permuted task's model")
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=Path, default=Path("bench-out/ood.jobs.jsonl"))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="summary JSON (default: benchmarks/results/ood.json when the whole grid is selected; a subset run "
        "writes no summary unless given)",
    )
    parser.add_argument("--md", type=Path, default=None, help="Markdown table (default: --out with .md)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing summary (--out, --md)")
    args = parser.parse_args()
    if args.images % 4:
        parser.error(f"--images must be a multiple of 4 (batch sizes 1 and 4), got {args.images}.")
    for name in args.pairs:  # before any job: a pair short of images would stop the run after the others' jobs
        available = len(load_dataset(PAIRS[name].dataset, "heldout")[0])
        if args.images > available:
            parser.error(f"--images {args.images} is more than the {available} images of the pair '{name}'.")
    jobs = job_list(args.pairs, args.batch_sizes)
    whole = job_list(list(PAIRS), [1, 4])
    # the summary's files, known before any job runs: none for part of the grid without --out
    out = args.out or (RESULTS / "ood.json" if len(jobs) == len(whole) else None)
    if out is not None:
        refuse_to_replace(parser, [out, args.md or out.with_suffix(".md")], args.overwrite, appended=[args.jobs])
    logging.basicConfig(level=logging.WARNING)
    fingerprint = settings_fingerprint(args)
    results = ResultsFile(args.jobs)
    with results.lock("benchmarks/ood.py", "another --jobs file"):  # one writer per jobs file
        # repair: an interrupted write's torn line is cut, and a hand-damaged record is named and run again
        jobs_read = results.latest(repair=True, check=lambda record: shape_problem(record, JOB_SHAPE))
        if not jobs_read and results.path.is_file() and results.path.read_text(errors="replace").strip():
            raise ValueError(
                f"'{args.jobs}' holds lines but no job of this script (another tool's results file?): give --jobs a "
                "file of its own."
            )
        done = {k: r for k, r in jobs_read.items() if r.get("settings") == fingerprint}
        todo = [job for job in jobs if "|".join(map(str, job)) not in done]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} jobs already done; {len(todo)} to run", file=sys.stderr)
        task_weights, task_record = None, None
        if "label-permuted" in args.pairs:
            task_weights, task_record = train_task_model(args.model, args.train_epochs, args.seed)
        priors: dict[str, tuple[LayeredGenerator, dict[str, Any]]] = {}
        for job in todo:
            key = "|".join(map(str, job))
            prior_name = PAIRS[job[0]].prior
            if prior_name not in priors:
                priors[prior_name] = load_prior(prior_name, args.device)
            start = time.perf_counter()
            run = run_job(args, job, priors[prior_name][0], prior_name, task_weights)
            results.append({"type": "job", "job_id": key, "settings": fingerprint, "run": run})
            print(
                f"{key}: PSNR {run['psnr']:.2f} ± {run['psnr_std']:.2f} dB, SSIM {run['ssim']:.3f}, labels "
                f"{run['label_accuracy']:.2f}, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            done[key] = {"run": run}
    if out is None:
        print(
            f"{len(jobs)} of the grid's {len(whole)} jobs selected: no summary written (a run over the whole grid, "
            "which skips the finished jobs, writes it; or pass --out for this subset's)",
            file=sys.stderr,
        )
        return
    runs = [done["|".join(map(str, job))]["run"] for job in jobs if "|".join(map(str, job)) in done]
    for name in {PAIRS[p].prior for p in args.pairs} - set(priors):
        priors[name] = load_prior(name, "cpu")
    commit = git_commit()  # with -dirty when tracked files differed from it
    lpips_reasons = {r["lpips_unavailable_reason"] for r in runs if r["lpips"] is None}
    document = {
        "schema": SCHEMA,
        "title": "OOD and label-inconsistent priors",
        "threat_model": THREAT_MODEL,
        "command": "python benchmarks/ood.py " + " ".join(sys.argv[1:]),
        "git_commit": commit or None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": environment(args.seed, args.device),
        "budget": {
            "steps_per_stage": args.steps_per_stage,
            "stages": args.stages,
            "total_steps": args.steps_per_stage * args.stages,
            "num_restarts": args.restarts,
        },
        "model": args.model,
        "images": args.images,
        "lpips": "unavailable: " + "; ".join(sorted(lpips_reasons)) if lpips_reasons else None,
        "run_devices": sorted({r.get("device", args.device) for r in runs}),
        "pairs": {name: vars(PAIRS[name]) for name in args.pairs},
        "priors": {name: info for name, (_, info) in priors.items()},
        "task_model": task_record,
        "task_label_of_digit": list(TASK_LABEL_OF_DIGIT),
        "complete": len(runs) == len(whole),
        "runs": runs,
        "claims": claims(runs),
    }
    write_json_atomic(out, document)
    md = args.md or out.with_suffix(".md")
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown(document))
    tmp.replace(md)
    print(markdown(document))


if __name__ == "__main__":
    run_script(main)
