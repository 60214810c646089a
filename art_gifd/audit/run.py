"""
Running an audit: every (batch size, defence, attack) setting of a validated :class:`~art_gifd.audit.config.AuditConfig`
on the clients' images, the utility of every defence, and the report.

A *setting* attacks ``images_per_setting`` private images in client batches of its batch size, once per seed: the
client's update is computed by :func:`~art_gifd.federated.client_gradients` (FedAvg:
:func:`~art_gifd.federated.client_update`) under the setting's defence, the attack is
built by :func:`~art_gifd.attacks.registry.build_attack` at the audit's step budget, and the reconstructions are scored
by :func:`~art_gifd.metrics.evaluate_batch` (Hungarian matching, PSNR, SSIM, LPIPS when available, label accuracy). All
attacks of a batch size and defence see the same shared updates (the defence's randomness is seeded by the seed and the
batch).

Every finished setting is saved at once as a record of the results file ``<output>/settings/records.jsonl``
(:class:`~art_gifd.store.ResultsFile`, the benchmark runner's store) after its images (``s-<key>.npz``, written
atomically), keyed by a hash of what its numbers depend on (:meth:`~art_gifd.audit.config.AuditConfig.setting_key`);
an interrupted audit started again skips the settings already finished, also when other parts of the configuration
(report names and thresholds, the utility run, other defences or attacks) were edited in between, and a damaged record
or image file costs only its own setting. The output folder is locked
while an audit writes it. The report (``report.html``, ``report.json``, ``summary.md``) is written last; an output
folder that already holds one is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from art_gifd.audit.config import (
    AttackSetting,
    AuditConfig,
    AuditConfigError,
    ConfigProblem,
    load_audit_config,
    locked_output,
)
from art_gifd.experiment import Case, aggregate_run, attack_batches
from art_gifd.federated import clip_range, describe_training
from art_gifd.metrics import LPIPSMetric, split_by_shared_label
from art_gifd.report.audit import (
    REPORT_FILES,
    RISK_ORDER,
    SCHEMA,
    UTILITY_FIGURE,
    chance_share,
    highest_risk,
    risk_rating,
    write_audit_report,
)
from art_gifd.report.figures import reconstruction_grid
from art_gifd.store import NULL, NUMBER, ResultsFile, environment, read_json, shape_problem, source_commit
from art_gifd.utility import measure_utility

logger = logging.getLogger(__name__)

#: Sub-folder of the output folder holding the finished settings and utility measurements.
STATE_DIR = "settings"
#: The results file in it: one record per finished setting (its images beside it) or utility measurement.
RECORDS = "records.jsonl"
#: The reconstruction grid written beside the report (and embedded in ``report.html``).
GRID_FILE = "reconstructions.png"


class AuditRunError(RuntimeError):
    """A setting of a valid audit failed while it ran; the settings finished before it are kept for a resume."""


@dataclass(frozen=True)
class Setting:
    """One row of the audit: a client batch size, a defence (index into the config's defences) and an attack."""

    batch_size: int
    defense: int
    attack: AttackSetting

    @property
    def id(self) -> str:
        """File-name-safe identifier, stable for a given configuration."""
        return f"b{self.batch_size}-d{self.defense}-{self.attack.slug}"


@dataclass
class AuditReport:
    """The outcome of :func:`run_audit`: the report document (``report.json``) and where the files are."""

    output: Path
    document: dict[str, Any]

    @property
    def html(self) -> Path:
        """The self-contained HTML report."""
        return self.output / "report.html"

    @property
    def json(self) -> Path:
        """The JSON report (schema ``art-gifd/audit/v1``)."""
        return self.output / "report.json"

    @property
    def summary(self) -> Path:
        """The Markdown summary."""
        return self.output / "summary.md"

    @property
    def settings(self) -> list[dict[str, Any]]:
        """One result per setting, in report order."""
        return self.document["settings"]

    @property
    def highest_risk(self) -> str:
        """The highest risk rating over all settings."""
        return self.document["summary"]["highest_risk"]


def plan_settings(config: AuditConfig) -> list[Setting]:
    """
    The settings of an audit, batch size by batch size, defence by defence (the baseline first), each attack under
    the defences it is not restricted from.
    """
    return [
        Setting(batch_size, d, attack)
        for batch_size in config.settings["federated"]["batch_sizes"]
        for d, defense in enumerate(config.defenses)
        for attack in config.attacks
        if attack.defenses is None or defense.label in attack.defenses
    ]


def run_audit(
    config: str | Path | Mapping[str, Any] | AuditConfig,
    overwrite: bool = False,
    resume: bool = True,
    verbose: bool = True,
) -> AuditReport:
    """
    Run an audit and write its report.

    :param config: A config file (TOML or YAML), its content as a mapping, or a loaded :class:`AuditConfig`.
    :param overwrite: Replace a report already in the output folder, discarding every earlier result there.
    :param resume: Reuse the settings an earlier run finished whose inputs are unchanged (``False``: run all).
    :param verbose: Show progress bars.
    :return: The report document and the paths of its files.
    :raises AuditConfigError: For an invalid configuration, or an output folder that holds a report while
                              ``overwrite`` is false; raised before any attack runs.
    :raises AuditRunError: When a setting fails while it runs (the settings finished before it are kept).
    """
    cfg = config if isinstance(config, AuditConfig) else load_audit_config(config)
    store = ResultsFile(cfg.output / STATE_DIR / RECORDS, arrays_dir=cfg.output / STATE_DIR)
    with locked_output(store, cfg.source):
        return _run_locked(cfg, store, overwrite, resume, verbose)


def _run_locked(cfg: AuditConfig, store: ResultsFile, overwrite: bool, resume: bool, verbose: bool) -> AuditReport:
    files = (*REPORT_FILES, GRID_FILE, UTILITY_FIGURE)
    done = prepare_output(cfg.output, files, store, overwrite, resume, cfg.source, _record_problem)
    lpips = LPIPSMetric(device=cfg.device)
    results, resumed = [], []
    settings = plan_settings(cfg)
    if verbose:  # the size of the work before the first bar, which counts settings
        runs = sum(len(cfg.x) // s.batch_size for s in settings) * len(cfg.settings["seeds"])
        tqdm.write(
            f"audit: {len(settings)} settings, {runs} attack runs (client batches × seeds), {len(cfg.defenses)} "
            f"utility runs of {cfg.settings['utility']['rounds']} rounds"
        )
    for setting in tqdm(settings, desc="audit settings", unit="setting", disable=not verbose):
        # a finished setting is found by what its numbers depend on, whatever else of the configuration changed
        key = "s-" + cfg.setting_key(setting.batch_size, cfg.defenses[setting.defense], setting.attack)[:24]
        images = store.load_arrays(key) if key in done else None
        if images is None:
            try:
                run, images = _run_setting(cfg, setting, lpips, verbose)
            except (ValueError, RuntimeError, MemoryError) as err:  # a search that diverged or ran out of memory, …
                raise AuditRunError(
                    f"setting {setting.id} (batch size {setting.batch_size}, defence "
                    f"'{cfg.defenses[setting.defense].label}', attack '{setting.attack.label}') failed: {err} The "
                    f"{len(results)} setting(s) finished before it are kept: fix the cause and run the same command "
                    "again to resume."
                ) from err
            store.save_arrays(key, images)
            store.append({"job_id": key, "config_hash": cfg.config_hash, "run": run})
        else:
            run = _with_lpips(done[key]["run"], images, lpips, clip_range(cfg.estimator))
            resumed.append(setting.id)
        results.append((_name_run(cfg, setting, run), images))
        logger.info("setting %s: SSIM %.3f, PSNR %.2f dB", setting.id, run["ssim"], run["psnr"])
    utility = []
    for index, defense in enumerate(cfg.defenses):
        key = "u-" + cfg.utility_key(defense)[:24]
        if key in done:
            measured = done[key]["utility"]
            resumed.append(f"utility-d{index}")
        else:
            try:
                measured = _measure(cfg, index, verbose)
            except (ValueError, RuntimeError) as err:  # a utility run that diverged
                raise AuditRunError(
                    f"the utility run of defence '{defense.label}' failed: {err} (its settings: [utility] "
                    f"learning_rate, rounds, batch_size). The {len(results)} attack setting(s) are kept: fix the cause "
                    "and run the same command again to resume."
                ) from err
            store.append({"job_id": key, "config_hash": cfg.config_hash, "utility": measured})
        utility.append({"defense": defense.label, **measured})
    document = _document(cfg, [r for r, _ in results], utility, resumed, lpips)
    grid = reconstruction_grid(
        _grid_rows(settings, results, cfg), ["reconstruction"], cfg.output / GRID_FILE, clip_range(cfg.estimator)
    )
    write_audit_report(document, cfg.output, grid)
    return AuditReport(cfg.output, document)


def prepare_output(
    out: Path,
    files: tuple[str, ...],
    store: ResultsFile,
    overwrite: bool,
    resume: bool,
    source: Path | None,
    check: Callable[[dict[str, Any]], str | None],
) -> dict[str, dict[str, Any]]:
    """
    Refuse an output folder that holds a finished report unless ``overwrite``, which removes the report ``files``
    and every earlier result. Returns the intact records a resumed run may reuse (none without ``resume``; ``check``
    names what is wrong with a damaged one, which is then done again); records are keyed by what their numbers
    depend on, so those of another configuration are simply not asked for.
    """
    # report.json is written last: without a readable one, report files beside this run's records are from its
    # interrupted write; without those records they are another run's (e.g. a demo's report.html)
    finished = read_json(out / "report.json") is not None or not store.path.exists()
    existing = [name for name in files if (out / name).exists()] if finished else []
    if existing and not overwrite:
        raise AuditConfigError(
            [
                ConfigProblem(
                    "output",
                    f"'{out}' already holds a report ({', '.join(existing)}): pass overwrite=True (art-gifd audit "
                    "--overwrite) to replace it, or choose another output folder.",
                )
            ],
            source,
        )
    if overwrite:
        for name in files:
            (out / name).unlink(missing_ok=True)
        store.clear()
        return {}
    # read (and a torn last line repaired) either way; without resume, new records supersede the old ones
    done = store.latest(repair=True, check=check)
    return done if resume else {}


_MAYBE_NUMBER = (*NUMBER, NULL)
#: What the report reads of a resumed setting's record (see :func:`~art_gifd.store.shape_problem`).
SETTING_SHAPE = {
    "run": {
        "psnr": NUMBER,
        "psnr_std": NUMBER,
        "ssim": NUMBER,
        "ssim_std": NUMBER,
        "lpips": _MAYBE_NUMBER,
        "label_accuracy": NUMBER,
        "num_images": int,
        "steps": int,
        "num_restarts": int,
        "seconds": NUMBER,
        "labels_known": bool,
        "chance_ssim": (NULL, [NUMBER]),
        "per_image": {"psnr": [NUMBER], "ssim": [NUMBER], "lpips": (NULL, [NUMBER]), "shared_label?": [bool]},
    }
}
#: ... and of a defence's utility record.
UTILITY_SHAPE = {"utility": {"gradient_cosine": NUMBER, "accuracy": _MAYBE_NUMBER, "rounds": int}}


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a record read back for a resume (``None``: a setting's scores or a utility, intact)."""
    if "run" in record:
        return shape_problem(record, SETTING_SHAPE)
    if "utility" in record:
        return shape_problem(record, UTILITY_SHAPE)
    return "neither a setting's scores (run) nor a defence's utility"


def _run_setting(
    cfg: AuditConfig, setting: Setting, lpips: LPIPSMetric, verbose: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Attack every batch of the setting under every seed; the aggregated record and the matched images."""
    defense = cfg.defenses[setting.defense]
    model, b, attack = cfg.settings["model"], setting.batch_size, setting.attack
    seeds = cfg.settings["seeds"]
    per_batch, originals, reconstructions = [], [], []
    for seed in seeds:
        for x, scores, result, matched in attack_batches(
            cfg.estimator,
            cfg.x,
            cfg.y,
            attack.name,
            cfg.priors.get(attack.prior),  # type: ignore[arg-type]  # None only for the non-generative attacks
            attack.budget,
            b,
            seed,
            defense=defense.defense,
            adaptive=defense.adaptive,
            labels_known=attack.labels_known,
            train_mode=model["train_mode"],
            device=cfg.device,
            verbose=verbose,
            attack_params=attack.params,
            lpips=lpips,
            training=cfg.training,
            chance=True,
        ):
            per_batch.append((scores, result))
            originals.append(x)
            reconstructions.append(matched)
    case = Case(
        model=cfg.model.get("factory") or Path(cfg.model.get("torchscript", "model")).name,
        dataset=cfg.data.get("name") or Path(cfg.data.get("folder", "data")).name,
        batch_size=b,
        num_images=len(cfg.x) * len(seeds),
        defense=defense.defense,
        adaptive=defense.adaptive,
        training=cfg.training,
    )
    prior_name = cfg.prior_info[attack.prior]["name"] if attack.prior is not None else None
    run = aggregate_run(case, attack.name, prior_name, per_batch, lpips)
    run.update(
        images=len(cfg.x),
        seeds=list(seeds),
        labels_known=attack.labels_known,
        measured_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return run, {"originals": np.concatenate(originals), "reconstructions": np.concatenate(reconstructions)}


def _with_lpips(
    run: dict[str, Any], images: dict[str, np.ndarray], lpips: LPIPSMetric, data_range: tuple[float, float]
) -> dict[str, Any]:
    """
    A resumed setting's record with LPIPS scored again from its saved images by this run's metric: a setting
    finished while LPIPS was available (or not, or with other weights) reports what the rest of the report states.
    """
    values = (
        [float(v) for v in lpips(images["reconstructions"], images["originals"], data_range)]
        if lpips.available
        else None
    )
    return {
        **run,
        "lpips": float(np.mean(values)) if values else None,
        "lpips_unavailable_reason": None if lpips.available else lpips.reason,
        "per_image": {**run["per_image"], "lpips": values},
    }


def _name_run(cfg: AuditConfig, setting: Setting, run: dict[str, Any]) -> dict[str, Any]:
    """A setting's measured record with what this configuration calls it and how its thresholds count it."""
    threshold = cfg.settings["report"]["recognisable_ssim"]
    recognisable = int(sum(v >= threshold for v in run["per_image"]["ssim"]))
    return {
        **run,
        "id": setting.id,
        "config_hash": cfg.config_hash,
        "defense_label": cfg.defenses[setting.defense].label,
        "attack_label": setting.attack.label,
        "recognisable": recognisable,
        "recognisable_share": recognisable / run["num_images"],
        "chance_share": chance_share(run["chance_ssim"], threshold),
    }


def _measure(cfg: AuditConfig, index: int, verbose: bool = False) -> dict[str, Any]:
    """Utility of one defence (:func:`~art_gifd.utility.measure_utility`) on the audit's utility split."""
    utility = cfg.settings["utility"]
    return measure_utility(
        cfg.defenses[index].defense,
        cfg.estimator,
        data=cfg.utility_data,
        rounds=utility["rounds"],
        batch_size=utility["batch_size"],
        learning_rate=utility["learning_rate"],
        probe_batches=utility["probe_batches"],
        seed=cfg.settings["seeds"][0],
        train_mode=cfg.settings["model"]["train_mode"],
        verbose=verbose,
    ).as_dict()


def _grid_rows(
    settings: list[Setting], results: list[tuple[dict, dict[str, np.ndarray]]], cfg: AuditConfig
) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """Best and worst reconstruction (by SSIM) of every setting, for the reconstruction grid."""
    rows = []
    for setting, (run, images) in zip(settings, results, strict=True):
        ssim = np.asarray(run["per_image"]["ssim"])
        name = (
            textwrap.fill(f"B={setting.batch_size} {cfg.defenses[setting.defense].label}", 24)
            + f"\n{setting.attack.label}"
        )
        picks = [("best", int(np.argmax(ssim))), ("worst", int(np.argmin(ssim)))] if len(ssim) > 1 else [("", 0)]
        for which, i in picks:
            label = f"{name} {which}\nSSIM {ssim[i]:.3f}".replace("  ", " ")
            rows.append((label, images["originals"][i], {"reconstruction": images["reconstructions"][i]}))
    return rows


def _document(
    cfg: AuditConfig,
    runs: list[dict[str, Any]],
    utility: list[dict[str, Any]],
    resumed: list[str],
    lpips: LPIPSMetric,
) -> dict[str, Any]:
    """The report document (schema ``art-gifd/audit/v1``): every number in it was measured by this audit."""
    s = cfg.settings
    thresholds = s["report"]
    records = []
    for run in runs:
        rating = risk_rating(
            run["recognisable_share"], thresholds["high_share"], thresholds["medium_share"], run["chance_share"]
        )
        records.append({**run, "risk": rating})
    defended = [d for d in cfg.defenses if d.defense is not None]
    return {
        "schema": SCHEMA,
        "title": s["title"] or f"Gradient-leakage audit of {cfg.model.get('factory') or cfg.model.get('torchscript')}",
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config_hash": cfg.config_hash,
        "scope": _scope(cfg),
        "system": {
            "model": {
                **cfg.model,
                "input_shape": s["model"]["input_shape"],
                "num_classes": s["model"]["num_classes"],
                "loss": s["model"]["loss"],
                "clip_values": s["model"]["clip_values"],
                "preprocessing": s["model"]["preprocessing"],
                "train_mode": s["model"]["train_mode"],
            },
            "data": cfg.data,
            "federated": {
                **s["federated"],
                "description": describe_training(cfg.training) if cfg.training is not None else None,
            },
            "defenses": [d.describe() for d in cfg.defenses],
            "dp": [d.label for d in defended if d.describe()["epsilon"] is not None],
        },
        "attacks": {
            "names": [a.label for a in cfg.attacks],
            "list": [
                {
                    "label": a.label,
                    "name": a.name,
                    "prior": a.prior,
                    **a.budget.__dict__,
                    "total_steps": a.budget.total_steps,
                    # what ran: GIAS splits the budget over its two stages, L-BFGS may pass it by a line search
                    "steps_run": _ran(runs, a.label, "steps"),
                    "labels": "known" if a.labels_known else "inferred",
                    "params": a.params,
                    "defenses": list(a.defenses) if a.defenses is not None else None,
                }
                for a in cfg.attacks
            ],
            "total_steps": _as_run(runs, "steps"),
            "restarts": _as_run(runs, "num_restarts"),
            "labels": _label_mode(cfg),
            "priors": cfg.prior_info,
        },
        "thresholds": thresholds,
        "lpips": {"available": lpips.available, "reason": lpips.reason},
        "settings": records,
        "utility": utility,
        "summary": {
            "highest_risk": highest_risk(r["risk"] for r in records),
            "counts": {level: sum(r["risk"] == level for r in records) for level in RISK_ORDER},
        },
        "limitations": _limitations(cfg, runs, lpips),
        "reproducibility": {
            "environment": environment(s["seeds"][0], cfg.device),
            "seeds": s["seeds"],
            "git": source_commit(),
            "config_hash": cfg.config_hash,
            "config_file": str(cfg.source.resolve()) if cfg.source else None,
            "resumed": resumed,
        },
        "config": s,
    }


def _scope(cfg: AuditConfig) -> dict[str, Any]:
    """Threat model of the audit, in words."""
    labels = _label_mode(cfg)
    knowledge = ["the FL model's architecture and current weights (the model under audit)"]
    if cfg.training is None:
        knowledge += [
            "the update one client shares after one FedSGD step on one private batch, after the client's defence",
            "the client batch size",
        ]
    else:
        knowledge += [
            f"the weight update one client shares after its local training ({describe_training(cfg.training)}), "
            "after the client's defence",
            "the number of private samples of the client and the local training's hyper-parameters (learning rate, "
            "steps, mini-batch size, optimiser), which the server sets",
            "the mini-batch order (the client's shuffle seed)"
            if cfg.training.order_known
            else "not the mini-batch order: each local step is replayed on all of the client's samples",
        ]
    known = [a.label for a in cfg.attacks if a.labels_known]
    knowledge.append(
        {
            "known": "the labels of the private batch",
            "inferred": "not the labels: they are inferred from the update",
            "mixed": f"the labels of the private batch, for the attacks {', '.join(known)}; the others infer them "
            "from the update",
        }[labels]
    )
    adaptive = [d.label for d in cfg.defenses if d.adaptive]
    if adaptive:
        knowledge.append(f"the defences {', '.join(adaptive)}, which it replays on its own dummy gradients (adaptive)")
    for facts in cfg.prior_info.values():
        knowledge.append(
            f"a generative prior ('{facts['name']}') trained on public data: {facts.get('training_domain', 'unknown')}"
        )
    return {
        "threat_model": (
            "An honest-but-curious server (or anyone who sees the shared update) tries to reconstruct a client's "
            "private images from the update it shares, without changing the model or the protocol."
        ),
        "attacker_knowledge": knowledge,
        "labels": labels,
        "priors": list(cfg.prior_info.values()),
        "data_domain": cfg.data,
    }


def _label_mode(cfg: AuditConfig) -> str:
    """What the attacks know of the labels: ``known`` (all), ``inferred`` (none) or ``mixed``."""
    known = {a.labels_known for a in cfg.attacks}
    return "mixed" if len(known) > 1 else ("known" if known.pop() else "inferred")


def _ran(runs: list[dict[str, Any]], label: str, key: str) -> int | str | None:
    """What one attack's settings ran (``steps``): one number if they agree, else the values; ``None``: no setting."""
    values = sorted({run[key] for run in runs if run["attack_label"] == label})
    return None if not values else values[0] if len(values) == 1 else ", ".join(map(str, values))


def _as_run(runs: list[dict[str, Any]], key: str) -> int | str:
    """What the attacks ran (``steps``, ``num_restarts``): one number if all agree, else ``"gifd: 3, pixel: 1"``."""
    per_attack = {run["attack_label"]: run[key] for run in runs}
    values = set(per_attack.values())
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{attack}: {value}" for attack, value in per_attack.items())


def _limitations(cfg: AuditConfig, runs: list[dict[str, Any]], lpips: LPIPSMetric) -> list[str]:
    s = cfg.settings
    n = len(cfg.x) * len(s["seeds"])
    items = [
        f"Only the attacks {', '.join(a.label for a in cfg.attacks)} were run, at {_as_run(runs, 'steps')} "
        f"optimisation steps and {_as_run(runs, 'num_restarts')} restart(s) per reconstruction. A stronger attacker "
        "(more steps, a GPU budget, another prior, a new attack) may reconstruct more: a low rating is not a proof of "
        "privacy.",
        (
            "One FedSGD step of one client batch is attacked. Several local steps (FedAvg), secure aggregation, and "
            "updates observed over many rounds are not covered."
            if cfg.training is None
            else f"One FedAvg update per client is attacked ({describe_training(cfg.training)}), with the local "
            "training's hyper-parameters known to the attacker"
            + ("" if cfg.training.order_known else " but not its mini-batch order (approximated by full-batch steps)")
            + ". Secure aggregation and updates observed over many rounds are not covered."
        ),
        "The server is honest-but-curious. A malicious server that modifies the model or its weights (for example to "
        "plant trap neurons) can extract far more and is not tested.",
        f"Each setting scores {n} reconstruction(s) ({len(cfg.x)} image(s) x {len(s['seeds'])} seed(s)): shares move "
        f"in steps of 1/{n} and carry sampling uncertainty.",
        f"A reconstruction counts as recognisable when its SSIM is at least {s['report']['recognisable_ssim']:g}: a "
        "proxy for human recognition that can miss identifying details or count a blurry look-alike.",
        "Differential-privacy (epsilon, delta) values come from Opacus' accountant for the declared sampling rate and "
        "number of training steps; the audit does not check them against the deployment.",
        (
            f"Utility is measured by a short FedSGD run ({s['utility']['rounds']} rounds) on the audit data, not by "
            "the production training."
            if s["utility"]["rounds"]
            else "Utility is the cosine of defended and clean updates only (utility rounds = 0): no training run "
            "measures what a defence costs in accuracy; the accuracy shown is the model's as audited."
        ),
        "The model is audited at its current weights; leakage changes as training goes on.",
    ]
    wrong = [run for run in runs if run["label_accuracy"] < 1.0 and not run["labels_known"]]
    if wrong:
        worst = min(wrong, key=lambda run: run["label_accuracy"])
        items.append(
            f"Labels were inferred from the updates and were partly wrong in {len(wrong)} of {len(runs)} setting(s) "
            f"(lowest label accuracy {worst['label_accuracy']:.2f}, setting {worst['id']}); reconstructions with wrong "
            "labels score lower. Label inference is least reliable on confident (trained) models. An attacker who "
            'knows the labels may reconstruct more: set labels = "known" in an [[attacks]] table for the worst case.'
        )
    shared = _shared_label_note(runs)
    if shared:
        items.append(shared)
    if not lpips.available:
        items.append(f"LPIPS was not computed: {lpips.reason}")
    return items


def _shared_label_note(runs: list[dict[str, Any]]) -> str | None:
    """
    How the images that share their label with another image of their client batch fared against the others, over
    the settings that hold both kinds (``None`` if none does; records from before the split was kept are skipped).
    """
    gaps = []
    for run in runs:
        split = split_by_shared_label(run["per_image"])
        if split is not None and all(len(part) for part in split):
            gaps.append((run["id"], *split))
    if not gaps:
        return None
    shared = np.concatenate([g[1] for g in gaps])
    own = np.concatenate([g[2] for g in gaps])
    worst = max(gaps, key=lambda g: g[2].mean() - g[1].mean())
    return (
        f"In {len(gaps)} batched setting(s), {len(shared)} of {len(shared) + len(own)} reconstructions were of images "
        f"that share their label with another image of their client batch. The attacks recovered those at "
        f"{shared.mean():.2f} dB mean PSNR against {own.mean():.2f} dB for images with a label of their own (largest "
        f"gap: setting {worst[0]}, {worst[1].mean():.2f} against {worst[2].mean():.2f} dB). The update carries the "
        "images of one label through the same classifier-head row, so they are harder to tell apart: this is a limit "
        "of the attacks run here, not a protection, and a stronger attacker may recover them."
    )
