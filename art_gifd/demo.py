"""
The demo: GIFD against latent-only and pixel-space attacks on two FL models, at equal step budget, on CPU.

Private images are MNIST digits the embedded prior never saw (``mnist32`` held-out split) and scikit-learn digits
(``digits32``, out of distribution for the prior). Writes ``results.json``, ``reconstructions.png`` and
``report.html`` into the output folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.attacks.registry import ATTACKS, Budget
from art_gifd.experiment import SCHEMA, Case, Experiment, results_table, run_experiment
from art_gifd.federated import LocalTraining
from art_gifd.priors.embedded import DEFAULT_PRIOR, EMBEDDED_PRIORS, load_default_prior
from art_gifd.report.figures import reconstruction_grid
from art_gifd.report.html import render_results_html
from art_gifd.store import environment, write_bytes_atomic, write_json_atomic
from art_gifd.validation import MAX_SEED, check_device, check_flag, check_integer, check_output_folder

logger = logging.getLogger(__name__)

THREAT_MODEL = (
    "An honest-but-curious server knows the FL model's architecture and current weights and observes the gradient "
    "of one FedSGD step of one client batch, and the batch size. Labels are inferred from the gradient. The "
    "generative attacks use a DCGAN prior trained on public MNIST digits that are disjoint from the private ones; "
    "the scikit-learn digits are out of the prior's distribution. In the FedAvg rows the client instead trains "
    "locally for two epochs in mini-batches in a known order and shares its weight update; the server knows the "
    "local training's hyper-parameters and replays it. No defence is applied."
)


def _demo_training(local_batch_size: int) -> LocalTraining:
    """The demo's FedAvg client: two local epochs of SGD in mini-batches, in an order the server knows."""
    return LocalTraining(learning_rate=0.05, epochs=2, batch_size=local_batch_size, shuffle_seed=0)


def demo_experiment(quick: bool, seed: int, device: str, verbose: bool) -> Experiment:
    """The demo grid: the default one (about 3.5 minutes on 2 idle CPU cores) or the ``quick`` one (under 2)."""
    if quick:
        budget = Budget(steps_per_stage=50, stages=4, num_restarts=2)
        cases = [
            Case("lenet", "mnist32", 1, 2),
            Case("lenet", "mnist32", 4, 4, offset=2),
            Case("lenet", "digits32", 1, 1),
            Case("convnet", "mnist32", 1, 1),
            Case("convnet", "mnist32", 2, 2, offset=8, training=_demo_training(1)),
        ]
    else:
        budget = Budget(steps_per_stage=100, stages=4, num_restarts=2)
        cases = [
            Case(model, dataset, batch, n, offset=offset)
            for model in ("lenet", "convnet")
            for dataset, batch, n, offset in (("mnist32", 1, 4, 0), ("mnist32", 4, 4, 4), ("digits32", 1, 2, 0))
        ]
        cases.append(Case("convnet", "mnist32", 4, 4, offset=8, training=_demo_training(2)))
    return Experiment(cases, ATTACKS, budget, seed=seed, device=device, verbose=verbose)


#: Files of an audit, a capture audit or a bench report, whose ``report.html`` the demo's would replace.
FOREIGN_REPORTS = ("report.json", "summary.md", "tables.json", "settings", "captures-state")


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, device: str = "cpu", verbose: bool = True) -> dict:
    """
    Run the demo and write its outputs.

    :param out: Output folder (created).
    :param quick: Run the small grid.
    :param seed: Seed of models and attacks.
    :param device: Torch device.
    :param verbose: Progress bars.
    :return: The results document that was written to ``out/results.json``.
    :raises ValueError: For an output folder that cannot be written or holds another run's report, a seed outside
                        ``[0, 2**63 - 1]`` or a device this machine does not have (before any work).
    """
    out = check_output_folder(out)
    foreign = [name for name in FOREIGN_REPORTS if (out / name).exists()]
    if foreign:  # the demo writes report.html too: it would replace theirs
        raise ValueError(
            f"'{out}' holds another run's report ({', '.join(foreign)}: an audit or a bench report): choose another "
            "output folder for the demo."
        )
    check_integer("seed", seed, 0, MAX_SEED)
    device = str(check_device(device))
    check_flag("quick", quick)
    out.mkdir(parents=True, exist_ok=True)
    experiment = demo_experiment(quick, seed, device, verbose)
    prior = load_default_prior(device=device)
    rows: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
    index: dict[tuple[Any, ...], int] = {}

    def collect(case: Case, attack: str, originals: np.ndarray, recs: np.ndarray) -> None:
        for original, rec in zip(originals, recs, strict=True):
            key = (case.model, case.dataset, case.batch_size, case.training is not None, original.tobytes())
            if key not in index:
                index[key] = len(rows)
                protocol = " FedAvg" if case.training is not None else ""
                rows.append((f"{case.model}\n{case.dataset} B={case.batch_size}{protocol}", original, {}))
            rows[index[key]][2][attack] = rec

    runs = run_experiment(experiment, prior, DEFAULT_PRIOR, on_batch=collect)
    results = {
        "schema": SCHEMA,
        "title": "demo" + (" (quick)" if quick else ""),
        "threat_model": THREAT_MODEL,
        "environment": environment(seed, device),
        "prior": {"name": DEFAULT_PRIOR, **prior.describe(), "sha256": EMBEDDED_PRIORS[DEFAULT_PRIOR]["sha256"]},
        "budget": {
            "steps_per_stage": experiment.budget.steps_per_stage,
            "stages": experiment.budget.stages,
            "total_steps": experiment.budget.total_steps,
            "num_restarts": experiment.budget.num_restarts,
        },
        "runs": runs,
    }
    # The three files are one set: made aside first, then the earlier run's report removed and the new one written
    # last, so that an interruption never leaves a report beside results of another run.
    staged = out / ".reconstructions.tmp.png"  # matplotlib takes the format from the suffix
    try:
        page = render_results_html(results, reconstruction_grid(rows, list(experiment.attacks), staged))
        (out / "report.html").unlink(missing_ok=True)
        write_json_atomic(out / "results.json", results)
        staged.replace(out / "reconstructions.png")
        write_bytes_atomic(out / "report.html", page.encode("utf-8"))
    finally:
        staged.unlink(missing_ok=True)
    print(results_table(runs))
    return results
