"""
Aggregate a benchmark results file into tables and figures (``art-gifd bench-report RESULTS.jsonl``).

Jobs that differ only by their seed form one *setting*. Per setting: PSNR, SSIM and LPIPS as mean ± standard deviation
over every attacked image of every seed (population std, the images pooled), label accuracy and the utility's test
accuracy and gradient cosine as mean ± std over the seeds' jobs, the defence's (epsilon, delta), and the job count.

Written into the output folder: ``tables.md`` (a PSNR table attacks × defences per data set / model / batch size, then
every setting with every metric, then the failed jobs), ``tables.json`` (the same numbers), and ``figures/``:
leakage vs defence strength per defence (one line per attack), privacy–utility (leakage vs test accuracy, and vs
epsilon for DP-SGD), and reconstruction grids (original | each attack, one row per defence setting and set of attacked
images). The figures of an earlier report in the same folder are removed first, so that none of them outlives its
results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.bench.config import BenchConfig, canonical_json
from art_gifd.bench.grid import defense_label, expand_grid
from art_gifd.bench.runner import read_results
from art_gifd.federated import LocalTraining, describe_training
from art_gifd.metrics import split_by_shared_label
from art_gifd.report.figures import plain_text, pyplot
from art_gifd.report.html import markdown_text
from art_gifd.store import ResultsFile, file_slug, write_json_atomic

logger = logging.getLogger(__name__)

REPORT_SCHEMA = "art-gifd/bench-report/v1"
METRICS = ("psnr", "ssim", "lpips")
METRIC_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
#: Rows of a reconstruction grid at most (one per defence setting and set of attacked images).
MAX_GRID_ROWS = 16
#: File-name prefixes of the figures a report writes into ``figures/`` (all ``.png``).
FIGURE_PREFIXES = ("leakage_", "privacy_utility_", "dp_epsilon_", "reconstructions_")


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    data = [float(v) for v in values if v is not None]
    if not data:
        return None, None
    return float(np.mean(data)), float(np.std(data))


def aggregate(
    records: list[dict[str, Any]], config: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    Group job records into settings (the job configuration without its seed) and summarise each.

    :param records: The latest record of every job (``status`` ``ok`` or ``error``), in file order.
    :param config: The benchmark configuration (a run header's ``config``): rows follow its grid order, whatever
                   order parallel workers finished the jobs in. ``None``: order of first appearance.
    :return: ``(rows, errors)``: one row per setting that has at least one successful job, and one entry per
             failed job, with ``replaced`` true where a later successful job has its label (a job of an older
             configuration, fixed and rerun under a new job id).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    errors = []
    for record in records:
        if record["status"] != "ok":
            error = record["error"]
            errors.append({"job_id": record["job_id"], "label": record["label"], **error, "replaced": False})
            continue
        for error in errors:
            error["replaced"] |= error["label"] == record["label"]
        setting = {k: v for k, v in record["config"].items() if k != "seed"}
        groups.setdefault(canonical_json(setting), []).append(record)
    rows = [_row(jobs) for jobs in groups.values()]
    _name_variants(rows, [json.loads(key) for key in groups])
    if config is not None:
        rows.sort(key=lambda row: _grid_position(row, config))  # stable: settings the config lacks stay in order
    return rows, errors


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): json.dumps(value, sort_keys=True)}


def _name_variants(rows: list[dict[str, Any]], settings: list[dict[str, Any]]) -> None:
    """
    Rows that would print alike (same data set, model, batch size, attack label and defence point) but come from
    different configurations (e.g. two runs with other budgets in one file) get a ``variant`` naming what differs,
    appended to their attack label.
    """
    alike: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        key = (row["dataset"], row["model"], row["batch_size"], row["attack"], row["defense_label"], row["adaptive"])
        alike.setdefault(key, []).append(index)
    for indices in (group for group in alike.values() if len(group) > 1):
        flat = [_flatten(settings[i]) for i in indices]
        differing = sorted({k for f in flat for k in f if len({g.get(k) for g in flat}) > 1})
        for i, f in zip(indices, flat, strict=True):
            rows[i]["variant"] = ", ".join(f"{k}={f.get(k, 'none')}" for k in differing)
            rows[i]["attack"] = f"{rows[i]['attack']} [{rows[i]['variant']}]"


def _grid_position(row: dict[str, Any], config: dict[str, Any]) -> tuple[int, ...]:
    """Where a row's setting lies in the configuration's grid; names it does not hold sort last."""

    def index(items: list[Any], value: Any) -> int:
        return items.index(value) if value in items else len(items)

    defenses = config.get("defenses", [])
    defense = index([d["name"] for d in defenses], row["defense"])
    points = [(p["strength"], p["adaptive"]) for p in defenses[defense]["points"]] if defense < len(defenses) else []
    return (
        index([d["name"] for d in config.get("datasets", [])], row["dataset"]),
        index(config.get("models", []), row["model"]),
        index(config.get("batch_sizes", []), row["batch_size"]),
        defense,
        index(points, (row["strength"], row["adaptive"])),
        index([a["label"] for a in config.get("attacks", [])], row["attack"]),
    )


def _row(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    config = jobs[0]["config"]
    defense = config["defense"]
    row: dict[str, Any] = {
        "dataset": config["dataset"]["name"],
        "model": config["model"],
        "batch_size": config["batch_size"],
        "attack": config["attack"]["label"],
        "attack_name": config["attack"]["name"],
        "defense": defense["name"],
        "defense_type": defense["type"],
        "defense_label": defense_label(defense),
        "grid": defense["grid"],
        "strength": defense["strength"],
        "adaptive": bool(jobs[0]["defense"]["adaptive"]),
        "epsilon": jobs[0].get("epsilon"),
        "delta": jobs[0].get("delta"),
        "seeds": sorted(j["config"]["seed"] for j in jobs),
        "num_images": sum(len(j["result"]["per_image"]["psnr"]) for j in jobs),
        "job_ids": [j["job_id"] for j in jobs],
    }
    for metric in METRICS:
        values = [v for j in jobs for v in (j["result"]["per_image"][metric] or [])]
        row[metric], row[f"{metric}_std"] = _mean_std(values)
    splits = [split for j in jobs if (split := split_by_shared_label(j["result"]["per_image"])) is not None]
    for index, name in enumerate(("shared_label", "own_label")):
        values = [float(v) for split in splits for v in split[index]]
        row[f"psnr_{name}"], row[f"psnr_{name}_std"] = _mean_std(values)
        row[f"num_images_{name}"] = len(values)
    reasons = {j["result"].get("lpips_unavailable_reason") for j in jobs} - {None}
    row["lpips_unavailable_reason"] = sorted(reasons)[0] if reasons else None
    row["label_accuracy"], row["label_accuracy_std"] = _mean_std(j["result"]["label_accuracy"] for j in jobs)
    utilities = [j["utility"] for j in jobs if j.get("utility")]
    row["accuracy"], row["accuracy_std"] = _mean_std(u["accuracy"] for u in utilities)
    row["gradient_cosine"], row["gradient_cosine_std"] = _mean_std(u["gradient_cosine"] for u in utilities)
    row["seconds"], _ = _mean_std(j["seconds"] for j in jobs)
    return row


def _cell(mean: float | None, std: float | None, digits: int) -> str:
    return "n/a" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _case_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["dataset"], row["model"], row["batch_size"]


def _epsilon(row: dict[str, Any]) -> str:
    if row["epsilon"] is None:
        return "–"
    return f"{row['epsilon']:.3g}" + ("" if row["delta"] is None else f" ({row['delta']:g})")


def progress(config: dict[str, Any] | None, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """
    How much of a configuration's grid the records hold: ``planned`` and ``finished`` job counts, how many of the
    finished ones ``failed`` (their latest record is an error), and the labels of the ``missing`` jobs (``None`` when
    the configuration cannot be expanded, e.g. one written by an older version).
    """
    try:
        planned = expand_grid(BenchConfig(**config)) if config is not None else None
    except (TypeError, KeyError, ValueError):
        planned = None
    if planned is None:
        return None
    held = {r["job_id"]: r["status"] for r in records}
    missing = [job.label for job in planned if job.job_id not in held]
    failed = sum(held.get(job.job_id) == "error" for job in planned)
    return {"planned": len(planned), "finished": len(planned) - len(missing), "failed": failed, "missing": missing}


def markdown(
    rows: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    title: str,
    jobs: dict[str, Any] | None = None,
) -> str:
    """The Markdown tables of a report (labels, names and the title through :func:`markdown_text`)."""
    rows = [{k: markdown_text(v) for k, v in r.items()} for r in rows]
    errors = [{k: markdown_text(v) for k, v in e.items()} for e in errors]
    lines = [f"# Benchmark report: {markdown_text(title)}", ""]
    for run in runs:
        lines.append(
            f"- run {run.get('date')}: `{run.get('command')}`, git commit `{run.get('git_commit')}`"
            f"{' (uncommitted changes)' if run.get('git_dirty') else ''}, device {run.get('device')}, "
            f"config hash `{str(run.get('config_hash'))[:12]}`, executor {run.get('executor', {}).get('name')}"
        )
    # failures are counted apart: a job that ended in an error has finished but has no numbers
    failed = f", {jobs['failed']} of them failed (see Failed jobs)" if jobs is not None and jobs["failed"] else ""
    if jobs is not None and jobs["missing"]:
        shown = ", ".join(markdown_text(label) for label in jobs["missing"][:5])
        more = f" and {len(jobs['missing']) - 5} more" if len(jobs["missing"]) > 5 else ""
        lines.append(
            f"- **incomplete**: {jobs['finished']} of the latest configuration's {jobs['planned']} jobs finished"
            f"{failed}; not run yet: {shown}{more} (run `art-gifd bench` on this results file again to finish them)"
        )
    elif jobs is not None and jobs["failed"] == jobs["planned"]:
        lines.append(
            f"- **failed**: {jobs['failed']} of {jobs['planned']} jobs of the latest configuration failed (see Failed "
            "jobs): fix the cause, then rerun `art-gifd bench` on this results file with `--retry-errors`"
        )
    elif jobs is not None:
        lines.append(f"- complete: all {jobs['planned']} jobs of the latest configuration finished{failed}")
    config = runs[-1].get("config", {}) if runs else {}
    if config.get("federated"):  # B then counts a client's private samples, trained on locally
        try:
            protocol = describe_training(LocalTraining(**config["federated"]))
        except (TypeError, ValueError):
            protocol = str(config["federated"])
        lines.append(f"- protocol: FedAvg, {markdown_text(protocol)}; batch B = the private samples of a client")
    given = [a.get("label", a.get("name")) for a in config.get("attacks", []) if a.get("labels") == "known"]
    if given:
        lines.append(
            f"- labels given to {', '.join(markdown_text(str(g)) for g in given)} (not inferred): their label accuracy "
            "is 1 by construction"
        )
    lines += [
        "",
        "Leakage: mean ± std over every attacked image of every seed "
        "(higher PSNR/SSIM and lower LPIPS = more leakage). "
        "Accuracy: test accuracy after the utility's short FedSGD run under the defence, mean ± std over seeds.",
    ]
    for case in dict.fromkeys(_case_key(r) for r in rows):
        selected = [r for r in rows if _case_key(r) == case]
        attacks = list(dict.fromkeys(r["attack"] for r in selected))
        settings = list(dict.fromkeys(r["defense_label"] for r in selected))
        lines += [
            "",
            f"## {case[0]} / {case[1]} / batch {case[2]}: PSNR (dB)",
            "",
            "| defence | ε (δ) | accuracy | " + " | ".join(attacks) + " |",
            "|---|---|---|" + "---|" * len(attacks),
        ]
        for setting in settings:
            cells = {r["attack"]: r for r in selected if r["defense_label"] == setting}
            first = next(iter(cells.values()))
            lines.append(
                f"| {setting} | {_epsilon(first)} | {_cell(first['accuracy'], first['accuracy_std'], 3)} | "
                + " | ".join(_cell(cells[a]["psnr"], cells[a]["psnr_std"], 2) if a in cells else "–" for a in attacks)
                + " |"
            )
    lines += [
        "",
        "## Every setting",
        "",
        "| data | model | B | defence | ε (δ) | attack | PSNR (dB) | SSIM | LPIPS | labels | accuracy | grad cos | "
        "images | seeds | s/job |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['batch_size']} | {r['defense_label']} | {_epsilon(r)} | "
            f"{r['attack']} | {_cell(r['psnr'], r['psnr_std'], 2)} | {_cell(r['ssim'], r['ssim_std'], 3)} | "
            f"{_cell(r['lpips'], r['lpips_std'], 3)} | {_cell(r['label_accuracy'], r['label_accuracy_std'], 2)} | "
            f"{_cell(r['accuracy'], r['accuracy_std'], 3)} | "
            f"{_cell(r['gradient_cosine'], r['gradient_cosine_std'], 3)} | {r['num_images']} | {len(r['seeds'])} | "
            f"{r['seconds']:.1f} |"
        )
    mixed = [r for r in rows if r["num_images_shared_label"] and r["num_images_own_label"]]
    if mixed:
        lines += [
            "",
            "## Images that share their label with another image of their client batch",
            "",
            "The update carries the images of one label through the same classifier-head row, so the attacks tell "
            "them apart worse: a low PSNR there is a limit of the attack, not a protection. PSNR (dB), mean ± std; "
            "settings that hold both kinds of image.",
            "",
            "| data | model | B | defence | attack | label of its own: images, PSNR | shared label: images, PSNR |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in mixed:
            lines.append(
                f"| {r['dataset']} | {r['model']} | {r['batch_size']} | {r['defense_label']} | {r['attack']} | "
                f"{r['num_images_own_label']}, {_cell(r['psnr_own_label'], r['psnr_own_label_std'], 2)} | "
                f"{r['num_images_shared_label']}, {_cell(r['psnr_shared_label'], r['psnr_shared_label_std'], 2)} |"
            )
    # the reason was recorded when the jobs ran and is not checked again: finished jobs are never rerun
    reasons = sorted({r["lpips_unavailable_reason"] for r in rows if r["lpips_unavailable_reason"]})
    lines += [""] + [
        f"LPIPS n/a: when these jobs ran, LPIPS was unavailable: {reason.rstrip('.')}. They keep n/a (finished jobs "
        "are not run again): to measure it, make LPIPS available, then run the configuration into a new results file "
        "(`art-gifd bench CONFIG --results NEW.jsonl`)."
        for reason in reasons
    ]
    if errors:
        lines += ["", "## Failed jobs", "", "| job | error |", "|---|---|"]
        lines += [
            f"| {e['label']}{' (replaced by a later successful job)' if e['replaced'] else ''} | {e['type']}: "
            f"{_shorten(e['message'])} |"
            for e in errors
        ]
    return "\n".join(lines) + "\n"


def _shorten(text: str, limit: int = 200) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(results: str | Path, out: str | Path | None = None) -> list[Path]:
    """
    Write the tables and figures of a results file.

    :param results: The JSON-lines results file of ``art-gifd bench``.
    :param out: Output folder (default: ``<results stem>-report`` beside the file).
    :return: The files written. The figures of an earlier report in ``out`` (the file names this function writes,
             no other file) are removed first. A warning says when no job succeeded, and when the reconstructions
             folder (``<results stem>.recon/``) lacks the jobs' reconstructions, so that a grid is missing.
    :raises FileNotFoundError: If the results file does not exist.
    :raises ValueError: If it is not a results file of ``art-gifd bench`` or holds no job yet. A line of the wrong
                        shape (edited by hand) is left out, with a warning naming it.
    """
    store = ResultsFile(results)
    if not store.path.is_file():
        raise FileNotFoundError(f"Results file '{store.path}' not found.")
    way_out = "give the --results file that 'art-gifd bench' wrote"
    runs, jobs = read_results(store, way_out)
    records = list({r["job_id"]: r for r in jobs}.values())
    if not runs and not records:
        raise ValueError(
            f"'{store.path}' is not a results file of art-gifd bench (no run header, no job record): {way_out}."
        )
    if not records:
        raise ValueError(f"'{store.path}' holds no finished job yet: run 'art-gifd bench' on it first.")
    rows, errors = aggregate(records, runs[-1]["config"] if runs else None)
    jobs = progress(runs[-1]["config"] if runs else None, records)
    out = Path(out) if out is not None else store.path.with_name(store.path.stem + "-report")
    out.mkdir(parents=True, exist_ok=True)
    title = runs[-1]["config"].get("name", store.path.stem) if runs else store.path.stem
    document = {
        "schema": REPORT_SCHEMA,
        "results": str(store.path),
        "runs": [{k: v for k, v in run.items() if k not in ("config", "environment")} for run in runs],
        "environment": runs[-1].get("environment") if runs else None,
        "jobs": jobs,
        "rows": rows,
        "errors": errors,
    }
    figures = out / "figures"
    # an earlier report's figures (of another results file, or of cases this one lacks) would read as current
    for path in (p for prefix in FIGURE_PREFIXES for p in figures.glob(f"{prefix}*.png") if p.is_file()):
        path.unlink()
    written = [out / "tables.json", out / "tables.md"]
    write_json_atomic(written[0], document)
    _write_text_atomic(written[1], markdown(rows, errors, runs, title, jobs))
    if not rows:
        logger.warning(
            "none of the %d jobs in '%s' succeeded: the report holds no numbers, only the failed jobs in '%s'; fix "
            "the cause, then rerun 'art-gifd bench' on that results file with --retry-errors",
            len(records),
            store.path,
            written[1],
        )
    without_grid = []
    for case in dict.fromkeys(_case_key(r) for r in rows):
        selected = [r for r in rows if _case_key(r) == case]
        tag, title = file_slug("_".join(map(str, case))), f"{case[0]}, {case[1]}, B={case[2]}"  # file name, title
        written += leakage_figures(selected, figures, tag, title)
        written += privacy_utility_figures(selected, figures, tag, title)
        grid = reconstruction_figure(selected, store, figures / f"reconstructions_{tag}.png")
        written += [grid] if grid else []
        without_grid += [] if grid else ["/".join(map(str, case))]
    if without_grid:
        found = "is missing" if not store.arrays_dir.is_dir() else "holds none of these jobs' reconstructions"
        logger.warning(
            "no reconstruction grid for %s: '%s' %s; copy there the '%s' folder that 'art-gifd bench' wrote beside "
            "the results file, and report again",
            ", ".join(without_grid),
            store.arrays_dir,
            found,
            store.arrays_dir.name,
        )
    return written


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _series_name(row: dict[str, Any]) -> str:
    return row["attack"] + (" (adaptive)" if row["adaptive"] else "")


def _x_value(row: dict[str, Any]) -> float | None:
    """Strength of a grid point on the figure's x axis: epsilon for DP-SGD from a target epsilon."""
    if row["grid"] == "epsilon" and row["epsilon"] is not None:
        return float(row["epsilon"])
    return float(row["strength"]) if isinstance(row["strength"], int | float) else None


def _log_scale(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 20


@plain_text
def leakage_figures(rows: list[dict[str, Any]], folder: Path, tag: str, title: str) -> list[Path]:
    """
    One figure per defence with a strength grid: PSNR, SSIM and LPIPS (panels) vs strength, one line per attack, the
    undefended value as a dotted line of the same colour. ``tag`` is the case in the file names, ``title`` as shown.
    """
    plt = pyplot()
    baseline = {r["attack"]: r for r in rows if r["defense_type"] == "none"}
    metrics = [m for m in METRICS if any(r[m] is not None for r in rows)]
    written = []
    for defense in dict.fromkeys(r["defense"] for r in rows if r["grid"] is not None):
        selected = [r for r in rows if r["defense"] == defense and _x_value(r) is not None]
        if not selected:
            continue
        grid = "epsilon" if selected[0]["grid"] == "epsilon" else selected[0]["grid"]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            for index, series in enumerate(dict.fromkeys(_series_name(r) for r in selected)):
                points = sorted((_x_value(r), r) for r in selected if _series_name(r) == series)
                points = [(x, r) for x, r in points if r[metric] is not None]
                if not points:
                    continue
                color = f"C{index}"
                ax.errorbar(
                    [x for x, _ in points],
                    [r[metric] for _, r in points],
                    yerr=[r[f"{metric}_std"] for _, r in points],
                    marker="o",
                    capsize=3,
                    color=color,
                    label=series,
                )
                reference = baseline.get(points[0][1]["attack"])
                if reference is not None and reference[metric] is not None:
                    ax.axhline(reference[metric], color=color, linestyle=":", linewidth=1)
            if _log_scale([_x_value(r) for r in selected]):
                ax.set_xscale("log")
            ax.set_xlabel(grid)
            ax.set_ylabel(METRIC_NAMES[metric])
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title}: leakage vs {defense} strength (dotted: no defence)", fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, folder / f"leakage_{tag}_{file_slug(defense)}.png"))
    return written


@plain_text
def privacy_utility_figures(rows: list[dict[str, Any]], folder: Path, tag: str, title: str) -> list[Path]:
    """
    Privacy–utility: PSNR vs the utility's test accuracy (every defence setting, one marker series per attack), and
    PSNR and accuracy vs epsilon for DP-SGD settings. ``tag`` is the case in the file names, ``title`` as shown.
    """
    plt = pyplot()
    written = []
    with_utility = [r for r in rows if r["accuracy"] is not None]
    if with_utility:
        fig, ax = plt.subplots(figsize=(5.6, 4.2))
        for index, series in enumerate(dict.fromkeys(_series_name(r) for r in with_utility)):
            points = [r for r in with_utility if _series_name(r) == series]
            ax.errorbar(
                [r["accuracy"] for r in points],
                [r["psnr"] for r in points],
                xerr=[r["accuracy_std"] for r in points],
                yerr=[r["psnr_std"] for r in points],
                fmt="o",
                capsize=2,
                color=f"C{index}",
                label=series,
            )
            for r in points:
                ax.annotate(r["defense_label"], (r["accuracy"], r["psnr"]), fontsize=5, alpha=0.7)
        ax.set_xlabel("test accuracy after FedSGD under the defence")
        ax.set_ylabel("PSNR (dB) of the reconstruction")
        ax.set_title(f"{title}: privacy–utility", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, folder / f"privacy_utility_{tag}.png"))
    private = [r for r in rows if r["epsilon"] is not None]
    if private:
        fig, ax = plt.subplots(figsize=(5.6, 4.2))
        for index, series in enumerate(dict.fromkeys(_series_name(r) for r in private)):
            points = sorted((r for r in private if _series_name(r) == series), key=lambda r: r["epsilon"])
            ax.errorbar(
                [r["epsilon"] for r in points],
                [r["psnr"] for r in points],
                yerr=[r["psnr_std"] for r in points],
                marker="o",
                capsize=3,
                color=f"C{index}",
                label=series,
            )
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (DP-SGD)")
        ax.set_ylabel("PSNR (dB)")
        accuracy = sorted({(r["epsilon"], r["accuracy"]) for r in private if r["accuracy"] is not None})
        if accuracy:
            twin = ax.twinx()
            twin.plot([e for e, _ in accuracy], [a for _, a in accuracy], "k--", marker="s", label="accuracy")
            twin.set_ylabel("test accuracy (dashed)")
        ax.set_title(f"{title}: leakage {'and accuracy ' if accuracy else ''}vs epsilon", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, folder / f"dp_epsilon_{tag}.png"))
    return written


def reconstruction_figure(rows: list[dict[str, Any]], store: ResultsFile, path: Path) -> Path | None:
    """
    Originals and every attack's reconstruction of the first image of the first seed, one row per defence setting and
    original (at most :data:`MAX_GRID_ROWS`): a reconstruction is only shown beside the image it attacked, so
    settings of one defence that attacked other images (e.g. two data offsets in one results file) get rows of their
    own, numbered ``"<defence>, images 2"`` and on. ``None`` if no reconstructions were saved.
    """
    from art_gifd.report.figures import reconstruction_grid

    grid_rows: dict[tuple[str, tuple[int, ...], bytes], tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for row in rows:
        images = store.load_arrays(row["job_ids"][0])
        if images is None:
            continue
        original = images["originals"][0]
        key = (row["defense_label"], original.shape, original.tobytes())
        if key not in grid_rows:
            if len(grid_rows) == MAX_GRID_ROWS:
                continue
            grid_rows[key] = (original / np.float32(255), {})
        grid_rows[key][1][row["attack"]] = images["reconstructions"][0] / np.float32(255)
    if not grid_rows:
        return None
    labels = [label for label, _, _ in grid_rows]
    named = []
    for index, (label, _, _) in enumerate(grid_rows):
        number = labels[:index].count(label) + 1
        named.append(label if labels.count(label) == 1 else f"{label}, images {number}")
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    return reconstruction_grid(
        [(name, original, recs) for name, (original, recs) in zip(named, grid_rows.values(), strict=True)],
        attacks,
        path,
    )


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
