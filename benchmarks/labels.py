"""
Label inference on trained and untrained FL models, after FedSGD and after several local steps, three rules paired on
the same client batches: the sign of the bias gradient alone, the sign with the span test (the previous method), and
``art_gifd.labels.infer_labels`` (the sign with the test of negative weight rows, the span test where that test is
refused). The two earlier rules are written out here.

Models: the ReLU ConvNet after 30 FedAvg rounds on the public digits (the FedAvg benchmark's model, accuracy 0.862), the
untrained ConvNet and the untrained sigmoid LeNet (which predicts one class for every digit). Client batches of 4 and 8
held-out digits drawn at random (seeded) from ``--pool``; label accuracy is the share of the batch's label multiset
recovered. The rules were chosen on the pool 700–899; report them on 900–999::

    .venv/bin/python benchmarks/labels.py --pool 900 1000 --batches 30 --seed 3 --overwrite

Writes ``benchmarks/results/labels.json`` and ``labels.md`` (``--out``), replacing existing ones only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from art_gifd import labels
from art_gifd.cli import SEED, count, run_script
from art_gifd.data import load_mnist32
from art_gifd.federated import LocalTraining, TargetModel, client_gradients, client_update
from art_gifd.models import convnet, lenet, make_classifier
from art_gifd.store import environment, source_commit, write_bytes_atomic, write_json_atomic

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import refuse_to_replace
from benchmarks.fedavg import trained_model

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = {
    "FedSGD": None,
    "2 epochs x mini-batches of 2": LocalTraining(0.05, epochs=2, batch_size=2, shuffle_seed=0),
    "5 steps": LocalTraining(0.05, steps=5),
    "10 steps": LocalTraining(0.05, steps=10),
}


def overlap(found: list[int], truth: list[int]) -> float:
    """Share of the true label multiset recovered."""
    return sum(min(found.count(c), truth.count(c)) for c in set(found)) / len(truth)


def sign_rule(grads: list[torch.Tensor], module: torch.nn.Module, batch_size: int) -> list[int]:
    """The first inference: the classes with a negative bias gradient, then the count estimate."""
    return _with_counts(grads, module, batch_size, span=False)


def span_rule(grads: list[torch.Tensor], module: torch.nn.Module, batch_size: int) -> list[int]:
    """The previous inference: the sign, plus the classes the span test adds, then the count estimate."""
    return _with_counts(grads, module, batch_size, span=True)


def _with_counts(grads: list[torch.Tensor], module: torch.nn.Module, batch_size: int, span: bool) -> list[int]:
    weight_index, bias_index = labels.find_classifier_head(module, 10)
    signal = labels.label_signal(grads, weight_index, bias_index).cpu().numpy()
    present = [int(c) for c in np.argsort(signal, kind="stable") if signal[c] < 0]
    margins = labels.span_margins(grads, weight_index, bias_index, batch_size) if span else None
    if margins is not None:
        present = labels.add_span_classes(present, margins, batch_size)
    return labels.labels_for_classes(signal, present, batch_size)


MODELS = {
    "ConvNet after 30 FedAvg rounds": lambda: trained_model(30)[0],
    "ConvNet, untrained": lambda: make_classifier(convnet(seed=0), (1, 32, 32)),
    "sigmoid LeNet, untrained": lambda: make_classifier(lenet(seed=0), (1, 32, 32)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pool", nargs=2, type=count(0, 1000), default=[900, 1000], help="held-out digit range of the batches"
    )
    parser.add_argument("--batches", type=count(2), default=30, help="client batches per row (at least 2: an s.e.m.)")
    parser.add_argument("--seed", type=SEED, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "labels", help="path of labels.json/.md without suffix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing labels.json/.md")
    args = parser.parse_args()
    if args.pool[1] - args.pool[0] < 8:
        parser.error(f"--pool {args.pool[0]} {args.pool[1]}: give a range of at least 8 digits (a batch of 8).")
    refuse_to_replace(parser, [args.out.with_suffix(".json"), args.out.with_suffix(".md")], args.overwrite)
    torch.set_num_threads(1)
    x_all, y_all = load_mnist32("heldout")
    x_pool, y_pool = x_all[args.pool[0] : args.pool[1]], y_all[args.pool[0] : args.pool[1]]
    rng = np.random.default_rng(args.seed)
    rows = []
    for model_name, build in MODELS.items():
        classifier = build()
        module = TargetModel(classifier).module
        for size in (4, 8):
            for protocol, training in PROTOCOLS.items():
                scores: dict[str, list[float]] = {"sign_rule": [], "span_rule": [], "rows_rule": []}
                for _ in range(args.batches):
                    index = rng.choice(len(x_pool), size, replace=False)
                    x, y = x_pool[index], y_pool[index]
                    if training is None:
                        update = client_gradients(classifier, x, y)
                    else:
                        update = client_update(classifier, x, y, training, seed=0)
                    grads = [torch.as_tensor(a) for a in update]
                    truth = sorted(int(v) for v in y)
                    scores["sign_rule"].append(overlap(sign_rule(grads, module, size), truth))
                    scores["span_rule"].append(overlap(span_rule(grads, module, size), truth))
                    found = labels.infer_labels(grads, module, 10, size)
                    scores["rows_rule"].append(overlap(sorted(int(v) for v in found), truth))
                delta = np.array(scores["rows_rule"]) - np.array(scores["span_rule"])
                rows.append(
                    {
                        "model": model_name,
                        "batch_size": size,
                        "protocol": protocol,
                        **{key: float(np.mean(values)) for key, values in scores.items()},
                        "delta": float(delta.mean()),
                        "delta_sem": float(delta.std(ddof=1) / np.sqrt(len(delta))),
                        "wins": int((delta > 0).sum()),
                        "losses": int((delta < 0).sum()),
                        "batches": args.batches,
                    }
                )
                print(rows[-1], flush=True)
    command = (
        f"python benchmarks/labels.py --pool {args.pool[0]} {args.pool[1]} --batches {args.batches} --seed {args.seed}"
        + (" --overwrite" if args.overwrite else "")
    )
    header = {
        "command": command,
        "commit": source_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": environment(args.seed, "cpu"),
    }
    write_json_atomic(args.out.with_suffix(".json"), {"header": header, "rows": rows})
    lines = [
        "# Label inference: negative weight rows + sign rule against the earlier rules",
        "",
        f"`{command}` at commit `{(header['commit'] or {}).get('commit', 'unknown')[:12]}`, CPU, {header['date']}. "
        f"Held-out digits {args.pool[0]}–{args.pool[1] - 1} (the rules were chosen on 700–899); {args.batches} random "
        "client batches per row, paired; label accuracy = share of the label multiset recovered. Rules: the sign of "
        "the bias gradient alone; the sign plus the span test (the previous `infer_labels`); the sign plus the classes "
        "whose weight-gradient row has a negative entry, the span test where that test is refused (`infer_labels` "
        "now). Δ = rows − span ± s.e.m. (wins / losses).",
        "",
        "| model | B | local training | sign | span + sign | rows + sign | Δ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['protocol']} | {r['sign_rule']:.3f} | {r['span_rule']:.3f} | "
            f"{r['rows_rule']:.3f} | {r['delta']:+.3f} ± {r['delta_sem']:.3f} ({r['wins']}/{r['losses']}) |"
        )
    write_bytes_atomic(args.out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    run_script(main)
