"""``benchmarks/shared_labels.py`` end to end on a tiny budget: each image is paired once with a same-label and once
with an other-label partner, and the report's paired differences are those of the per-image records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_labels(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import shared_labels

    return shared_labels


def test_pairs_put_every_image_once_beside_each_kind_of_partner(shared_labels) -> None:
    same = sorted(i for pair in shared_labels.PAIRS["same"] for i in pair)
    different = sorted(i for pair in shared_labels.PAIRS["different"] for i in pair)
    assert same == different
    assert len(set(same)) == len(same)


def test_report_holds_the_paired_differences_of_its_records(shared_labels, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    shared_labels.main(["--cases", "lenet-mnist", "--steps", "2", "--seeds", "0", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    runs = report["runs"]
    assert {r["method"] for r in runs} == set(shared_labels.METHODS)
    assert all((r["labels"][0] == r["labels"][1]) == (r["kind"] == "same") for r in runs)

    def per_image(method: str, kind: str) -> dict[int, float]:
        return {
            position: value
            for r in runs
            if r["method"] == method and r["kind"] == kind
            for position, value in zip(r["pair"], r["per_image_psnr"], strict=True)
        }

    row = next(r for r in report["rows"] if r["method"] == "gifd")
    same, other = per_image("gifd", "same"), per_image("gifd", "different")
    assert row["images_x_seeds"] == len(same) == 8
    assert row["paired_diff"][0] == pytest.approx(np.mean([same[k] - other[k] for k in same]))
    reference = per_image("reference", "same")
    assert row["same_vs_reference"][0] == pytest.approx(np.mean([same[k] - reference[k] for k in same]))
    text = out.with_suffix(".md").read_text()
    assert f"{row['paired_diff'][0]:+.2f} ± {row['paired_diff'][1]:.2f}" in text
    assert "Our attack against the reference" in text


def test_command_line_refuses_a_zero_budget(shared_labels) -> None:
    with pytest.raises(SystemExit):
        shared_labels.parse_args(["--steps", "0"])
