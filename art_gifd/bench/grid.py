"""
Expansion of a benchmark configuration into jobs with stable identifiers.

A job is one (data set, model, batch size, defence setting, attack, seed) combination. Its identifier is a hash of
its canonical configuration (every value that can change its numbers, seed included), so the same job gets the same
identifier in every run, whatever the order of the configuration's entries or the other jobs around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from art_gifd.bench.components import utility_source
from art_gifd.bench.config import BenchConfig, canonical_hash, defense_label

#: Characters of the SHA-256 digest kept as a job identifier.
JOB_ID_LENGTH = 16


@dataclass(frozen=True)
class Job:
    """
    One benchmark job.

    :param job_id: Stable identifier: hash of :attr:`config`.
    :param label: Human-readable description, e.g. ``mnist/lenet/B1/noise(sigma=0.01)/gifd/seed0``.
    :param config: Canonical configuration: ``dataset``, ``model``, ``batch_size``, ``attack``, ``prior``,
                   ``defense``, ``utility``, ``device`` and ``seed``.
    :param resources: What the job asks of an executor: ``cpus`` (torch threads) and ``gpus``.
    :param utility_key: Hash of what the job's utility measurement depends on (jobs that share it share the number).
    """

    job_id: str
    label: str
    config: dict[str, Any]
    resources: dict[str, float]
    utility_key: str | None


@dataclass
class JobOutcome:
    """What running a job returns: its results line and, when it succeeded, the images for figures."""

    record: dict[str, Any]
    originals: np.ndarray | None = None
    reconstructions: np.ndarray | None = None


def job_id(config: dict[str, Any]) -> str:
    """The identifier of a job configuration."""
    return canonical_hash(config)[:JOB_ID_LENGTH]


def expand_grid(config: BenchConfig) -> list[Job]:
    """
    Every job of a configuration, seed by seed (so that a partial run has complete tables for its first seeds), then
    data set, model, batch size, defence setting and attack.

    An attack restricted to some data sets, models or defences (its ``datasets``, ``models``, ``defenses`` keys) is
    left out of the other combinations.

    :param config: The validated configuration.
    :return: The jobs, in running order.
    :raises ConfigError: For a grid of more than :data:`MAX_JOBS` jobs (counted without listing them).
    """
    count = job_count(config)
    if count > MAX_JOBS:
        raise config.error(
            ("seeds",),
            f"the grid has {count:,} jobs (seeds × data sets × models × batch sizes × defence settings × attacks), "
            f"more than {MAX_JOBS:,}: split it into several configurations, or shorten those lists.",
        )
    jobs = []
    for seed in config.seeds:
        for dataset in config.datasets:
            for model in config.models:
                for batch_size in config.batch_sizes:
                    for defense in config.defenses:
                        for point in defense["points"]:
                            for attack in config.attacks:
                                if not _selected(attack, dataset["name"], model, defense["name"]):
                                    continue
                                jobs.append(_job(config, seed, dataset, model, batch_size, defense, point, attack))
    return jobs


#: The most jobs one configuration may hold: a grid is listed and checked as a whole, and a larger one would take
#: months on a GPU at the paper's budget.
MAX_JOBS = 100_000


def job_count(config: BenchConfig) -> int:
    """How many jobs :func:`expand_grid` lists for a configuration, counted without listing them."""
    combinations = sum(
        len(defense["points"])
        for dataset in config.datasets
        for model in config.models
        for defense in config.defenses
        for attack in config.attacks
        if _selected(attack, dataset["name"], model, defense["name"])
    )
    return len(config.seeds) * len(config.batch_sizes) * combinations


def _selected(attack: dict[str, Any], dataset: str, model: str, defense: str) -> bool:
    return all(
        value in attack.get(key, [value])
        for key, value in (("datasets", dataset), ("models", model), ("defenses", defense))
    )


def _job(
    config: BenchConfig,
    seed: int,
    dataset: dict[str, Any],
    model: str,
    batch_size: int,
    defense: dict[str, Any],
    point: dict[str, Any],
    attack: dict[str, Any],
) -> Job:
    prior_name = attack.get("prior")
    defense_spec = {
        "name": defense["name"],
        "type": defense["type"],
        "grid": defense["grid"],
        "params": point["params"],
        "strength": point["strength"],
        "adaptive": point["adaptive"],
    }
    job_config = {
        "dataset": dataset,
        "model": model,
        "batch_size": batch_size,
        "attack": {k: attack[k] for k in ("name", "label", "params", "budget", "labels") if k in attack},
        "prior": {"name": prior_name, "spec": config.priors[prior_name]} if prior_name else None,
        "defense": defense_spec,
        "utility": config.utility,
        "device": config.device,
        "seed": seed,
    }
    if config.federated is not None:  # FedSGD jobs keep the identifiers they had before FedAvg existed
        job_config["federated"] = config.federated
    utility_key = None
    if config.utility is not None:
        utility_key = canonical_hash(
            {
                "model": model,
                "data": utility_source(dataset),
                "defense": {k: defense_spec[k] for k in ("type", "params")},
                "settings": config.utility,
                "device": config.device,
                "seed": seed,
            }
        )
    label = "/".join(
        (dataset["name"], model, f"B{batch_size}", defense_label(defense_spec), attack["label"], f"seed{seed}")
    )
    return Job(job_id(job_config), label, job_config, dict(config.resources), utility_key)
