"""
Two images that share a label: how much worse GIFD recovers them than the same images batched with a partner of
another label, and why.

Every image of :data:`PAIRS` is attacked twice at B=2, once beside a partner of its own label and once beside one of
another label (each image appears exactly once in each role), with the same seeds and labels given, so the paired
difference per image isolates what sharing a label costs. Two methods attack every pair: our GIFD at its defaults
and the plain-loop reference of ``benchmarks/speed.py`` (the paper's protocol), so the cost can be told apart from a
weakness of our search. Per batch the script also records the PSNR of the batch's mean image (the sum of the two
reconstructions against the sum of the originals, which is what the classifier head's gradient determines when the
labels are equal) and the ratio of the second to the first singular value of the head's gradient ``[∇W, ∇b]``: for a
shared label it is the only part of the head's gradient that tells the two images apart.

The images are the tuning split of the digit cases of ``benchmarks/cases.py`` (held-out digits 400–415); no default is
chosen from this run::

    python benchmarks/shared_labels.py --overwrite  # -> benchmarks/results/shared_labels.json and .md

Each finished run is appended to ``--runs`` (a JSONL file) as it ends, and a rerun skips the runs it holds, so an
interrupted run loses nothing; the runs are keyed by their case, method, pair, seed and steps, and the report holds
only those of this command. An existing report is replaced only with ``--overwrite`` (checked before any run).
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

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_gifd import GIFDAttack
from art_gifd.cli import SEED, THREADS, Distinct, count, output_file, run_script
from art_gifd.metrics import evaluate_batch, psnr
from art_gifd.store import ResultsFile, environment, source_commit, write_bytes_atomic, write_json_atomic
from benchmarks.cases import CASES
from benchmarks.common import mean_sem, read_runs, refuse_to_replace
from benchmarks.speed import Case, Protocol, reference_gifd

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "shared_labels"
#: Pairs of positions in the tuning split (labels 1 0 1 9 3 8 3 0 4 1 9 1 7 4 5 4): each image once beside a partner
#: of its own label (``same``) and once beside a partner of another label (``different``).
PAIRS = {
    "same": [(0, 2), (4, 6), (13, 15), (3, 10)],
    "different": [(0, 4), (2, 6), (13, 3), (15, 10)],
}
#: ``gifd``: :class:`~art_gifd.GIFDAttack` at its defaults; ``reference``: the plain-loop reference of
#: ``benchmarks/speed.py`` (the paper's protocol: 4 restarts, each through every stage, equal steps per stage).
METHODS = ("gifd", "reference")
CASES_RUN = ("lenet-mnist", "convnet-mnist")


def head_spectrum(gradient: list[np.ndarray]) -> float:
    """Second over first singular value of the classifier head's gradient (its weight and bias, the last two)."""
    head = np.concatenate([gradient[-2], gradient[-1][:, None]], axis=1)
    values = np.linalg.svd(head, compute_uv=False)
    return float(values[1] / values[0])


def attack_pair(method: str, case: Case, seed: int, steps: int) -> np.ndarray:
    """One method's reconstruction of a pair: ``"gifd"`` (our attack at its defaults) or ``"reference"``."""
    if method == "reference":
        protocol = Protocol(4, steps, 4, 0.1, 0.2, 1e-4, 0.0, seed)
        return reference_gifd(case, protocol, "cpu")
    attack = GIFDAttack(
        case.classifier, case.prior, max_stage=4, steps_per_stage=steps, batch_size=2, seed=seed, verbose=False
    )
    return attack.reconstruct(case.gradient, case.y).images


def _key(record: dict[str, Any]) -> tuple:
    return (record["case"], record["method"], record["kind"], tuple(record["pair"]), record["seed"], record["steps"])


#: What a runs-file record holds (records of other programs, or damaged ones, are skipped with a warning).
_RECORD = {
    "case": str,
    "method": str,
    "kind": str,
    "pair": [int],
    "labels": [int],
    "seed": int,
    "steps": int,
    "per_image_psnr": [float],
    "mean_image_psnr": float,
}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Attack every pair of both digit cases with every method under every seed; one record per batch, method, seed."""
    torch.set_num_threads(args.threads)
    store = ResultsFile(args.runs)
    held = {_key(r): r for r in read_runs(store.path, _RECORD, repair=True)}
    records = []
    for name in args.cases:
        spec = CASES[name]
        classifier, prior = spec.classifier(), spec.load_prior()
        x_all, y_all = spec.images("tune", 16)
        for kind, pairs in PAIRS.items():
            for pair in pairs:
                x, y = x_all[list(pair)], y_all[list(pair)]
                if (kind == "same") != (y[0] == y[1]):
                    raise AssertionError(f"pair {pair} of {name} has labels {y.tolist()}, not a '{kind}' pair")
                gradient = spec.gradient(classifier, x, y)
                spectrum = head_spectrum(gradient)
                case = Case(classifier, prior, spec.prior, spec.description, x, y, gradient)
                for seed in args.seeds:
                    for method in METHODS:
                        key = (name, method, kind, tuple(pair), seed, args.steps)
                        if key in held:
                            records.append(held[key])
                            continue
                        cpu = time.process_time()
                        images = attack_pair(method, case, seed, args.steps)
                        cpu = time.process_time() - cpu
                        scores = evaluate_batch(images, x, y, y)
                        matched = images[np.asarray(scores["assignment"])]  # in the originals' order
                        mean_psnr = psnr(matched.mean(axis=0, keepdims=True), x.mean(axis=0, keepdims=True), (0, 1))
                        record = {
                            "case": name,
                            "method": method,
                            "kind": kind,
                            "pair": list(pair),
                            "labels": y.tolist(),
                            "seed": seed,
                            "steps": args.steps,
                            "per_image_psnr": scores["per_image"]["psnr"],
                            "mean_image_psnr": float(mean_psnr[0]),
                            "head_s2_over_s1": spectrum,
                            "cpu_seconds": cpu,
                        }
                        store.append(record)  # an interrupted run resumes after the last finished record
                        records.append(record)
                        print(
                            f"{name} {method} {kind} {list(pair)} {y.tolist()} seed {seed}: "
                            f"{[round(v, 2) for v in scores['per_image']['psnr']]} dB, "
                            f"mean image {mean_psnr[0]:.2f} dB",
                            flush=True,
                        )
    return records


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Per case and method: image PSNR beside a same-label and a different-label partner, paired per image and seed;
    per case, our attack against the reference on the same images, seeds and partners.
    """
    psnr_of: dict[tuple[str, str, str], dict[tuple[int, int], float]] = {}
    extra: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in records:
        key = (r["case"], r["method"], r["kind"])
        for position, value in zip(r["pair"], r["per_image_psnr"], strict=True):
            psnr_of.setdefault(key, {})[(position, r["seed"])] = value
        extra.setdefault(key, {"mean": [], "spectrum": []})
        extra[key]["mean"].append(r["mean_image_psnr"])
        extra[key]["spectrum"].append(r["head_s2_over_s1"])
    rows = []
    for name, method in dict.fromkeys((r["case"], r["method"]) for r in records):
        same, other = psnr_of[(name, method, "same")], psnr_of[(name, method, "different")]
        keys = sorted(same)
        diffs = [same[k] - other[k] for k in keys]
        row: dict[str, Any] = {"case": name, "method": method, "images_x_seeds": len(keys)}
        for kind, values in (("same", same), ("different", other)):
            row[f"{kind}_psnr"] = mean_sem([values[k] for k in keys])
            row[f"{kind}_mean_image_psnr"] = mean_sem(extra[(name, method, kind)]["mean"])
            spectrum = extra[(name, method, kind)]["spectrum"]
            row[f"{kind}_head_s2_over_s1"] = [float(np.min(spectrum)), float(np.max(spectrum))]
        row["paired_diff"] = mean_sem(diffs)
        row["wins"] = int(sum(d > 0 for d in diffs))
        if method != "reference" and (name, "reference", "same") in psnr_of:
            for kind in ("same", "different"):
                ours, ref = psnr_of[(name, method, kind)], psnr_of[(name, "reference", kind)]
                vs = [ours[k] - ref[k] for k in keys]
                row[f"{kind}_vs_reference"] = mean_sem(vs)
                row[f"{kind}_wins_vs_reference"] = int(sum(d > 0 for d in vs))
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The summary as Markdown."""
    lines = [
        "# Two images that share a label",
        "",
        f"`{header['command']}` at commit `{(header['commit'] or {}).get('commit', 'unknown')[:12]}`, CPU, one thread, "
        f"{header['date']}. B=2, labels given, 4 stages × {header['steps']} steps, held-out digits 400–415 (the "
        "tuning split); every image attacked once beside a partner of its own label and once beside one of another "
        "label, same seeds. *gifd*: `GIFDAttack` at its defaults; *reference*: the plain-loop reference of "
        "`benchmarks/speed.py` (4 restarts, each through every stage). PSNR in dB, mean ± s.e.m. over images × seeds; "
        "Δ: paired per image and seed (wins: images better beside a same-label partner). *Mean image*: PSNR of the "
        "mean of the two matched reconstructions against the mean of the two originals. *s₂/s₁*: second over first "
        "singular value of the head's gradient `[∇W, ∇b]` (range over the batches).",
        "",
        "| model | method | images × seeds | PSNR, same-label partner | PSNR, other-label partner | Δ same − other "
        "| mean image, same / other | s₂/s₁ same | s₂/s₁ other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['method']} | {r['images_x_seeds']} "
            f"| {r['same_psnr'][0]:.2f} ± {r['same_psnr'][1]:.2f} "
            f"| {r['different_psnr'][0]:.2f} ± {r['different_psnr'][1]:.2f} "
            f"| {r['paired_diff'][0]:+.2f} ± {r['paired_diff'][1]:.2f} ({r['wins']}/{r['images_x_seeds']}) "
            f"| {r['same_mean_image_psnr'][0]:.2f} / {r['different_mean_image_psnr'][0]:.2f} "
            f"| {r['same_head_s2_over_s1'][0]:.1e}–{r['same_head_s2_over_s1'][1]:.1e} "
            f"| {r['different_head_s2_over_s1'][0]:.2f}–{r['different_head_s2_over_s1'][1]:.2f} |"
        )
    versus = [r for r in rows if "same_vs_reference" in r]
    if versus:
        lines += [
            "",
            "Our attack against the reference on the same images, partners and seeds (paired, wins of ours):",
            "",
            "| model | same-label partner | other-label partner |",
            "|---|---|---|",
        ]
        for r in versus:
            cells = [
                f"{r[f'{kind}_vs_reference'][0]:+.2f} ± {r[f'{kind}_vs_reference'][1]:.2f} "
                f"({r[f'{kind}_wins_vs_reference']}/{r['images_x_seeds']})"
                for kind in ("same", "different")
            ]
            lines.append(f"| {r['case']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases", nargs="+", action=Distinct, default=list(CASES_RUN), choices=CASES_RUN, help="digit cases to run"
    )
    parser.add_argument("--seeds", nargs="+", type=SEED, action=Distinct, default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=count(1), default=100, help="Adam steps per stage")
    parser.add_argument("--threads", type=THREADS, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=OUT, help="report path without suffix")
    parser.add_argument(
        "--runs",
        type=output_file,
        default=None,
        help="JSONL file of finished runs, appended one at a time and resumed (default: "
        "bench-out/shared_labels.runs.jsonl, or next to a given --out)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report (.json and .md)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (
        Path("bench-out/shared_labels.runs.jsonl") if args.out == OUT else args.out.with_suffix(".runs.jsonl")
    )
    refuse_to_replace(
        parser, [args.out.with_suffix(".json"), args.out.with_suffix(".md")], args.overwrite, appended=[args.runs]
    )
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the pairs and write the report."""
    args = parse_args(argv)
    with ResultsFile(args.runs).lock("benchmarks/shared_labels.py", "another --runs file"):  # one writer per file
        records = run(args)
    rows = summarise(records)
    header = {
        "command": shlex.join(["python", "benchmarks/shared_labels.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": source_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": environment(args.seeds[0], "cpu"),
        "steps": args.steps,
    }
    write_json_atomic(args.out.with_suffix(".json"), {"header": header, "rows": rows, "runs": records})
    text = markdown(rows, header)
    write_bytes_atomic(args.out.with_suffix(".md"), text.encode())
    print(text)
    return rows


if __name__ == "__main__":
    run_script(main)
