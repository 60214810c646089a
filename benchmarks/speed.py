"""
Speed of our GIFD search against a plain sequential implementation of the paper's protocol, side by side in one
process. Three modes:

``--mode equal`` (default): one batch, equal steps, the same random starts. *Batched* is :class:`art_gifd.GIFDAttack`
on the reference's protocol (every restart through every stage): the R restarts are one tensor, their dummy
gradients one vmapped computation, the best iterate tracked on the device without host synchronisation.
*Reference* (:func:`reference_gifd`) is written out from the paper: a Python loop over restarts and stages, a fresh
Adam optimiser (warm-up + cosine decay) per stage and restart, the dummy gradient from
``torch.autograd.grad(..., create_graph=True)``, the sphere projection of the latent and the l1-ball projection of the
features after every step and a host synchronisation (``loss.item()``) every step to keep the best iterate. Both use
the same prior, the same objective (1 − cosine + TV, per-image means averaged over the batch) and the same initial
latent codes, so their quality is comparable: the JSON reports the matching loss (one common evaluator) and the PSNR
of both. Times are wall-clock seconds of the whole reconstruction (after a warm-up run of each), repeated
``--repeats`` times in alternating order; the speed-up is the median of the paired ratios reference / batched; the
per-image time of the full protocol (``--full-steps`` per stage) is extrapolated linearly unless it was measured.

``--mode quality``: time-to-quality on the evaluation split of a case of ``benchmarks/cases.py`` (see
:func:`quality_mode`): the reference at its full protocol against our attack at its defaults with fractions of the
steps, CPU seconds each needs to reach the reference's PSNR.

``--mode profile``: milliseconds per part of one search step (see :func:`profile_mode`).

Every mode writes one file (``--out``, by default in ``benchmarks/results``, named after the mode and its settings)
and replaces an existing one only with ``--overwrite``.

The 1-minute load average is recorded in the equal mode: on a shared machine, read the numbers with it. Examples::

    .venv/bin/python benchmarks/speed.py --device cpu --model lenet --steps-per-stage 50 --repeats 3
    .venv/bin/python benchmarks/speed.py --mode quality --case lenet-mnist --batch-size 4 --threads 1
    .venv/bin/python benchmarks/speed.py --mode profile --model convnet --threads 1
    python benchmarks/speed.py --device cuda --model resnet18 --image-size 64 --quick

``--quick`` (60 steps per stage, 2 repeats) takes about two minutes for ResNet-18 at 64×64 on one H200.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from art_gifd import GIFDAttack, client_gradients
from art_gifd.attacks.core import GradientMatcher, project_l1_ball, total_variation, warmup_cosine
from art_gifd.cli import SEED, THREADS, Distinct, count, real, run_script
from art_gifd.federated import TargetModel
from art_gifd.metrics import psnr
from art_gifd.models import MODELS, build_model, make_classifier
from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.dcgan import DCGANGenerator
from art_gifd.store import NULL, NUMBER, environment, write_bytes_atomic, write_json_atomic

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    git_commit,
    mean_sem,
    psnr_by_label_multiplicity,
    read_json_file,
    refuse_to_replace,
    refuse_unread_options,
)

PRIORS = ("auto", "mnist32", "faces", "random")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Protocol:
    """The GIFD search both implementations run (cosine distance, per-element l1 radii)."""

    stages: int
    steps: int
    restarts: int
    learning_rate: float
    l1_radius: float
    tv_weight: float
    norm_weight: float
    seed: int


@dataclass
class Case:
    """What is attacked: the FL classifier, the prior, the private batch and the gradient it shared."""

    classifier: Any
    prior: LayeredGenerator
    prior_note: str
    targets_note: str
    x: np.ndarray
    y: np.ndarray
    gradient: list[np.ndarray]


def reference_gifd(case: Case, protocol: Protocol, device: str) -> np.ndarray:
    """
    GIFD as the paper describes it, written as a plain sequential loop: restarts, stages and steps one after the
    other, one host sync per step.

    Objective: 1 − cosine of the gradients (accumulated parameter tensor by parameter tensor) plus TV and, when its
    weight is not 0, the mean-square norm, both per-image means averaged over the batch; only the latent or feature
    receives gradients (``backward(inputs=...)``), as a careful plain implementation would do it. The latent code
    starts on, and after every step is projected back onto, the sphere of radius ``sqrt(d)`` (for priors with a
    standard normal latent); each feature stage starts from the best iterate of the previous stage and projects its
    deviation onto the l1 ball. Every restart runs every stage; the output is the best candidate over all stages
    and restarts by matching loss.

    :param case: The attacked batch and its gradient.
    :param protocol: Stages, steps, restarts and objective weights.
    :param device: Device of the search.
    :return: The best candidate, ``(B, C, H, W)`` in ``[lo, hi]``.
    """
    target = TargetModel(case.classifier, device=device)
    prior = case.prior.to(target.device).freeze()
    observed = target.as_gradient_list(case.gradient)
    observed_norm = torch.sqrt(sum((g * g).sum() for g in observed))
    labels = target.labels_to_indices(case.y)
    params = {name: p.detach().requires_grad_(True) for name, p in target.params.items()}
    lo, hi = (float(v) for v in case.classifier.clip_values)
    out_lo, out_hi = prior.output_range
    batch = len(case.y)
    sphere = prior.latent_constraint == "sphere"

    def decode(stage: int, h: torch.Tensor) -> torch.Tensor:
        return lo + (prior.forward_from(stage, h) - out_lo) * ((hi - lo) / (out_hi - out_lo))

    def to_sphere(z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1)
        return (flat * (flat.shape[1] ** 0.5 / flat.norm(dim=1, keepdim=True))).reshape(z.shape)

    def matching_loss(images: torch.Tensor, create_graph: bool) -> torch.Tensor:
        loss = target.loss(params, target.preprocess(images), labels)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        norm = torch.sqrt(sum((g * g).sum() for g in grads)) + 1e-12
        # 1 − cos as ½‖g/|g| − t/|t|‖² (free of cancellation), one parameter tensor at a time
        pairs = zip(grads, observed, strict=True)
        return 0.5 * sum((g / norm - t / (observed_norm + 1e-12)).pow(2).sum() for g, t in pairs)

    def objective(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        match = matching_loss(images, create_graph=True)
        total = match + protocol.tv_weight * total_variation(images).mean()
        if protocol.norm_weight:
            total = total + protocol.norm_weight * images.pow(2).flatten(1).mean(dim=1).mean()
        return total, match

    rng = torch.Generator(device=target.device).manual_seed(protocol.seed)
    latents = prior.sample_latent(protocol.restarts * batch, generator=rng)  # the batched attack's draw
    best_loss, best_images = math.inf, None
    for restart in range(protocol.restarts):
        h = latents[restart * batch : (restart + 1) * batch]
        h = to_sphere(h) if sphere else h
        for stage in range(protocol.stages):
            if stage > 0:
                with torch.no_grad():
                    h = prior.forward_blocks(h, stage - 1, stage)
            start = h.detach().clone()
            ball = protocol.l1_radius * start[0].numel()
            h = start.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([h], lr=protocol.learning_rate)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(protocol.steps))
            stage_loss, stage_h = math.inf, start
            for _ in range(protocol.steps):
                optimiser.zero_grad()
                total, match = objective(decode(stage, h))
                total.backward(inputs=[h])
                value = match.item()  # host sync, as the original code does every step
                if value < stage_loss:
                    stage_loss, stage_h = value, h.detach().clone()
                optimiser.step()
                schedule.step()
                with torch.no_grad():
                    if stage > 0:
                        h.copy_(start + project_l1_ball(h - start, ball))
                    elif sphere:
                        h.copy_(to_sphere(h))
            value = matching_loss(decode(stage, h.detach()), create_graph=False).item()
            if value < stage_loss:
                stage_loss, stage_h = value, h.detach().clone()
            h = stage_h
            if stage_loss < best_loss:
                with torch.no_grad():
                    best_loss, best_images = stage_loss, decode(stage, h).clamp(lo, hi)
    assert best_images is not None
    return best_images.cpu().numpy()


def batched_gifd(case: Case, protocol: Protocol, device: str) -> np.ndarray:
    """
    Our :class:`~art_gifd.GIFDAttack` on the reference's protocol: every restart through every stage, all restarts
    in one batched computation.
    """
    return gifd_attack(case, protocol, device, feature_restarts=None).reconstruct(case.gradient, case.y).images


def gifd_attack(case: Case, protocol: Protocol, device: str, **overrides: Any) -> GIFDAttack:
    """:class:`~art_gifd.GIFDAttack` with the protocol's steps, stages, restarts and weights, and ``overrides``."""
    settings = {
        "max_stage": protocol.stages,
        "steps_per_stage": protocol.steps,
        "num_restarts": protocol.restarts,
        "learning_rate": protocol.learning_rate,
        "l1_radius": protocol.l1_radius,
        "radius_scale": "per_element",
        "tv_weight": protocol.tv_weight,
        "norm_weight": protocol.norm_weight,
        # the reference's protocol: equal steps per stage, starting from the first latent draws
        "step_split": "equal",
        "latent_pool": 1,
        **overrides,
    }
    return GIFDAttack(
        case.classifier,
        case.prior,
        batch_size=len(case.y),
        device=device,
        seed=protocol.seed,
        verbose=False,
        **settings,
    )


METHODS: dict[str, Callable[[Case, Protocol, str], np.ndarray]] = {"reference": reference_gifd, "batched": batched_gifd}


def load_prior(name: str, channels: int, image_size: int, seed: int) -> tuple[LayeredGenerator, str, str]:
    """
    The prior by name, ``"auto"`` resolved from the image size.

    :return: (prior, resolved name, note on what it is).
    """
    if name == "auto":
        name = "mnist32" if (channels, image_size) == (1, 32) else "faces"
    if name == "mnist32":
        from art_gifd.priors.embedded import load_default_prior

        return load_default_prior(), name, "embedded MNIST DCGAN (32x32 grey)"
    if name == "faces":
        from art_gifd.priors.faces import load_face_dcgan

        try:
            return load_face_dcgan(), name, "face DCGAN of gan-face-generate (64x64 RGB, pretrained)"
        except FileNotFoundError as err:
            print(f"note: {err} Falling back to a randomly initialised DCGAN (fine for timing).", file=sys.stderr)
            name = "random"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = DCGANGenerator(nz=100, ngf=64, nc=channels, image_size=image_size, training_domain="none (random)")
    return prior.freeze(), name, "randomly initialised DCGAN (untrained: timing is valid, images are not faces)"


def build_case(args: argparse.Namespace) -> Case:
    """Classifier, prior and private batch for the options; raises ``ValueError`` on combinations that do not fit."""
    prior, prior_name, prior_note = load_prior(args.prior, args.channels, args.image_size, args.seed)
    channels, size = prior.image_shape[0], prior.image_shape[1]
    if size != args.image_size or (args.channels is not None and channels != args.channels):
        wanted = f"{args.image_size}x{args.image_size}" + (f" with {args.channels} channels" if args.channels else "")
        raise ValueError(
            f"The '{prior_name}' prior makes {channels}x{size}x{size} images, not {wanted}: pick --prior random for "
            "other shapes, or a matching --image-size/--channels."
        )
    model = build_model(args.model, in_channels=channels, image_size=size, seed=args.seed)
    classifier = make_classifier(model, (channels, size, size), device=args.device)
    if prior_name == "mnist32":
        from art_gifd.data import load_mnist32

        x, y = load_mnist32("heldout")
        if args.batch_size > len(x):
            raise ValueError(f"--batch-size {args.batch_size} is more than the {len(x)} held-out digits there are.")
        x, y = x[: args.batch_size], y[: args.batch_size]
        targets_note = f"first {args.batch_size} held-out MNIST digits (never seen by the prior)"
    else:
        with torch.no_grad():
            z = prior.sample_latent(args.batch_size, generator=torch.Generator().manual_seed(10_000 + args.seed))
            lo, hi = prior.output_range
            x = ((prior(z) - lo) / (hi - lo)).clamp(0.0, 1.0).numpy()
        y = np.arange(args.batch_size) % 10
        targets_note = (
            f"batch of {args.batch_size} sample(s) of the prior (latent seed {10_000 + args.seed}), labels 0..9 cycled"
        )
    gradient = client_gradients(classifier, x, y)
    return Case(classifier, prior, prior_note, targets_note, x, y, gradient)


def matching_loss_of(case: Case, images: np.ndarray, device: str) -> float:
    """Matching loss of one reconstruction, with one evaluator for both methods."""
    target = TargetModel(case.classifier, device=device)
    matcher = GradientMatcher(
        target, target.as_gradient_list(case.gradient), target.labels_to_indices(case.y), "cosine"
    )
    return float(matcher.loss(torch.as_tensor(images, device=target.device)).item())


def timed_run(method: str, case: Case, protocol: Protocol, device: str) -> tuple[float, int | None, np.ndarray]:
    """Run one method; return (wall seconds, peak GPU bytes allocated or ``None`` on CPU, images)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    images = METHODS[method](case, protocol, device)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, (int(torch.cuda.max_memory_allocated()) if cuda else None), images


def device_name(device: str) -> str:
    """Human-readable name of the device the search runs on."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def summary(record: dict[str, Any]) -> str:
    """A few lines of text with the main numbers of a record."""
    protocol, full = record["protocol"], record["full_protocol"]
    median = {m: statistics.median(record["seconds"][m]) for m in METHODS}
    lines = [
        f"{record['device_name']} | {record['model']} {'x'.join(map(str, record['input_shape']))} | "
        f"prior: {record['prior']['note']}",
        f"R={protocol['restarts']} B={protocol['batch_size']} stages={protocol['stages']} "
        f"steps/stage={protocol['steps']}: reference {median['reference']:.2f} s, batched {median['batched']:.2f} s, "
        f"speed-up {record['speedup_median_paired']:.2f}x (paired: "
        + ", ".join(f"{r:.2f}" for r in record["speedup_paired"])
        + ")",
        f"full protocol ({full['steps_per_stage']} steps/stage, {full['how']}): "
        + ", ".join(f"{m} {full['seconds_per_image'][m]:.1f} s/image" for m in METHODS),
        "quality: "
        + ", ".join(
            f"{m} matching loss {q['matching_loss']:.3e}, PSNR {np.mean(q['psnr_db']):.2f} dB"
            for m, q in record["quality"].items()
        ),
        "load average (1 min) before each repeat: "
        + ", ".join(f"{x['before'][0]:.2f}" for x in record["load_average_1min"]),
    ]
    if record["peak_gpu_memory_bytes"] is not None:
        lines.append(
            "peak GPU memory: "
            + ", ".join(f"{m} {b / 2**20:.0f} MiB" for m, b in record["peak_gpu_memory_bytes"].items())
        )
    return "\n".join(lines)


#: Step budgets of our attack in the quality mode, as fractions of the reference's steps per stage.
QUALITY_FRACTIONS = (0.25, 0.5, 1.0)


def _timed(fn: Callable[[], np.ndarray], device: str) -> tuple[np.ndarray, float, float, int | None]:
    """Run ``fn``; return its images, process CPU seconds, wall seconds and peak GPU memory (bytes; CPU: ``None``)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cpu, wall = time.process_time(), time.perf_counter()
    images = fn()  # numpy images: the device has finished
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return images, cpu, wall, torch.cuda.max_memory_allocated(device) if cuda else None


def _mean_sem(values: list[float]) -> dict[str, float]:
    mean, sem = mean_sem(values)
    return {"mean": mean, "sem": sem, "n": len(values)}


def time_to_quality(points: list[tuple[float, float]], target: float) -> float | None:
    """
    Seconds at which a (seconds, PSNR) curve first reaches ``target`` PSNR, interpolated linearly between
    measured budgets (the first budget counts as reached at its own cost); ``None`` if it never does.
    """
    previous = None
    for seconds, quality in sorted(points):
        if quality >= target:
            if previous is None or previous[1] >= target:
                return seconds
            (s0, q0), (s1, q1) = previous, (seconds, quality)
            return s0 + (target - q0) * (s1 - s0) / (q1 - q0)
        previous = (seconds, quality)
    return None


def _restart_option(text: str) -> int | str | None:
    """``--feature-restarts`` as GIFDAttack's ``feature_restarts``: ``all`` → ``None``, a number, or ``halving``."""
    if text == "all":
        return None
    return int(text) if text.isdigit() else text


def summarise_quality(runs: list[dict[str, Any]], clock: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Quality-mode runs summarised: per method the PSNR, process CPU seconds and wall seconds (mean ± s.e.m.) and the
    paired differences to both references, and the time-to-quality of ours against each on ``clock`` (``"cpu"`` or
    ``"wall"``; runs are paired by batch and seed).
    """
    methods = list(dict.fromkeys(r["method"] for r in runs))
    by = {m: {(r["first"], r["seed"]): r for r in runs if r["method"] == m} for m in methods}
    table = {m: {key: _mean_sem([r[key] for r in by[m].values()]) for key in ("psnr", "cpu", "wall")} for m in methods}
    for m in methods:  # GPU runs: the largest peak of the method's runs
        peaks = [r["peak_gpu_memory_bytes"] for r in by[m].values() if r.get("peak_gpu_memory_bytes") is not None]
        if peaks:
            table[m]["peak_gpu_memory_bytes"] = max(peaks)
    for m in methods:
        for ref in ("reference", "reference R=1"):
            diffs = [by[m][k]["psnr"] - by[ref][k]["psnr"] for k in by[m]]
            table[m][f"paired_diff_vs_{ref}"] = {**_mean_sem(diffs), "wins": int(sum(d > 0 for d in diffs))}
    ours = [(table[f"ours x{f:g}"][clock]["mean"], table[f"ours x{f:g}"]["psnr"]["mean"]) for f in QUALITY_FRACTIONS]
    ttq = {}
    for ref in ("reference", "reference R=1"):
        target, ref_seconds = table[ref]["psnr"]["mean"], table[ref][clock]["mean"]
        reached = time_to_quality(ours, target)
        ttq[ref] = {
            "target_psnr": target,
            f"reference_{clock}_seconds": ref_seconds,
            f"ours_{clock}_seconds": reached,
            "speedup": ref_seconds / reached if reached else None,
        }
    return table, ttq


def quality_mode(args: argparse.Namespace) -> dict[str, Any]:
    """
    Time-to-quality of our attack at its defaults against the plain-loop reference, in one process, on the
    evaluation split of a case of ``benchmarks/cases.py``.

    For every batch and seed the reference runs its full protocol (``--restarts`` restarts, every restart through
    every stage) and, for the same starting latents, our attack runs at its defaults (its own restart count and
    successive halving) with :data:`QUALITY_FRACTIONS` of the steps per stage; the runs alternate order. Reported:
    PSNR at equal steps (paired difference ± s.e.m.) and the seconds each needs to reach the reference's mean final
    PSNR on ``--clock`` (process CPU seconds, or wall seconds for a run alone on the machine, each side at its own
    ``--threads`` / ``--reference-threads``); their ratio is the time-to-quality speed-up.
    """
    from art_gifd.metrics import evaluate_batch
    from benchmarks.cases import CASES

    spec = CASES[args.case]
    classifier = spec.classifier()
    prior = spec.load_prior()
    ours_threads = torch.get_num_threads()  # --threads, set by main
    reference_threads = args.reference_threads or ours_threads
    x_all, y_all = spec.images("eval", args.images)
    stages = args.stages or 4
    ours = {} if args.feature_restarts == "default" else {"feature_restarts": _restart_option(args.feature_restarts)}

    def jobs_of(case: Case, protocol: Protocol) -> dict[str, Callable[[], np.ndarray]]:
        jobs: dict[str, Callable[[], np.ndarray]] = {
            "reference": lambda: reference_gifd(case, protocol, args.device),
            "reference R=1": lambda: reference_gifd(case, Protocol(**{**vars(protocol), "restarts": 1}), args.device),
        }
        for fraction in QUALITY_FRACTIONS:
            steps = max(1, round(protocol.steps * fraction))
            jobs[f"ours x{fraction:g}"] = lambda n=steps: (
                GIFDAttack(
                    case.classifier,
                    case.prior,
                    max_stage=protocol.stages,
                    steps_per_stage=n,
                    batch_size=len(case.y),
                    device=args.device,
                    seed=protocol.seed,
                    verbose=False,
                    **ours,
                )
                .reconstruct(case.gradient, case.y)
                .images
            )
        return jobs

    runs: list[dict[str, Any]] = []
    for first in range(0, len(x_all) - args.batch_size + 1, args.batch_size):
        x, y = x_all[first : first + args.batch_size], y_all[first : first + args.batch_size]
        case = Case(classifier, prior, spec.prior, spec.description, x, y, spec.gradient(classifier, x, y))
        if first == 0 and args.device.startswith("cuda"):  # CUDA context, kernels and allocator, untimed
            for job in jobs_of(
                case, Protocol(stages, 2, args.restarts, args.learning_rate, 0.2, 1e-4, 0.0, 0)
            ).values():
                job()
        for seed in args.seeds:
            protocol = Protocol(
                stages, args.steps_per_stage, args.restarts, args.learning_rate, args.l1_radius, 1e-4, 0.0, seed
            )
            jobs = jobs_of(case, protocol)
            order = list(jobs) if (first + seed) % 2 == 0 else list(reversed(jobs))
            for name in order:
                torch.set_num_threads(reference_threads if name.startswith("reference") else ours_threads)
                images, cpu, wall, memory = _timed(jobs[name], args.device)
                scores = evaluate_batch(images, x, y, y)
                score = scores["psnr"]
                runs.append(
                    {
                        "method": name,
                        "first": first,
                        "seed": seed,
                        "psnr": score,
                        "per_image_psnr": scores["per_image"]["psnr"],
                        "labels": y.tolist(),
                        "cpu": cpu,
                        "wall": wall,
                        "peak_gpu_memory_bytes": memory,
                    }
                )
                print(
                    f"{spec.name} B={args.batch_size} first={first} seed={seed} {name}: {score:.2f} dB, "
                    f"{cpu:.1f} cpu s",
                    flush=True,
                )
    torch.set_num_threads(ours_threads)  # the record's device line names --threads; the protocol names both
    table, ttq = summarise_quality(runs, args.clock)
    record = {
        **provenance(args, "speed-quality"),
        "case": {"name": spec.name, "description": spec.description, "split": "eval", "images": args.images},
        "protocol": {
            "stages": stages,
            "steps_per_stage": args.steps_per_stage,
            "reference_restarts": args.restarts,
            "learning_rate": args.learning_rate,
            "l1_radius": args.l1_radius,
            "tv_weight": 1e-4,
            "batch_size": args.batch_size,
            "seeds": args.seeds,
            "labels": "given",
            "clock": args.clock,
            "threads": {"ours": ours_threads, "reference": reference_threads},
        },
        "ours": "GIFDAttack at its defaults (restarts, objective) with the stages and steps shown",
        "ours_feature_restarts": args.feature_restarts,
        "fractions": list(QUALITY_FRACTIONS),
        "table": table,
        "time_to_quality": ttq,
        "runs": runs,
    }
    write_json_atomic(args.out, record)
    for m, row in table.items():
        diff = row["paired_diff_vs_reference"]
        memory = f", peak {row['peak_gpu_memory_bytes'] / 2**20:.0f} MiB" if "peak_gpu_memory_bytes" in row else ""
        print(
            f"{m:>16}: {row['psnr']['mean']:.2f} ± {row['psnr']['sem']:.2f} dB, "
            f"{row[args.clock]['mean']:.1f} {args.clock} s{memory}, "
            f"vs reference {diff['mean']:+.2f} ± {diff['sem']:.2f}"
        )
    for ref, item in ttq.items():
        speedup = f"{item['speedup']:.2f}x" if item["speedup"] else "not reached"
        print(f"time to {ref}'s {item['target_psnr']:.2f} dB: {speedup}")
    print(f"-> {args.out}")
    return record


class _Clock:
    """Context manager factory timing named parts into lists (synchronising CUDA around each part)."""

    def __init__(self, timings: dict[str, list[float]], cuda: bool) -> None:
        self.timings, self.cuda = timings, cuda

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.timings[name].append(time.perf_counter() - start)


def profile_mode(args: argparse.Namespace) -> dict[str, Any]:
    """
    Where the milliseconds of one search step go, for one and for ``--restarts`` rows: decoding through the
    generator, the dummy gradient (vmapped ``grad`` or plain autograd), the outer backward (double backward), the Adam
    step, the l1-ball projection and the best-iterate tracking. Each part is timed separately over ``--repeats``
    × 20 steps of a feature stage (stage 1), median milliseconds per step.
    """
    from art_gifd.attacks.core import GradientMatcher, Objective, _BestTracker

    case = build_case(args)
    target = TargetModel(case.classifier, device=args.device)
    prior = case.prior.to(target.device).freeze()
    observed = target.as_gradient_list(case.gradient)
    labels = target.labels_to_indices(case.y)
    matcher = GradientMatcher(target, observed, labels, "cosine")
    objective = Objective(matcher)
    lo, hi = (float(v) for v in case.classifier.clip_values)
    out_lo, out_hi = prior.output_range
    rows_of = {"one restart": 1, f"{args.restarts} restarts": args.restarts}
    parts: dict[str, dict[str, float]] = {}
    for label, restarts in rows_of.items():
        rng = torch.Generator(device=target.device).manual_seed(args.seed)
        with torch.no_grad():
            start = prior.forward_blocks(prior.sample_latent(restarts * len(case.y), generator=rng), 0, 1)
        h = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([h], lr=0.1)
        tracker = _BestTracker([h], restarts)
        ball = args.l1_radius * start[0].numel()
        timings: dict[str, list[float]] = {
            k: [] for k in ("decode", "gradient", "objective", "backward", "adam", "project", "track")
        }
        clock = _Clock(timings, args.device.startswith("cuda"))
        for _ in range(args.repeats * 20 + 3):
            optimiser.zero_grad(set_to_none=True)
            with clock("decode"):
                images = lo + (prior.forward_from(1, h) - out_lo) * ((hi - lo) / (out_hi - out_lo))
            x = target.preprocess(images).reshape(restarts, len(case.y), *images.shape[1:])
            with clock("gradient"):
                matcher._gradients(x, labels, soft=False)
            with clock("objective"):
                total, match = objective(images)
            with clock("backward"):
                total.sum().backward()
            with clock("adam"):
                optimiser.step()
            with torch.no_grad(), clock("project"):
                h.copy_(start + project_l1_ball(h - start, ball))
            with clock("track"):
                tracker.update(match, [h])
        # "objective" repeats the gradient inside the matching loss: its own share is objective minus gradient
        medians = {k: statistics.median(v[3:]) * 1e3 for k, v in timings.items()}
        medians["objective"] = max(0.0, medians["objective"] - medians["gradient"])
        parts[label] = medians
    record = {
        **provenance(args, "speed-profile"),
        "model": args.model,
        "input_shape": list(case.prior.image_shape),
        "prior": case.prior_note,
        "batch_size": len(case.y),
        "milliseconds_per_step": parts,
        "note": (
            "decode: generator from stage 1; gradient: the dummy gradient alone (vmap(grad) for several rows, plain "
            "autograd for one); objective: the rest of the matching loss and priors; backward: the double backward "
            "into the feature; adam, project (l1 ball), track (best iterate): one call each"
        ),
    }
    write_json_atomic(args.out, record)
    for label, medians in parts.items():
        print(
            f"{label}: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in medians.items())
            + f" (total {sum(medians.values()):.2f} ms)"
        )
    print(f"-> {args.out}")
    return record


def _cell(row: dict[str, Any]) -> str:
    return f"{row['psnr']['mean']:.2f} ± {row['psnr']['sem']:.2f}"


def _diff(d: dict[str, Any]) -> str:
    return f"{d['mean']:+.2f} ± {d['sem']:.2f} ({d['wins']}/{d['n']})"


def _speed(item: dict[str, Any]) -> str:
    return f"{item['speedup']:.2f}×" if item["speedup"] else "not reached"


def _shared_label_table(records: list[dict[str, Any]]) -> str:
    """
    Batched records that keep per-image PSNR and labels: PSNR of the images whose label is unique in their batch
    against those that share it, per method (empty when no record has them).
    """
    lines = []
    for record in records:
        runs = [r for r in record["runs"] if "per_image_psnr" in r and len(r["labels"]) > 1]
        for method in ("reference", "reference R=1", "ours x1"):
            values = psnr_by_label_multiplicity(
                (r["labels"], r["per_image_psnr"]) for r in runs if r["method"] == method
            )
            if not values["unique"] and not values["shared"]:
                continue
            cells = []
            for v in values.values():
                stats = _mean_sem(v) if v else None
                cells.append(f"{stats['n']}, {stats['mean']:.2f} ± {stats['sem']:.2f}" if stats else "0, —")
            protocol = record["protocol"]
            lines.append(
                f"| {record['case']['name']} | {protocol['batch_size']} | {' '.join(map(str, protocol['seeds']))} "
                f"| {method} | {cells[0]} | {cells[1]} |"
            )
    if not lines:
        return ""
    header = [
        "",
        "## Batched rows: images whose label is unique in the batch against images that share it",
        "",
        "Per-image PSNR (Hungarian-matched) in dB, mean ± s.e.m. over the images of every run (batch × seed × slot); "
        "only records that keep per-image PSNR and labels.",
        "",
        "| case | B | seeds | method | unique label: images, PSNR | shared label: images, PSNR |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(header + lines) + "\n"


_SUMMARY = {"mean": NUMBER, "sem": (*NUMBER, NULL), "n": int}
_ROW = {"psnr": _SUMMARY, "cpu": _SUMMARY, "wall?": _SUMMARY}  # records before the wall clock: CPU seconds only
#: What the quality report reads of a record (see :func:`~art_gifd.store.shape_problem`).
QUALITY_SHAPE = {
    "device_name?": str,
    "case": {"name": str, "images": int},
    "protocol": {"batch_size": int, "steps_per_stage": int, "seeds": [int], "clock?": str, "threads?": dict},
    "table": {
        "reference": _ROW,
        "reference R=1": _ROW,
        "ours x1": {**_ROW, "paired_diff_vs_reference": dict, "paired_diff_vs_reference R=1": dict},
    },
    "time_to_quality": {"reference": dict, "reference R=1": dict},
    "runs": [{"method": str, "first": int, "seed": int, "psnr": NUMBER, "cpu": NUMBER, "wall?": NUMBER}],
}


def _quality_record(path: Path) -> dict[str, Any]:
    """A quality record read for the report; a file that is not one is named with what is wrong."""
    return read_json_file(path, QUALITY_SHAPE, "a quality record", "remove it or run it again")


def _gpu(record: dict[str, Any]) -> str:
    """``, <GPU name>, peak <MiB> MiB`` for a record made on a GPU (the largest peak of its methods), else empty."""
    if " CPU, " in record.get("device_name", " CPU, "):
        return ""
    peaks = [row["peak_gpu_memory_bytes"] for row in record["table"].values() if "peak_gpu_memory_bytes" in row]
    return f", {record['device_name']}" + (f", peak {max(peaks) / 2**20:.0f} MiB" if peaks else "")


def quality_report(args: argparse.Namespace) -> str:
    """Summarise every ``quality_*.json`` record of the results folder into ``quality.md``; returns the Markdown."""
    lines = [
        "# Time-to-quality: our GIFD against the plain-loop reference (CPU unless a row names its GPU)",
        "",
        "Evaluation split of each case (`benchmarks/cases.py`), the images and seeds shown, labels given, 4 stages. "
        "*reference*: the paper's protocol as a plain sequential loop, 4 restarts each through every stage "
        "(*reference R=1*: one restart). *ours*: `GIFDAttack` at its defaults with the `feature_restarts` shown. "
        "PSNR in dB, mean ± s.e.m. over batch × seed; Δ: paired difference to the reference (wins); time-to-quality: "
        "reference seconds / the seconds ours needs to reach the reference's mean PSNR (interpolated between ¼, ½ and "
        "all of the steps; 'not reached' if even all of them fall short), on the clock shown: process CPU seconds, or "
        "wall seconds of a run alone on the machine, with the torch threads of ours / the reference. *(pooled)*: the "
        "rows of one case and protocol that differ in their seeds (and images), as one row (their runs paired and "
        "summarised together).",
        "",
        "| case | B | images | seeds | steps/stage | ours: feature_restarts | reference | reference R=1 | ours "
        "| Δ ours − reference | Δ ours − reference R=1 | clock, threads ours / ref | seconds ref / R=1 / ours "
        "| time-to-quality vs reference | vs reference R=1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = [_quality_record(path) for path in sorted(Path(args.records).glob("quality_*.json"))]
    if not records:
        raise ValueError(f"'{args.records}' holds no quality_*.json record: run --mode quality first.")
    # records of one case, batch size and protocol with other seeds (and images of the split) are also pooled into
    # one row: each run is a batch and seed of its own
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        protocol = {k: v for k, v in record["protocol"].items() if k != "seeds"}
        key = json.dumps([record["case"]["name"], protocol, record.get("ours_feature_restarts")], sort_keys=True)
        groups.setdefault(key, []).append(record)
    rows = [
        (r, str(r["case"]["images"]), " ".join(map(str, r["protocol"]["seeds"])), r["table"], r["time_to_quality"])
        for r in records
    ]
    for group in groups.values():
        seeds = sorted(seed for r in group for seed in r["protocol"]["seeds"])
        if len(group) > 1 and len(set(seeds)) == len(seeds):
            table, ttq = summarise_quality(
                [run for r in group for run in r["runs"]], group[0]["protocol"].get("clock", "cpu")
            )
            images = " / ".join(str(n) for n in sorted({r["case"]["images"] for r in group}))
            rows.append((group[0], images, f"{' '.join(map(str, seeds))} (pooled)", table, ttq))
    for record, images, seeds, table, ttq in rows:
        ref, one, ours = table["reference"], table["reference R=1"], table["ours x1"]
        protocol = record["protocol"]
        clock = protocol.get("clock", "cpu")  # records before the option: CPU seconds, one thread both sides
        threads = protocol.get("threads", {"ours": 1, "reference": 1})
        lines.append(
            f"| {record['case']['name']} | {protocol['batch_size']} | {images} "
            f"| {seeds} | {protocol['steps_per_stage']} "
            f"| {record.get('ours_feature_restarts', 'default')} | {_cell(ref)} | {_cell(one)} | {_cell(ours)} "
            f"| {_diff(ours['paired_diff_vs_reference'])} | {_diff(ours['paired_diff_vs_reference R=1'])} "
            f"| {clock}, {threads['ours']} / {threads['reference']}{_gpu(record)} "
            f"| {ref[clock]['mean']:.1f} / {one[clock]['mean']:.1f} / {ours[clock]['mean']:.1f} "
            f"| {_speed(ttq['reference'])} | {_speed(ttq['reference R=1'])} |"
        )
    text = "\n".join(lines) + "\n" + _shared_label_table(records)
    write_bytes_atomic(args.out, text.encode())
    print(text)
    return text


def provenance(args: argparse.Namespace, benchmark: str) -> dict[str, Any]:
    """What made a record: benchmark, command line, commit, date and device."""
    return {
        "benchmark": benchmark,
        "command": shlex.join(["python", "benchmarks/speed.py", *args.argv]),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device_name": device_name(args.device),
    }


#: Per mode, the options it does not read (the quality mode takes its model, prior and images from ``--case``).
_QUALITY_ONLY = ("--case", "--images", "--seeds", "--feature-restarts", "--reference-threads", "--clock")
_OTHER_MODES_OPTIONS = {
    "quality": ("--model", "--image-size", "--channels", "--prior", "--repeats", "--full-steps", "--quick", "--seed"),
    "equal": (*_QUALITY_ONLY, "--records"),
    "profile": (*_QUALITY_ONLY, "--records", "--full-steps", "--quick"),
    "quality-report": ("--case", "--images", "--seeds", "--model", "--prior", "--device", "--threads", "--quick"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line; defaults that depend on other options are resolved here."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mode",
        choices=("equal", "quality", "quality-report", "profile"),
        default="equal",
        help="equal: reference vs batched at equal steps on one batch; quality: time-to-quality on a case's eval "
        "split; quality-report: quality.md from every quality record; profile: milliseconds per part of one step",
    )
    parser.add_argument("--case", default="lenet-mnist", help="quality mode: a case of benchmarks/cases.py")
    parser.add_argument("--images", type=count(1), default=8, help="quality mode: images of the evaluation split")
    parser.add_argument(
        "--seeds", nargs="+", type=SEED, action=Distinct, default=[0, 1], help="quality mode: seeds per batch"
    )
    parser.add_argument(
        "--feature-restarts",
        default="default",
        help="quality mode: our attack's feature_restarts (default: its default; 'all', 'halving' or a count)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--model", default="lenet", choices=MODELS)
    parser.add_argument("--image-size", type=count(1), default=None, help="default: 64 for resnet18, else 32")
    parser.add_argument("--channels", type=count(1), default=None, help="default: the prior's (random prior: 3)")
    parser.add_argument("--prior", default="auto", choices=PRIORS, help="auto: mnist32 for 1x32x32, faces otherwise")
    parser.add_argument("--restarts", type=count(1), default=4)
    parser.add_argument("--stages", type=count(1), default=None, help="default: the prior's number of blocks")
    parser.add_argument("--steps-per-stage", type=count(1), default=None, help="default: 1000, or 60 with --quick")
    parser.add_argument("--full-steps", type=count(1), default=1000, help="steps per stage of the full protocol")
    parser.add_argument("--batch-size", type=count(1), default=1)
    parser.add_argument("--repeats", type=count(1), default=None, help="default: 3, or 2 with --quick")
    parser.add_argument("--learning-rate", type=real(0, low_open=True), default=0.1)
    parser.add_argument(
        "--l1-radius", type=real(0, low_open=True), default=0.2, help="per-element l1 radius of the feature stages"
    )
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--reference-threads",
        type=THREADS,
        default=None,
        help="quality mode: torch CPU threads of the plain-loop reference (default: --threads)",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="quality mode: the seconds time-to-quality compares (wall: run alone on the machine; default: cpu on "
        "the CPU, wall on a GPU, whose work process CPU seconds do not count)",
    )
    parser.add_argument("--quick", action="store_true", help="60 steps per stage, 2 repeats (full time extrapolated)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/results/speed_<device>_<model>_<size>[_<N>threads].json",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--records",
        type=Path,
        default=RESULTS,
        help="quality-report mode: the folder of the quality_*.json records (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    refuse_unread_options(parser, args.argv, _OTHER_MODES_OPTIONS[args.mode], f"--mode {args.mode}")
    if args.mode == "quality":
        from benchmarks.cases import CASES

        if args.case not in CASES:
            parser.error(f"--case must be one of {sorted(CASES)}, got '{args.case}'.")
        if args.feature_restarts not in ("default", "all", "halving") and not args.feature_restarts.isdigit():
            parser.error(f"--feature-restarts must be default, all, halving or a count, got '{args.feature_restarts}'.")
        if args.images < args.batch_size or args.images % args.batch_size:
            parser.error(f"--images ({args.images}) must be a multiple of --batch-size ({args.batch_size}).")
    args.image_size = args.image_size or (64 if args.model == "resnet18" else 32)
    if args.channels is None and args.prior == "random":
        args.channels = 3
    if args.channels is None and args.prior == "auto":
        args.channels = 1 if args.image_size == 32 else 3
    args.steps_per_stage = args.steps_per_stage or (60 if args.quick else 1000)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA device: use --device cpu.")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu or cuda[:N], got '{args.device}'.")
    if args.clock is None:
        args.clock = "wall" if args.device.startswith("cuda") else "cpu"
    elif args.clock == "cpu" and args.device.startswith("cuda"):
        parser.error("--clock cpu does not count the GPU's work: use --clock wall with --device cuda.")
    if args.out is None and args.mode == "quality":
        kind = "cuda" if args.device.startswith("cuda") else "cpu"
        suffix = "" if args.feature_restarts == "default" else f"_{args.feature_restarts}"
        args.out = RESULTS / f"quality_{kind}_{args.case}_b{args.batch_size}{suffix}.json"
    if args.out is None and args.mode == "quality-report":
        args.out = RESULTS / "quality.md"
    if args.out is None and args.mode == "profile":
        kind = "cuda" if args.device.startswith("cuda") else "cpu"
        args.out = RESULTS / f"profile_{kind}_{args.model}_{args.image_size}_b{args.batch_size}.json"
    if args.out is None:
        kind = "cuda" if args.device.startswith("cuda") else "cpu"
        threads = f"_{args.threads}threads" if args.threads is not None else ""
        args.out = RESULTS / f"speed_{kind}_{args.model}_{args.image_size}{threads}.json"
    refuse_to_replace(parser, [args.out], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print a summary and write the JSON record; returns the record."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.mode == "quality":
        return quality_mode(args)
    if args.mode == "quality-report":
        return {"markdown": quality_report(args)}
    if args.mode == "profile":
        return profile_mode(args)
    case = build_case(args)
    stages = args.stages or case.prior.default_max_stage or case.prior.num_blocks
    if not 1 <= stages <= case.prior.num_blocks:
        raise ValueError(f"--stages must lie in [1, {case.prior.num_blocks}] for this prior, got {stages}.")
    protocol = Protocol(
        stages, args.steps_per_stage, args.restarts, args.learning_rate, args.l1_radius, 1e-4, 0.0, args.seed
    )
    warmup = Protocol(**{**vars(protocol), "steps": min(3, protocol.steps)})
    for method in METHODS:  # allocator, kernels, lazy imports
        timed_run(method, case, warmup, args.device)

    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    peak: dict[str, int | None] = dict.fromkeys(METHODS)
    images: dict[str, np.ndarray] = {}
    loads: list[dict[str, list[float]]] = []
    for repeat in range(args.repeats):
        order = list(METHODS) if repeat % 2 == 0 else list(reversed(METHODS))
        load = {"before": list(os.getloadavg())}
        for method in order:
            wall, memory, images[method] = timed_run(method, case, protocol, args.device)
            seconds[method].append(wall)
            peak[method] = memory if peak[method] is None else max(peak[method], memory)
            print(f"repeat {repeat + 1}/{args.repeats} {method}: {wall:.2f} s", flush=True)
        load["after"] = list(os.getloadavg())
        loads.append(load)

    paired = [r / b for r, b in zip(seconds["reference"], seconds["batched"], strict=True)]
    steps_measured = protocol.stages * protocol.steps
    extrapolated = protocol.steps != args.full_steps
    per_image = {m: statistics.median(seconds[m]) * args.full_steps / protocol.steps / len(case.y) for m in METHODS}
    quality = {
        m: {
            "matching_loss": matching_loss_of(case, images[m], args.device),
            "psnr_db": [round(float(v), 3) for v in psnr(images[m], case.x)],
        }
        for m in METHODS
    }
    record = {
        "benchmark": "speed",
        "command": shlex.join(["python", Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": args.device,
        "device_name": device_name(args.device),
        "environment": environment(args.seed, args.device),
        "model": args.model,
        "input_shape": list(case.prior.image_shape),
        "prior": {**case.prior.describe(), "note": case.prior_note},
        "targets": case.targets_note,
        "protocol": {**vars(protocol), "distance": "cosine", "radius_scale": "per_element", "batch_size": len(case.y)},
        "steps_per_restart_measured": steps_measured,
        "seconds": seconds,
        "speedup_median_paired": statistics.median(paired),
        "speedup_paired": paired,
        "speedup_of_medians": statistics.median(seconds["reference"]) / statistics.median(seconds["batched"]),
        # wall time per step of the whole search (all restarts), fixed costs of the run included
        "seconds_per_step": {m: statistics.median(seconds[m]) / steps_measured for m in METHODS},
        "full_protocol": {
            "steps_per_stage": args.full_steps,
            "stages": protocol.stages,
            "restarts": protocol.restarts,
            "seconds_per_image": per_image,
            "extrapolated": extrapolated,
            "how": (
                f"median wall time of {protocol.steps} steps/stage scaled linearly to {args.full_steps}, divided by "
                f"the batch size {len(case.y)} (fixed costs scaled too: an over-estimate when few steps are measured)"
                if extrapolated
                else "measured"
            ),
        },
        "peak_gpu_memory_bytes": peak if args.device.startswith("cuda") else None,
        "quality": quality,
        "load_average_1min": loads,
        "cpu_count": os.cpu_count(),
    }
    write_json_atomic(args.out, record)
    print(summary(record))
    print(f"-> {args.out}")
    return record


if __name__ == "__main__":
    run_script(main)
