"""
The audit report: ``report.json`` (schema ``art-gifd/audit/v1``), a self-contained ``report.html`` (figures embedded
as ``data:`` URIs, no scripts, no external files) and ``summary.md``, all rendered from one document so that they show
the same numbers.

**Recognisable reconstruction.** A reconstruction counts as recognisable when its SSIM against the private image it
was matched to is at least ``recognisable_ssim`` (default 0.5; config ``[report]``). The default sits above what
uninformative images score on digits: against 50 held-out ``mnist32`` digits an all-black image has a mean SSIM of
about 0.40 and a different digit about 0.34, while noisy but readable reconstructions reach 0.5 to 0.7. Background-
heavy data inflate SSIM, so check the threshold for your data (score a black or mean image against a few samples).

**Chance level.** A generator of the data's domain produces look-alikes without any gradient, and the more images a
batch offers to match, the more of them pass the threshold: on held-out digits, random draws of the embedded prior
are recognisable 4% of the time matched one to one, 14% within batches of 4 and 81% within batches of 512. So each
setting of a generative attack also scores the attack's *decoys*
(:meth:`~art_gifd.attacks.generative.GenerativePriorAttack.decoys`: random latents of its prior, decoded, matched
within each batch as the reconstructions are; :data:`~art_gifd.experiment.CHANCE_DRAWS` draws per batch; see
:func:`~art_gifd.experiment.chance_ssim` for the classes a class-conditional prior gets), whose recognisable share
``c`` is the chance level. Attacks without a prior start from
noise, which no threshold above an all-black image passes: their ``c`` is 0 (not measured).

**Risk rating** of a setting, from the share ``s`` of its reconstructions that are recognisable, above chance:
``k = (s − c) / (1 − c)`` (the share of what chance leaves unexplained that the gradient recovered; ``k = s`` when
``c = 0``, and 0 when ``c = 1``):

- ``high``: ``k >= high_share`` (default 0.5: at least half of the clients' images were recovered recognisably);
- ``medium``: ``medium_share < k < high_share`` (default ``medium_share`` 0: more were recovered than chance gives);
- ``low``: otherwise (no image recognisable beyond chance by these attacks at this budget, which is not a proof of
  privacy);
- ``undetermined``: ``c = 1``: every decoy passes the threshold, which then cannot tell a reconstruction from a random
  draw of the prior (a threshold too low for the data, or very large batches): raise ``recognisable_ssim``.

The highest risk over several settings is ``high`` or ``medium`` where a setting is; otherwise ``undetermined`` where
a setting is (the others' ``low`` does not make the audit's answer low), else ``low``.

Numbers are shown with fixed precision everywhere (:data:`PRECISION`): PSNR 2 decimals, SSIM and LPIPS 3, label
accuracy and shares 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from art_gifd.report.figures import plain_text, pyplot
from art_gifd.report.html import png_data_uri, template_environment
from art_gifd.store import write_bytes_atomic, write_json_atomic

SCHEMA = "art-gifd/audit/v1"
#: The report's files; any of them in an output folder means it already holds a report.
REPORT_FILES = ("report.json", "report.html", "summary.md")
#: The privacy–utility figure written beside the report (and embedded in ``report.html``).
UTILITY_FIGURE = "privacy_utility.png"
#: Decimals shown for each kind of number in ``report.html`` and ``summary.md``.
PRECISION = {
    "psnr": 2,
    "ssim": 3,
    "lpips": 3,
    "label_accuracy": 2,
    "share": 2,
    "cosine": 3,
    "accuracy": 3,
    "epsilon": 3,
    "seconds": 1,
}


#: The ratings, in the order the highest over several settings takes them (see the module documentation).
RISK_ORDER = ("low", "undetermined", "medium", "high")


def chance_share(chance_ssim: list[float] | None, threshold: float) -> float | None:
    """The chance level: the share of decoys recognisable at ``threshold`` (``None`` where none were scored)."""
    return float(np.mean([v >= threshold for v in chance_ssim])) if chance_ssim else None


def above_chance(share: float, chance: float | None) -> float:
    """``(share − chance) / (1 − chance)``, at least 0: the recognisable share beyond the chance level (``None``: 0)."""
    chance = chance or 0.0
    return max(0.0, (share - chance) / (1.0 - chance)) if chance < 1.0 else 0.0


def risk_rating(share: float, high_share: float = 0.5, medium_share: float = 0.0, chance: float | None = None) -> str:
    """
    The risk rating of a setting (see the module documentation).

    :param share: Share of recognisable reconstructions, in ``[0, 1]``.
    :param high_share: ``high`` from this share beyond chance on.
    :param medium_share: ``medium`` above this share beyond chance.
    :param chance: Recognisable share of the attack's decoys (``None``: 0, an attack that starts from noise).
    :return: ``"high"``, ``"medium"``, ``"low"``, or ``"undetermined"`` where every decoy is recognisable.
    """
    if chance is not None and chance >= 1.0:
        return "undetermined"
    beyond = above_chance(share, chance)
    if beyond >= high_share:
        return "high"
    return "medium" if beyond > medium_share else "low"


def highest_risk(ratings: Iterable[str]) -> str:
    """The highest of several :func:`risk_rating` values."""
    return max(ratings, key=RISK_ORDER.index)


def format_number(value: float | None, kind: str) -> str:
    """``value`` with the decimals of :data:`PRECISION` for ``kind``; ``"n/a"`` for ``None``."""
    if value is None:
        return "n/a"
    return f"{value:.{PRECISION[kind]}f}"


def _format_param(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)


def _render(name: str, document: dict[str, Any], figures: Mapping[str, str]) -> str:
    env = template_environment(markdown=name.endswith(".md"))
    env.filters["num"] = format_number
    env.filters["param"] = _format_param
    return env.get_template(name).render(doc=document, figures=figures, utility=_utility_by_defense(document))


def _utility_by_defense(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["defense"]: u for u in document["utility"]}


def render_audit_html(document: dict[str, Any], figures: Mapping[str, str | Path]) -> str:
    """
    The self-contained HTML report.

    :param document: The report document.
    :param figures: ``"reconstructions"`` and ``"privacy_utility"`` PNG files, embedded as data URIs.
    """
    return _render("audit.html", document, {name: png_data_uri(path) for name, path in figures.items()})


def render_audit_summary(document: dict[str, Any]) -> str:
    """The Markdown summary of the report document."""
    return _render("audit_summary.md", document, {})


@plain_text
def privacy_utility_figure(document: dict[str, Any], path: str | Path) -> Path:
    """
    Plot attack success (mean SSIM) against the utility of each defence, one line per attack and batch size.

    The utility axis is the test accuracy after the short FedSGD run, or the cosine between defended and clean updates
    when the run had no rounds.

    :param document: The report document.
    :param path: Output PNG.
    :return: The path written.
    """
    plt = pyplot()
    rounds = document["config"]["utility"]["rounds"]
    key = "accuracy" if rounds > 0 else "gradient_cosine"
    utility = _utility_by_defense(document)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in document["settings"]:
        groups.setdefault((run["attack_label"], run["batch_size"]), []).append(run)
    for (attack, batch_size), runs in groups.items():
        xs = [utility[r["defense_label"]][key] for r in runs]
        ys = [r["ssim"] for r in runs]
        ax.plot(xs, ys, marker="o", linestyle=":", label=f"{attack}, batch {batch_size}")
        for x, y, r in zip(xs, ys, runs, strict=True):
            ax.annotate(r["defense_label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    threshold = document["thresholds"]["recognisable_ssim"]
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.text(ax.get_xlim()[0], threshold, f" recognisable (SSIM ≥ {threshold:g})", fontsize=7, va="bottom", color="grey")
    ax.set_xlabel(
        f"test accuracy after {rounds} FedSGD rounds (utility)" if rounds > 0 else "cosine(defended, clean update)"
    )
    ax.set_ylabel("mean SSIM of reconstructions (leakage)")
    ax.set_title("Privacy–utility trade-off of the defences", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_audit_report(document: dict[str, Any], output: str | Path, reconstructions: str | Path) -> dict[str, Path]:
    """
    Write ``report.html``, ``summary.md``, the privacy–utility figure and, last, ``report.json``.

    :param document: The report document (schema :data:`SCHEMA`).
    :param output: The output folder.
    :param reconstructions: PNG of the reconstruction grid, embedded in the HTML.
    :return: Paths of ``"html"``, ``"summary"``, ``"json"`` and ``"privacy_utility"``.
    """
    output = Path(output)
    figure = privacy_utility_figure(document, output / UTILITY_FIGURE)
    paths = {"html": output / "report.html", "summary": output / "summary.md", "json": output / "report.json"}
    write_bytes_atomic(
        paths["html"],
        render_audit_html(document, {"reconstructions": reconstructions, "privacy_utility": figure}).encode(),
    )
    write_bytes_atomic(paths["summary"], render_audit_summary(document).encode())
    write_json_atomic(paths["json"], document)
    return {**paths, "privacy_utility": figure}
