"""
FedAvg: how much GIFD, latent-only and pixel-space (Inverting Gradients) attacks recover from a client's weight
update after several local steps, replaying the local training against treating the update as one gradient.

The FL model is a ReLU ConvNet *mid-training*: it is first trained for a few FedAvg rounds on the public split
(``client_update`` on clients of the 4,000 training digits, the server averaging their updates), as an audit meets
it. Each client then holds 4 or 8 held-out digits (images 200–215, used by no other benchmark, test or default) and
runs one of the local trainings of :data:`SETTINGS`. Every attack gets the quick profile's budget (2 restarts ×
200 steps; GIFD 4 stages × 50) and the true labels, so that the rows measure the inversion of the update; label
inference from the update is scored on its own (``label_accuracy``, the labels that ``infer_labels`` recovers).

Methods: *replay* (the attack is given the client's ``LocalTraining``; an unknown mini-batch order replays each step
on all the client's data), *naive* (the update treated as a FedSGD gradient, i.e. ``update / (lr · steps)``: the
cosine matching loss is blind to the scale) and, for an unknown order, *epoch-steps* (the replay merged into one
full-batch step per epoch at the learning rate times the steps of an epoch: ``simulation_steps=epochs``).

Each run goes through :func:`~art_gifd.experiment.attack_batches`, the loop of the demo, the audit and the bench, so
the client batch at position ``first`` of the private digits gets the seeds it gets there (``batch_seed(seed, first)``
for the client's shuffle and the attack's starts).

Runs are appended to one JSONL file per client-data size (flushed and fsynced, skipped when already present), so an
interrupted run resumes where it stopped. A ``--runs`` folder holds the runs of one attack budget, FL model and
number of torch threads (its report covers one): a run with other ``--steps-per-stage``, ``--restarts``, ``--rounds``
or ``--threads`` is refused, so that a trial does not land in the committed ``benchmarks/results/fedavg_runs``; give
it another ``--runs``. The report, the label table and the memory table are replaced only with ``--overwrite``::

    python benchmarks/fedavg.py --sizes 4 &  python benchmarks/fedavg.py --sizes 8     # two processes, one per core
    python benchmarks/fedavg.py --report --overwrite    # -> benchmarks/results/fedavg.json and fedavg.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_gifd import LocalTraining, client_update
from art_gifd.attacks.registry import Budget
from art_gifd.cli import SEED, THREADS, Distinct, count, output_folder, run_script
from art_gifd.data import load_mnist32
from art_gifd.experiment import attack_batches, batch_seed
from art_gifd.federated import TargetModel
from art_gifd.labels import infer_labels
from art_gifd.metrics import label_accuracy
from art_gifd.models import convnet, make_classifier
from art_gifd.priors import load_default_prior
from art_gifd.store import (
    NULL,
    NUMBER,
    ResultsFile,
    environment,
    write_bytes_atomic,
    write_json_atomic,
)
from benchmarks.common import (
    git_commit,
    mean_sem,
    other_settings,
    read_json_file,
    read_runs,
    refuse_to_replace,
    refuse_unread_options,
    threads_text,
)

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "fedavg_runs"
#: The server's local learning rate.
LEARNING_RATE = 0.05
#: Held-out digits the clients hold (index range into the held-out split).
PRIVATE = (200, 216)
ATTACKS = ("gifd", "latent-only", "pixel")
#: ``epoch-steps``: for an unknown order only, the replay merged into one full-batch step per epoch.
METHODS = ("replay", "naive", "epoch-steps")


def settings(size: int, seed: int) -> dict[str, LocalTraining]:
    """The local trainings of the table, for a client with ``size`` samples (``seed``: the client's own shuffle)."""
    half = size // 2
    return {
        "1 step": LocalTraining(LEARNING_RATE, steps=1),
        "2 steps": LocalTraining(LEARNING_RATE, steps=2),
        "5 steps": LocalTraining(LEARNING_RATE, steps=5),
        "10 steps": LocalTraining(LEARNING_RATE, steps=10),
        "2 epochs x 2 batches, known order": LocalTraining(
            LEARNING_RATE, epochs=2, batch_size=half, shuffle_seed=1000 + seed
        ),
        "2 epochs x 2 batches, unknown order": LocalTraining(LEARNING_RATE, epochs=2, batch_size=half),
    }


def trained_model(rounds: int, clients: int = 4, per_client: int = 64) -> tuple[Any, float]:
    """
    The ConvNet after ``rounds`` FedAvg rounds on the public training digits (4 clients of 64 digits, one epoch in
    mini-batches of 16 at learning rate 0.1), and its accuracy on the held-out digits outside the private range.
    """
    x_pub, y_pub = load_mnist32("train")
    classifier = make_classifier(convnet(seed=0), (1, 32, 32))
    training = LocalTraining(0.1, epochs=1, batch_size=16)
    rng = np.random.default_rng(0)
    for round_ in range(rounds):
        updates = []
        for client in range(clients):
            index = rng.choice(len(x_pub), per_client, replace=False)
            updates.append(client_update(classifier, x_pub[index], y_pub[index], training, seed=round_ * 100 + client))
        with torch.no_grad():
            for p, *parts in zip(classifier.model.parameters(), *updates, strict=True):
                p -= torch.as_tensor(np.mean(parts, axis=0))
    x_test, y_test = load_mnist32("heldout")
    keep = np.r_[0 : PRIVATE[0], PRIVATE[1] : len(x_test)]
    accuracy = float((classifier.predict(x_test[keep]).argmax(axis=1) == y_test[keep]).mean())
    return classifier, accuracy


#: The fields that identify a run (for resuming).
RUN_KEY = ("setting", "size", "attack", "method", "first", "seed", "steps_per_stage", "restarts", "rounds")
#: Runs recorded before their restarts and FL-model rounds were: the defaults, which made them (``fedavg.md``).
LEGACY_KEY_VALUES = {"restarts": 2, "rounds": 30}


#: What a run record holds: every field the report reads (``command`` since runs record the command that made them).
#: Records of other programs (or damaged ones) are skipped with a warning.
_RECORD = {
    "setting": str,
    "size": int,
    "attack": str,
    "method": str,
    "first": int,
    "seed": int,
    "steps_per_stage": int,
    "restarts?": int,
    "rounds?": int,
    "local_steps": int,
    "psnr": float,
    "cpu_seconds": float,
    "threads": int,
    "label_accuracy": float,
    "model_accuracy": float,
    "commit?": (str, NULL),
    "command?": str,
}
#: The rows of ``labels.json`` (``--labels``) and ``memory.json`` (``--memory``) as the report reads them.
_LABEL_ROWS = [
    {"model": str, "size": int, "setting": str, "label_accuracy": NUMBER, "exact_share": NUMBER, "commit?": (str, NULL)}
]
_MEMORY_ROWS = [
    {
        "local_steps": int,
        "size": int,
        "restarts": int,
        "cpu_seconds": NUMBER,
        "measured_bytes": NUMBER,
        "estimated_bytes": NUMBER,
    }
]


def run_key(record: dict[str, Any]) -> tuple:
    """The key of a run record as :func:`runs_of` returns it."""
    return tuple(record[k] for k in RUN_KEY)


def runs_of(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """
    The runs of one runs file, with the key fields of older records filled in; a record of an attack or method this
    script does not know is skipped with a warning naming it.
    """
    return [{**LEGACY_KEY_VALUES, **r} for r in read_runs(path, _RECORD, repair=repair, check=_unknown)]


def _unknown(record: dict[str, Any]) -> str | None:
    """An attack or method of a run that this script does not know, or ``None``."""
    for field, known in (("attack", ATTACKS), ("method", METHODS)):
        if record[field] not in known:
            return f"a run of {field} {record[field]!r}, not one of {known}"
    return None


@dataclass
class _Target:
    """What every run of one invocation attacks: the model mid-training, the prior, the private images, the budget."""

    classifier: Any
    accuracy: float
    prior: Any
    target: TargetModel
    x: np.ndarray
    y: np.ndarray
    budget: Budget
    commit: str


def run(args: argparse.Namespace) -> None:
    """Run every missing run of the selected sizes, attacks and seeds."""
    torch.set_num_threads(args.threads)
    classifier, accuracy = trained_model(args.rounds)
    print(f"FL model after {args.rounds} FedAvg rounds: held-out accuracy {accuracy:.3f}", flush=True)
    x_all, y_all = load_mnist32("heldout")
    first = PRIVATE[0]
    context = _Target(
        classifier,
        accuracy,
        load_default_prior(),
        TargetModel(classifier),
        x_all[first : first + args.images],
        y_all[first : first + args.images],
        Budget(steps_per_stage=args.steps_per_stage, stages=4, num_restarts=args.restarts),
        git_commit(),
    )
    for size in args.sizes:
        store = ResultsFile(args.runs / f"size{size}.jsonl")
        with store.lock("benchmarks/fedavg.py", "another --runs folder"):
            done = {run_key(r) for r in runs_of(store.path, repair=True)}
            for first, seed in itertools.product(range(0, len(context.x) - size + 1, size), args.seeds):
                for record in _runs_of_batch(args, context, size, first, seed, done):
                    store.append(record)
                    print(
                        f"N={size} first={first} seed={seed} {record['setting']!r} {record['attack']} "
                        f"{record['method']}: {record['psnr']:.2f} dB, {record['cpu_seconds']:.1f} cpu s",
                        flush=True,
                    )


def _runs_of_batch(
    args: argparse.Namespace, context: _Target, size: int, first: int, seed: int, done: set[tuple]
) -> Iterator[dict[str, Any]]:
    """The records of the runs not yet ``done`` on the client batch at ``first``, each as soon as it finishes."""
    x, y = context.x[first : first + size], context.y[first : first + size]
    for setting, training in settings(size, seed).items():
        # The client's update as attack_batches computes it (same seed), for the label inference score.
        update = client_update(context.classifier, x, y, training, seed=batch_seed(seed, first))
        target = context.target
        inferred = infer_labels(target.as_gradient_list(update), target.module, target.nb_classes, size)
        for attack_name, method in itertools.product(args.attacks, METHODS):
            if method == "naive" and training.num_steps(size) == 1:
                continue  # one full-batch step: the update is lr × the gradient, both views agree
            if method == "epoch-steps" and training.order_known:
                continue
            key = (*(setting, size, attack_name, method, first, seed), args.steps_per_stage, args.restarts, args.rounds)
            if key in done:
                continue
            cpu, wall = time.process_time(), time.perf_counter()
            ((_, scores, result, _),) = attack_batches(
                context.classifier,
                x,
                y,
                attack_name,
                context.prior,
                context.budget,
                size,
                seed,
                labels_known=True,
                training=training,
                replay_training=method != "naive",
                attack_params={"simulation_steps": training.epochs} if method == "epoch-steps" else None,
                first_index=first,
            )
            yield {
                **dict(zip(RUN_KEY, key, strict=True)),
                "local_steps": training.num_steps(size),
                "order_known": training.order_known,
                "psnr": scores["psnr"],
                "ssim": scores["ssim"],
                "per_image_psnr": scores["per_image"]["psnr"],
                "matching_loss": result.best_loss,
                "cpu_seconds": time.process_time() - cpu,
                "wall_seconds": time.perf_counter() - wall,
                "threads": torch.get_num_threads(),
                "label_accuracy": label_accuracy(inferred.cpu().numpy(), y),
                "model_accuracy": context.accuracy,
                "commit": context.commit,
                "command": args.command,
            }


MEMORY_PROBE = """
import json, resource, sys, time
import torch
from art_gifd.attacks.core import GradientMatcher
from art_gifd.federated import LocalTraining, TargetModel, simulation_memory
from art_gifd.models import convnet, make_classifier
steps, size, restarts = (int(a) for a in sys.argv[1:4])
torch.set_num_threads(1)
target = TargetModel(make_classifier(convnet(seed=0), (1, 32, 32)))
training = LocalTraining(0.05, steps=steps)
observed = [torch.randn(s) for s in target.shapes]
warm = GradientMatcher(target, observed, torch.zeros(1, dtype=torch.long), "cosine", training=LocalTraining(0.05))
warm.loss(torch.rand(2, 1, 32, 32, requires_grad=True)).sum().backward()  # libraries and kernels loaded, small peak
matcher = GradientMatcher(target, observed, torch.arange(size) % 10, "cosine", training=training)
images = torch.rand(restarts * size, 1, 32, 32, requires_grad=True)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
start = time.process_time()
matcher.loss(images).sum().backward()
cpu = time.process_time() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"local_steps": steps, "size": size, "restarts": restarts, "cpu_seconds": cpu,
                  "measured_bytes": max(peak - before, 0),
                  "estimated_bytes": simulation_memory(target, matcher.plan, restarts)}))
"""


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Peak memory and CPU time of one matching-loss evaluation with its backward pass (one search step), against local
    steps, each in a fresh process (ConvNet, full-batch SGD steps, 8 samples, ``--restarts`` restarts), beside the
    estimate that the attacks check before a search.
    """
    import subprocess

    rows = []
    for steps in (1, 2, 5, 10):
        probe = [sys.executable, "-c", MEMORY_PROBE, str(steps), "8", str(args.restarts)]
        out = subprocess.run(probe, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write_json_atomic(args.runs / "memory.json", rows)
    return rows


#: Held-out digits from which the label-inference measurement draws its random client batches.
LABEL_POOL = (300, 700)


def labels(args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    How often ``infer_labels`` recovers a client's labels from its update, against local steps, on the trained
    ConvNet of :func:`trained_model`, the untrained ConvNet and DLG's sigmoid LeNet: 30 random client batches of
    held-out digits (``LABEL_POOL``) per row, the same batches in every row.
    """
    from art_gifd.federated import client_gradients
    from art_gifd.models import lenet

    torch.set_num_threads(args.threads)
    commit = git_commit()
    trained, accuracy = trained_model(args.rounds)
    models = {
        f"ConvNet after {args.rounds} FedAvg rounds (accuracy {accuracy:.2f})": trained,
        "ConvNet, untrained": make_classifier(convnet(seed=0), (1, 32, 32)),
        "sigmoid LeNet (DLG init), untrained": make_classifier(lenet(seed=0), (1, 32, 32)),
    }
    x_pool, y_pool = load_mnist32("heldout")
    x_pool, y_pool = x_pool[LABEL_POOL[0] : LABEL_POOL[1]], y_pool[LABEL_POOL[0] : LABEL_POOL[1]]
    rows = []
    for model_name, classifier in models.items():
        target = TargetModel(classifier)
        for size in args.sizes:
            trainings = {"FedSGD gradient": None, **settings(size, 0)}
            for setting, training in trainings.items():
                if setting.endswith("unknown order"):
                    continue  # the update does not depend on whether the attacker knows the order
                scores = []
                for trial in range(30):
                    index = np.random.default_rng(trial).choice(len(x_pool), size, replace=False)
                    x, y = x_pool[index], y_pool[index]
                    if training is None:
                        update = client_gradients(classifier, x, y)
                    else:
                        update = client_update(classifier, x, y, training, seed=trial)
                    observed = target.as_gradient_list(update)
                    scores.append(label_accuracy(infer_labels(observed, target.module, 10, size).numpy(), y))
                rows.append(
                    {
                        "model": model_name,
                        "size": size,
                        "setting": setting.replace(", known order", ""),
                        "label_accuracy": float(np.mean(scores)),
                        "exact_share": float(np.mean(np.asarray(scores) == 1.0)),
                        "commit": commit,
                    }
                )
                print(rows[-1], flush=True)
    write_json_atomic(args.runs / "labels.json", rows)
    return rows


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, setting, attack): replay and naive PSNR, their paired difference, cost, label accuracy."""
    groups: dict[tuple, dict[str, dict[tuple, dict[str, Any]]]] = {}
    for r in runs:
        key = (r["size"], r["setting"], r["attack"])
        groups.setdefault(key, {}).setdefault(r["method"], {})[(r["first"], r["seed"])] = r
    rows = []
    for (size, setting, attack), by_method in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        replay, naive = by_method.get("replay", {}), by_method.get("naive", {})
        row: dict[str, Any] = {"size": size, "setting": setting, "attack": attack, "runs": len(replay)}
        if replay:
            values = list(replay.values())
            row["replay_psnr"] = mean_sem([v["psnr"] for v in values])
            row["cpu_seconds"] = float(np.mean([v["cpu_seconds"] for v in values]))
            row["local_steps"] = values[0]["local_steps"]
            row["label_accuracy"] = float(np.mean([v["label_accuracy"] for v in values]))
        if naive:
            row["naive_psnr"] = mean_sem([v["psnr"] for v in naive.values()])
            paired = [replay[k]["psnr"] - naive[k]["psnr"] for k in replay if k in naive]
            if paired:
                row["replay_minus_naive"] = (*mean_sem(paired), sum(d > 0 for d in paired), len(paired))
        rows.append(row)
    order = {name: i for i, name in enumerate(settings(4, 0))}
    return sorted(rows, key=lambda r: (r["size"], order.get(r["setting"], 99), ATTACKS.index(r["attack"])))


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The table of :func:`summarise` as Markdown."""
    commands = ", ".join(f"`{c}`" for c in header["commands"])
    if header["runs_without_command"]:  # written before runs recorded their command
        older = (
            f"{header['runs_without_command']} runs of `python benchmarks/fedavg.py` whose options were not recorded"
        )
        commands = f"{commands} and {older}" if commands else older
    threads = threads_text(header["threads"])
    lines = [
        "# FedAvg: inverting a client's weight update after several local steps",
        "",
        f"Runs: {commands}; label and memory tables: `--labels`, `--memory`; this file: `{header['command']}`. "
        f"Attack budget of the runs: restarts {header['restarts']}, steps per stage {header['steps_per_stage']} "
        f"(GIFD's 4 stages; the other attacks {4 * header['steps_per_stage']} steps per restart). "
        f"Runs at commit `{header['git_commit']}` on "
        f"{header['device']}, summarised {header['date']}. "
        f"FL model: ReLU ConvNet after {header['rounds']} FedAvg rounds on the public digits (held-out accuracy "
        f"{header['model_accuracy']:.3f}). Private data: held-out digits {PRIVATE[0]}–"
        f"{PRIVATE[0] + header['images'] - 1}; "
        f"local learning rate {LEARNING_RATE}, SGD; labels given to the attacks. PSNR in dB (Hungarian-matched), "
        f"mean ± s.e.m. over batch × seed; Δ: paired replay − naive (wins); CPU s: one replay run, {threads}; "
        "labels: fraction of the labels `infer_labels` recovers from the update (multiset).",
        "",
        "| N | local training | steps | attack | replay | naive (update as a gradient) | Δ replay − naive | CPU s "
        "(replay) | labels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rep = "{:.2f} ± {:.2f}".format(*r["replay_psnr"]) if "replay_psnr" in r else "–"
        nai = "{:.2f} ± {:.2f}".format(*r["naive_psnr"]) if "naive_psnr" in r else "= replay"
        delta = "{:+.2f} ± {:.2f} ({}/{})".format(*r["replay_minus_naive"]) if "replay_minus_naive" in r else "–"
        lines.append(
            f"| {r['size']} | {r['setting']} | {r.get('local_steps', '–')} | {r['attack']} | {rep} | {nai} | {delta} "
            f"| {r.get('cpu_seconds', float('nan')):.1f} | {r.get('label_accuracy', float('nan')):.2f} |"
        )
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> None:
    """Summarise every runs file into ``fedavg.json`` and ``fedavg.md``."""
    runs = [r for path in sorted(args.runs.glob("size*.jsonl")) for r in runs_of(path)]
    if not runs:
        raise SystemExit(f"No runs in {args.runs}: run the benchmark first.")
    models = sorted({(r["rounds"], round(r["model_accuracy"], 6)) for r in runs})
    budgets = sorted({(r["steps_per_stage"], r["restarts"], r["threads"]) for r in runs})
    if len(models) > 1 or len(budgets) > 1:
        raise SystemExit(
            f"{args.runs} holds runs of {len(models)} FL models (rounds, accuracy: {models}) and {len(budgets)} attack "
            f"budgets (steps per stage, restarts, torch threads: {budgets}): report each from its own --runs folder."
        )
    # every input is read and checked before anything is written
    label_rows = _read_table(args.runs / "labels.json", _LABEL_ROWS)
    memory_rows = _read_table(args.runs / "memory.json", _MEMORY_ROWS)
    rows = summarise(runs)
    header = {
        "benchmark": "fedavg",
        "command": "python benchmarks/fedavg.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commands": sorted({r["command"] for r in runs if "command" in r}),
        "runs_without_command": sum("command" not in r for r in runs),
        "git_commit": sorted({r["commit"] for r in runs if r.get("commit")}),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": "x86_64 CPU",
        "rounds": runs[0]["rounds"],
        "images": max(r["first"] + r["size"] for r in runs),
        "steps_per_stage": runs[0]["steps_per_stage"],
        "restarts": runs[0]["restarts"],
        "threads": runs[0]["threads"],
        "model_accuracy": runs[0]["model_accuracy"],
        "environment": environment(0, "cpu"),
    }
    order_rows = _order_rows(runs)
    document = {**header, "rows": rows, "unknown_order": order_rows, "labels": label_rows, "memory": memory_rows}
    write_json_atomic(args.out.with_suffix(".json"), document)
    text = markdown(rows, {**header, "git_commit": ", ".join(header["git_commit"])})
    text += _order_markdown(order_rows) + _labels_markdown(label_rows) + _memory_markdown(memory_rows)
    write_bytes_atomic(args.out.with_suffix(".md"), text.encode())
    print(text)
    print(f"-> {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}")


def _order_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unknown order: each step replayed on all samples against one full-batch step per epoch, paired, per cell."""
    cells: dict[tuple, dict[str, dict[tuple, float]]] = {}
    for r in runs:
        if r["setting"].endswith("unknown order"):
            cells.setdefault((r["size"], r["attack"]), {}).setdefault(r["method"], {})[(r["first"], r["seed"])] = r[
                "psnr"
            ]
    rows = []
    for (size, attack), by in sorted(cells.items(), key=lambda kv: (kv[0][0], ATTACKS.index(kv[0][1]))):
        merged = by.get("epoch-steps", {})
        if not merged:
            continue
        row = {"size": size, "attack": attack, "runs": len(merged), "epoch_steps_psnr": mean_sem(list(merged.values()))}
        for other in ("replay", "naive"):
            paired = [merged[k] - by[other][k] for k in merged if k in by.get(other, {})]
            if paired:
                row[f"minus_{other}"] = (*mean_sem(paired), sum(d > 0 for d in paired), len(paired))
        rows.append(row)
    return rows


def _section(title: str, intro: str, columns: list[str], body: list[str]) -> str:
    """A Markdown section of ``fedavg.md``: heading, one paragraph and a table of ``body`` rows."""
    header = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(["", f"## {title}", "", intro, "", *header, *body]) + "\n"


def _order_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of :func:`_order_rows`."""
    if not rows:
        return ""
    body = []
    for r in rows:
        cells = ["{:+.2f} ± {:.2f} ({}/{})".format(*r[k]) if k in r else "–" for k in ("minus_replay", "minus_naive")]
        psnr = "{:.2f} ± {:.2f}".format(*r["epoch_steps_psnr"])
        body.append(f"| {r['size']} | {r['attack']} | {psnr} | " + " | ".join(cells) + " |")
    return _section(
        "Unknown order: two approximations",
        "2 epochs × 2 mini-batches in an order the attacker does not know. *per step*: each of the 4 local steps "
        "replayed on all the client's samples (the `replay` rows above); *per epoch*: one full-batch step per epoch "
        "at twice the learning rate (`simulation_steps=2`). PSNR in dB, paired differences with s.e.m. (wins).",
        ["N", "attack", "per epoch", "per epoch − per step", "per epoch − naive"],
        body,
    )


def _read_table(path: Path, shape: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """
    The rows of a table file of ``--labels`` or ``--memory``, or ``None`` when there is none.

    :raises ValueError: Naming the file and what is wrong with it, if it is not JSON rows of ``shape``.
    """
    return (
        read_json_file(path, shape, "a table", "measure it again or move it away", "rows") if path.is_file() else None
    )


def _labels_markdown(rows: list[dict[str, Any]] | None) -> str:
    """The label-inference table of ``--labels``."""
    if not rows:
        return ""
    return _section(
        "Labels from the update (`python benchmarks/fedavg.py --labels`)",
        "`infer_labels` on 30 random client batches of held-out digits "
        f"{LABEL_POOL[0]}–{LABEL_POOL[1] - 1} per row (the same batches in every row): mean fraction of the labels "
        "recovered (multiset) and share of batches with every label right. Measured at commit "
        f"`{', '.join(sorted({str(r.get('commit')) for r in rows}))}`: the labels column of the first table is the "
        "runs' own (their commit's `infer_labels`).",
        ["model", "N", "update", "labels recovered", "batches exact"],
        [
            f"| {r['model']} | {r['size']} | {r['setting']} | {r['label_accuracy']:.3f} | {r['exact_share']:.2f} |"
            for r in rows
        ],
    )


def _memory_markdown(rows: list[dict[str, Any]] | None) -> str:
    """The memory table of ``--memory``."""
    if not rows:
        return ""
    return _section(
        "Memory and time per search step (`python benchmarks/fedavg.py --memory`)",
        "One matching-loss evaluation and its backward pass (one Adam step of the search) on the untrained ConvNet, "
        f"{rows[0]['size']} samples, {rows[0]['restarts']} restarts, full-batch SGD steps, one torch thread, each in "
        "a fresh process: peak resident memory above the process's before the call, CPU seconds, and the estimate "
        "the attacks check against the free memory before a search.",
        ["local steps", "measured MiB", "estimated MiB", "CPU s"],
        [
            f"| {r['local_steps']} | {r['measured_bytes'] / 2**20:.1f} | {r['estimated_bytes'] / 2**20:.1f} "
            f"| {r['cpu_seconds']:.3f} |"
            for r in rows
        ],
    )


_RUN_ONLY = ("--images", "--seeds", "--attacks", "--steps-per-stage")
#: Per mode, the options it does not read (the runs read all but ``--out``).
_UNREAD = {
    "--memory": (*_RUN_ONLY, "--sizes", "--rounds", "--threads", "--out"),
    "--labels": (*_RUN_ONLY, "--restarts", "--out"),
    "--report": (*_RUN_ONLY, "--sizes", "--restarts", "--rounds", "--threads"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=count(1), nargs="+", action=Distinct, default=[4, 8], help="client data sizes (default: 4 8)"
    )
    parser.add_argument("--images", type=count(1), default=16, help="private images per size (default: 16)")
    parser.add_argument("--seeds", type=SEED, nargs="+", action=Distinct, default=[0, 1])
    parser.add_argument("--attacks", nargs="+", action=Distinct, default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--steps-per-stage", type=count(1), default=50, help="GIFD steps per stage (default: 50)")
    parser.add_argument("--restarts", type=count(1), default=2)
    parser.add_argument("--rounds", type=count(1), default=30, help="FedAvg rounds that train the FL model first")
    parser.add_argument("--threads", type=THREADS, default=1, help="torch threads (default: 1)")
    parser.add_argument("--runs", type=output_folder, default=RUNS, help="folder of the runs files")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="--report: path of fedavg.json/.md without suffix (default: benchmarks/results/fedavg for the default "
        "--runs, else <runs>/fedavg)",
    )
    mode = parser.add_mutually_exclusive_group()  # each mode does one thing: a second one would be ignored
    mode.add_argument("--report", action="store_true", help="summarise the runs files, run nothing")
    mode.add_argument(
        "--memory", action="store_true", help="measure memory and time per search step (--restarts), run nothing"
    )
    mode.add_argument("--labels", action="store_true", help="measure label inference from updates, run nothing")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the report, labels.json or memory.json if it exists"
    )
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    for flag, unread in _UNREAD.items():
        if getattr(args, flag.removeprefix("--")):
            refuse_unread_options(parser, given, unread, flag)
    if any(s < 2 or s % 2 for s in args.sizes):
        parser.error("--sizes must be even numbers >= 2 (the mini-batch settings split the data in two)")
    if any(args.images % s for s in args.sizes):
        parser.error(f"--images ({args.images}) must be a multiple of every --sizes value {args.sizes}")
    args.command = shlex.join(["python", "benchmarks/fedavg.py", *(sys.argv[1:] if argv is None else argv)])
    if args.memory or args.labels:
        table = args.runs / ("memory.json" if args.memory else "labels.json")
        refuse_to_replace(parser, [table], args.overwrite, "another --runs folder")
    elif args.report:
        args.out = args.out or (RESULTS / "fedavg" if args.runs.resolve() == RUNS.resolve() else args.runs / "fedavg")
        refuse_to_replace(parser, [args.out.with_suffix(".json"), args.out.with_suffix(".md")], args.overwrite)
    else:
        private = len(load_mnist32("heldout")[0]) - PRIVATE[0]
        if args.images > private:
            parser.error(
                f"--images {args.images}: the held-out split holds {private} digits from digit {PRIVATE[0]} on"
            )
        # The report refuses a folder of several budgets or FL models, and averages the runs' CPU seconds: a run of
        # other settings belongs in a folder of its own (runs of the same settings resume).
        held = [r for path in sorted(args.runs.glob("size*.jsonl")) for r in runs_of(path)]
        settings = {
            "steps_per_stage": ("--steps-per-stage", args.steps_per_stage),
            "restarts": ("--restarts", args.restarts),
            "rounds": ("--rounds", args.rounds),
            "threads": ("--threads", args.threads),
        }
        differing = other_settings(held, settings)
        if differing:
            parser.error(f"{args.runs} holds runs of {', '.join(differing)}: give this run another --runs folder.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory:
        memory(args)
    elif args.labels:
        labels(args)
    elif args.report:
        report(args)
    else:
        run(args)


if __name__ == "__main__":
    run_script(main)
