"""The audit: config validation names the offending key (and line) before any work, a tiny audit writes a report whose
HTML, JSON and Markdown agree, an existing report is never clobbered, and an interrupted audit resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from art_gifd.attacks.registry import GENERATIVE_ATTACKS
from art_gifd.audit import AuditConfigError, load_audit_config, run_audit
from art_gifd.audit import run as audit_run
from art_gifd.cli import main
from art_gifd.configfile import parse_document
from art_gifd.federated import client_gradients
from art_gifd.metrics import LPIPSMetric
from art_gifd.models import lenet
from art_gifd.report.audit import SCHEMA, format_number, risk_rating

#: The tiny audit's step budget and prior (an audit and a benchmark profile both take these tables).
ATTACK_HEAD = """\
[budget]
steps_per_stage = 3
stages = 2
num_restarts = 1

[priors.mnist]
type = "embedded"
name = "mnist32"
"""
#: A tiny audit: one LeNet, one digit, batch size 1, the baseline and one defence, a few GIFD steps.
TINY = (
    """\
title = "tiny audit"
output = "out"
images_per_setting = 1
seeds = [0]

[model]
factory = "art_gifd.models:lenet"
factory_kwargs = {{ seed = 0 }}
{model_extra}input_shape = [1, 32, 32]
num_classes = 10

[data]
{data}

[federated]
batch_sizes = [1]

[[defenses]]
type = "{defense}"
params = {{ ratio = 0.5 }}
adaptive = true

"""
    + ATTACK_HEAD
    + """
{attacks}
[utility]
rounds = 2
batch_size = 4
probe_batches = 1
"""
)


#: The bench configuration of the tiny audit's undefended GIFD setting (the LeNet, the first held-out digits).
SAME_BENCH = """\
name = "same"
models = ["lenet"]
seeds = [0]
budget = {{ steps_per_stage = 3, stages = 2, num_restarts = 1 }}
utility = {{ enabled = false }}
{federated}
[[datasets]]
name = "mnist"
source = "mnist32"
split = "heldout"
num_images = {batch}
[priors.mnist]
type = "embedded"
name = "mnist32"
[[attacks]]
name = "gifd"
prior = "mnist"
"""
#: A FedAvg client of 2 digits: 2 local epochs of SGD in mini-batches of 1, in an order the attacker knows.
FEDAVG = 'algorithm = "fedavg"\nlearning_rate = 0.1\nepochs = 2\nlocal_batch_size = 1\nshuffle_seed = 3'


def fedavg_config(folder: Path, federated: str = FEDAVG) -> Path:
    """The tiny audit of 2 digits per setting under ``[federated] federated`` (batch sizes [2])."""
    path = write_config(folder)
    text = path.read_text().replace("images_per_setting = 1", "images_per_setting = 2")
    path.write_text(text.replace("[federated]\nbatch_sizes = [1]", f"[federated]\nbatch_sizes = [2]\n{federated}"))
    return path


def attack_tables(*names: str) -> str:
    """One ``[[attacks]]`` table per attack name, the generative ones on the tiny audit's prior."""
    return "".join(
        f'[[attacks]]\nname = "{n}"\n' + ('prior = "mnist"\n' if n in GENERATIVE_ATTACKS else "") + "\n" for n in names
    )


def write_config(folder: Path, name: str = "audit.toml", attacks: tuple[str, ...] = ("gifd",), **fields: str) -> Path:
    values = {"model_extra": "", "data": 'embedded = "mnist32"', "defense": "prune", **fields}
    values["attacks"] = attack_tables(*attacks)
    path = folder / name
    path.write_text(TINY.format(**values))
    return path


def line_of(path: Path, text: str, after: str | None = None) -> int:
    lines = path.read_text().splitlines()
    start = lines.index(after) if after else 0
    return next(i for i, line in enumerate(lines[start:], start=start + 1) if line.startswith(text))


def problems(err: pytest.ExceptionInfo[AuditConfigError]) -> dict[str, str]:
    return {p.key: str(p) for p in err.value.problems}


def save_png(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def test_unknown_attack_and_defence_are_named_together_with_their_lines(tmp_path) -> None:
    path = write_config(tmp_path, defense="shield", attacks=("gifd", "telepathy"))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    found = problems(err)
    assert set(found) == {"defenses[0].type", "attacks[1].name"}  # both reported by one validation pass
    assert "shield" in found["defenses[0].type"] and "prune" in found["defenses[0].type"]  # the choices are listed
    assert "telepathy" in found["attacks[1].name"] and "gifd" in found["attacks[1].name"]
    lines = {p.key: p.line for p in err.value.problems}
    assert lines["defenses[0].type"] == line_of(path, "type = ", after="[[defenses]]")
    assert lines["attacks[1].name"] == line_of(path, 'name = "telepathy"')
    assert not (tmp_path / "out").exists()  # nothing was written


def test_defence_and_attack_parameters_are_checked_on_the_model(tmp_path) -> None:
    path = write_config(tmp_path)
    text = path.read_text().replace(
        "[budget]\n", '[[defenses]]\ntype = "dp"\nparams = { epsilon = 8.0, delta = 1e-5 }\n\n[budget]\n'
    )
    text = text.replace("params = { ratio = 0.5 }\nadaptive = true", 'params = { layer = "0", ratio = 0.5 }')
    text = text.replace('type = "prune"', 'type = "soteria"')
    attacks = attack_tables("gifd", "pixel")
    attacks = attacks.replace(
        'prior = "mnist"\n', 'prior = "mnist"\nparams = { l1_radius = 0.1, seed = 1, warp = 3, batch_size = 2 }\n'
    )
    attacks = attacks.replace('"pixel"\n', '"pixel"\nparams = { learning_rate = -1.0 }\n')
    path.write_text(text.replace(attack_tables("gifd"), attacks))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    found = problems(err)
    assert set(found) == {
        "defenses[0].params",
        "defenses[1].params",
        "attacks[0].params.seed",  # each parameter the audit sets is named, beside the unknown one
        "attacks[0].params.batch_size",
        "attacks[0].params.warp",
        "attacks[1].params",
    }
    assert "set seeds at the top level" in found["attacks[0].params.seed"]
    assert "'0'" in found["defenses[0].params"] and "'7'" in found["defenses[0].params"]  # names the linear layers
    assert "max_grad_norm" in found["defenses[1].params"]  # DP-SGD needs its clipping norm
    assert "l1_radius" in found["attacks[0].params.warp"]  # the accepted parameters are named
    assert "learning_rate" in found["attacks[1].params"]  # checked by building the attack for this model


def test_missing_weights_and_data_paths(tmp_path) -> None:
    path = write_config(tmp_path, model_extra='weights = "missing.pt"\n', data='image_folder = "no-such-folder"')
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    found = problems(err)
    assert {"model.weights", "data.image_folder"} <= set(found)
    assert "missing.pt" in found["model.weights"] and "not found" in found["model.weights"]
    assert "no-such-folder" in found["data.image_folder"]


def test_model_output_must_match_num_classes(tmp_path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("{ seed = 0 }", "{ seed = 0, num_classes = 12 }"))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert list(problems(err)) == ["model.num_classes"]
    assert "(2, 12)" in problems(err)["model.num_classes"] and "num_classes = 10" in problems(err)["model.num_classes"]


def test_an_image_of_another_size_than_the_models_input_is_named(tmp_path) -> None:
    save_png(tmp_path / "images" / "a" / "one.png", (32, 32), 0)
    save_png(tmp_path / "images" / "b" / "two.png", (28, 28), 1)
    path = write_config(tmp_path, data='image_folder = "images"')
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    message = problems(err)["data.image_folder"]  # the model's input size is known: the other image is named
    assert "two.png' is 28x28 pixels, not the model's input size 32x32" in message


def test_image_folder_and_weights_file_load(tmp_path) -> None:
    for i, cls in enumerate(["cat", "cat", "dog"]):
        save_png(tmp_path / "images" / cls / f"{i}.png", (32, 32), i)
    trained = lenet(seed=3)
    torch.save(trained.state_dict(), tmp_path / "lenet.pt")
    path = write_config(tmp_path, model_extra='weights = "lenet.pt"\n', data='image_folder = "images"')
    path.write_text(path.read_text().replace("batch_size = 4", "batch_size = 1"))
    cfg = load_audit_config(path)
    assert cfg.data["classes"] == ["cat", "dog"]
    assert cfg.y.tolist() == [0]  # the first image of the sorted class folders
    original = np.asarray(Image.open(tmp_path / "images" / "cat" / "0.png"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(cfg.x[0, 0], original)
    for mine, theirs in zip(cfg.estimator.model.parameters(), trained.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # the weights file, not the factory's seed-0 initialisation
    assert cfg.model["sha256"] and cfg.model["weights"].endswith("lenet.pt")
    # an output folder inside the image folder would become one more class at the next run
    path.write_text(path.read_text().replace('output = "out"', 'output = "images/report"'))
    with pytest.raises(AuditConfigError, match=r"images/report' lies inside the image folder .* moving the labels"):
        load_audit_config(path)
    assert not (tmp_path / "images" / "report").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_model_gives_the_eager_gradients(tmp_path) -> None:
    eager = lenet(seed=0)
    torch.jit.save(torch.jit.script(eager), str(tmp_path / "lenet.ts"))
    path = write_config(tmp_path)
    text = path.read_text().replace('factory = "art_gifd.models:lenet"\nfactory_kwargs = { seed = 0 }\n', "")
    path.write_text(text.replace("input_shape", 'torchscript = "lenet.ts"\ninput_shape'))
    # the converted graph has no nn.Linear head to read labels from: named before any work
    with pytest.raises(AuditConfigError, match=r'needs the classifier head.*set labels = "known"') as err:
        load_audit_config(path)
    assert err.value.keys == ["attacks[0].name"]
    path.write_text(path.read_text().replace('prior = "mnist"\n', 'prior = "mnist"\nlabels = "known"\n'))
    cfg = load_audit_config(path)
    reference = load_audit_config(write_config(tmp_path, name="eager.toml"))
    labels = np.array([3, 7])
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    for mine, theirs in zip(
        client_gradients(cfg.estimator, x, labels), client_gradients(reference.estimator, x, labels), strict=True
    ):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)


def test_yaml_config_errors_carry_lines(tmp_path) -> None:
    path = tmp_path / "audit.yaml"
    path.write_text(
        "model:\n  factory: art_gifd.models:lenet\n  input_shape: [1, 32, 32]\n  num_classes: 10\n"
        "data:\n  embedded: mnist32\n  split: nowhere\n"
        "budget:\n  steps_per_stage: 0\nattacks:\n  - name: pixel\n"
    )
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    lines = {p.key: p.line for p in err.value.problems}
    assert lines == {"data.split": 7, "budget.steps_per_stage": 9}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    path = write_config(folder)
    # a label with Markdown table syntax, raw HTML and a "$": the reports must show it, not obey it
    path.write_text(path.read_text().replace("adaptive = true", f'adaptive = true\nlabel = "{HOSTILE_LABEL}"', 1))
    return run_audit(path, verbose=False), folder


#: A defence label with Markdown table syntax, raw HTML, a heading mark and broken math markup (to matplotlib).
HOSTILE_LABEL = "prune | <b>half</b> $x_$ ## rows"


def test_tiny_audit_report_files_agree(tiny_report) -> None:
    report, _ = tiny_report
    document = json.loads(report.json.read_text())
    assert document["schema"] == SCHEMA
    assert [s["defense_label"] for s in document["settings"]] == ["none", "prune | <b>half</b> $x_$ ## rows"]
    html, summary = report.html.read_text(), report.summary.read_text()
    assert "<b>" not in html and "<b>" not in summary
    header = next(line for line in summary.splitlines() if line.startswith("| batch |"))
    columns = header.count("|")
    assert "| prune \\| &lt;b&gt;half&lt;/b&gt; $x_$ ## rows |" in summary
    rows = re.findall(r'<tr data-setting="([^"]+)">(.*?)</tr>', html, flags=re.S)
    assert [row_id for row_id, _ in rows] == [s["id"] for s in document["settings"]]
    md_rows = [line for line in summary.splitlines() if line.startswith("| 1 |")]
    assert len(md_rows) == len(document["settings"])
    assert all(row.replace("\\|", "").count("|") == columns for row in md_rows)
    for setting, (_, row), md_row in zip(document["settings"], rows, md_rows, strict=True):
        assert setting["psnr"] == pytest.approx(np.mean(setting["per_image"]["psnr"]))
        shown = [
            format_number(setting["psnr"], "psnr"),
            format_number(setting["ssim"], "ssim"),
            format_number(setting["label_accuracy"], "label_accuracy"),
            format_number(setting["recognisable_share"], "share"),
            format_number(setting["chance_share"], "share"),
            setting["risk"],
        ]
        for text in shown:
            assert text in row and text in md_row
        threshold = document["thresholds"]["recognisable_ssim"]
        assert setting["recognisable"] == sum(v >= threshold for v in setting["per_image"]["ssim"])
        # the chance level: 4 decoy batches per client batch of the generative attack, scored at the same threshold
        assert len(setting["chance_ssim"]) == 4 * setting["num_images"]
        assert setting["chance_share"] == np.mean([v >= threshold for v in setting["chance_ssim"]])
        thresholds = document["thresholds"]
        expected = risk_rating(
            setting["recognisable_share"], thresholds["high_share"], thresholds["medium_share"], setting["chance_share"]
        )
        assert setting["risk"] == expected
    for utility in document["utility"]:
        assert format_number(utility["accuracy"], "accuracy") in html
    # self-contained: every image is a data URI, no scripts, no external links
    assert "<script" not in html and "http://" not in html and "https://" not in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert document["reproducibility"]["config_hash"] == document["config_hash"]
    assert document["lpips"]["available"] or document["lpips"]["reason"] in html


def test_attacking_the_embedded_priors_own_training_images_is_warned_about(tmp_path) -> None:
    path = write_config(tmp_path, data='embedded = "mnist32"\nsplit = "train"')
    with pytest.warns(UserWarning, match=r"overstate the leakage.*Set data\.split = \"heldout\""):
        load_audit_config(path)


def test_another_runs_report_in_the_output_folder_is_refused(tmp_path, monkeypatch) -> None:
    path = write_config(tmp_path)
    demo_report = tmp_path / "out" / "report.html"  # a demo's output folder: its report, no audit records
    demo_report.parent.mkdir()
    demo_report.write_text("<html>the demo's report</html>")
    monkeypatch.setattr(audit_run, "_run_setting", _raises_setting)
    with pytest.raises(AuditConfigError, match=r"already holds a report \(report.html\).*--overwrite") as err:
        run_audit(path, verbose=False)
    assert err.value.keys == ["output"] and demo_report.read_text() == "<html>the demo's report</html>"
    assert [p.name for p in demo_report.parent.iterdir()] == ["report.html"]  # the refusal left nothing behind


def _raises_setting(*args, **kwargs):
    raise AssertionError("an attack ran")


def test_existing_report_is_refused_unless_overwrite(tiny_report, capsys) -> None:
    report, folder = tiny_report
    before = report.json.read_bytes()
    with pytest.raises(AuditConfigError) as err:
        run_audit(folder / "audit.toml", verbose=False)
    assert err.value.keys == ["output"] and "--overwrite" in str(err.value)
    assert main(["audit", str(folder / "audit.toml"), "--no-progress"]) == 2
    assert "already holds a report" in capsys.readouterr().err
    assert report.json.read_bytes() == before  # untouched
    again = run_audit(folder / "audit.toml", overwrite=True, verbose=False)
    assert again.document["reproducibility"]["resumed"] == []  # overwrite discards the earlier results
    old = json.loads(before)
    assert [s["per_image"] for s in again.settings] == [s["per_image"] for s in old["settings"]]  # seeded: same numbers


def test_interrupted_audit_resumes_from_finished_settings(tmp_path, monkeypatch) -> None:
    path = write_config(tmp_path)
    real = audit_run._run_setting
    calls: list[str] = []

    def interrupted(cfg, setting, lpips, verbose):
        if calls:  # `kill` stops the audit as Ctrl-C does (were no handler installed, it would end pytest)
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
            raise AssertionError("SIGTERM did not interrupt the audit")
        calls.append(setting.id)
        return real(cfg, setting, lpips, verbose)

    monkeypatch.setattr(audit_run, "_run_setting", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_audit(path, verbose=False)
    assert not (tmp_path / "out" / "report.json").exists()
    (saved,) = [json.loads(line)["run"] for line in (tmp_path / "out" / "settings" / "records.jsonl").open()]

    # a finished setting is keyed by what its numbers depend on: another seed, batch size or defence parameter
    # changes the key; titles, report thresholds and the utility run do not
    def keys(text: str) -> list[str]:
        cfg = load_audit_config(parse_document(text, "toml").data | {"output": str(tmp_path / "out")})
        return [cfg.setting_key(s.batch_size, cfg.defenses[s.defense], s.attack) for s in audit_run.plan_settings(cfg)]

    text = path.read_text()
    assert keys(text.replace("seeds = [0]", "seeds = [1]"))[0] != keys(text)[0]
    assert keys(text.replace("ratio = 0.5", "ratio = 0.6"))[1] != keys(text)[1]
    assert keys(text.replace("steps_per_stage = 3", "steps_per_stage = 4"))[0] != keys(text)[0]
    edited = text.replace("rounds = 2", "rounds = 0").replace('title = "tiny audit"', 'title = "renamed"')
    edited += "[report]\nrecognisable_ssim = 1e-6\n"
    assert keys(edited) == keys(text)
    path.write_text(edited)

    rerun: list[str] = []

    def counting(cfg, setting, lpips, verbose):
        rerun.append(setting.id)
        return real(cfg, setting, lpips, verbose)

    monkeypatch.setattr(audit_run, "_run_setting", counting)
    report = run_audit(path, verbose=False)
    ids = [s["id"] for s in report.settings]
    assert calls[0] not in rerun and sorted(rerun) == sorted(set(ids) - {calls[0]})
    assert calls[0] in report.document["reproducibility"]["resumed"]
    resumed = next(s for s in report.settings if s["id"] == calls[0])
    assert resumed["per_image"] == saved["per_image"]
    assert resumed["recognisable_share"] == 1.0  # counted under the edited threshold, not the stored one


def test_a_resumed_setting_reports_the_lpips_of_this_run() -> None:
    """LPIPS of a resumed setting is scored again from its saved images: no row keeps another run's LPIPS state."""
    images = {"originals": np.zeros((1, 1, 8, 8)), "reconstructions": np.zeros((1, 1, 8, 8))}
    scored = {"lpips": 0.3, "lpips_unavailable_reason": None, "per_image": {"lpips": [0.3], "psnr": [20.0]}}

    class Unavailable:
        available, reason = False, "AlexNet weights not found"

    class Available:
        available, reason = True, None

        def __call__(self, reconstructed, original, data_range):
            return np.array([0.125])

    off = audit_run._with_lpips(scored, images, Unavailable(), (0.0, 1.0))
    assert off["lpips"] is None and off["per_image"] == {"lpips": None, "psnr": [20.0]}
    assert off["lpips_unavailable_reason"] == "AlexNet weights not found"
    on = audit_run._with_lpips(off, images, Available(), (0.0, 1.0))
    assert on["lpips"] == 0.125 and on["per_image"]["lpips"] == [0.125] and on["lpips_unavailable_reason"] is None


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
def test_shipped_example_config_is_valid() -> None:
    cfg = load_audit_config(Path(__file__).resolve().parents[1] / "examples" / "audit_mnist.toml")
    assert [d.label for d in cfg.defenses] == ["none", "pruning 90% (adaptive)", "Gaussian noise 0.1", "DP-SGD ε=10"]
    assert cfg.defenses[-1].describe()["epsilon"] == pytest.approx(10.0, rel=0.01)  # Opacus found the noise for ε
    assert len(audit_run.plan_settings(cfg)) == 2 * 4  # batch sizes x defences x attacks


def test_damaged_settings_and_an_interrupted_report_write_resume_without_overwrite(tmp_path, monkeypatch) -> None:
    path = write_config(tmp_path)
    first = run_audit(path, verbose=False)
    state = tmp_path / "out" / "settings"
    ids = [s["id"] for s in first.settings]
    records = (state / "records.jsonl").read_text().splitlines(keepends=True)
    keys = [json.loads(line)["job_id"] for line in records]
    assert [k[:2] for k in keys] == ["s-"] * len(ids) + ["u-", "u-"] and len(set(keys)) == len(keys)
    records[0] = records[0][:40] + "\n"  # a damaged record in the middle of the file
    records[-1] = records[-1][:40]  # and a torn last line (a write interrupted by a crash)
    (state / "records.jsonl").write_text("".join(records))
    (state / f"{keys[1]}.npz").write_bytes(b"not a zip file")  # damaged images
    first.json.unlink()  # interrupted while writing the report: html and summary there, report.json not yet
    assert first.html.exists()
    real = audit_run._run_setting
    rerun: list[str] = []

    def counting(cfg, setting, lpips, verbose):
        rerun.append(setting.id)
        return real(cfg, setting, lpips, verbose)

    monkeypatch.setattr(audit_run, "_run_setting", counting)
    report = run_audit(path, verbose=False)  # no overwrite needed, nothing intact is redone
    assert sorted(rerun) == sorted(ids[:2])
    assert [s["per_image"] for s in report.settings] == [s["per_image"] for s in first.settings]  # seeded
    assert set(report.document["reproducibility"]["resumed"]) == {*ids[2:], "utility-d0"}  # utility-d1 measured again


def test_a_second_audit_on_the_same_output_folder_is_refused_while_the_first_runs(tmp_path) -> None:
    from art_gifd.store import ResultsFile

    path = write_config(tmp_path)
    state = tmp_path / "out" / "settings"
    lock = ResultsFile(state / "records.jsonl").lock()  # what another process writing the folder holds
    with lock, pytest.raises(AuditConfigError, match="another art-gifd audit") as err:
        run_audit(path, verbose=False)
    assert err.value.keys == ["output"]
    assert not (state / "records.jsonl").exists()  # nothing was written


def test_attacked_images_are_never_in_the_utility_split(tmp_path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("images_per_setting = 1", "images_per_setting = 4"))
    cfg = load_audit_config(path)
    attacked = {image.tobytes() for image in cfg.x}
    x_train, _, x_test, _ = cfg.utility_data
    assert len(attacked) == 4
    assert not attacked & {image.tobytes() for image in np.concatenate([x_train, x_test])}


def test_report_states_the_restarts_and_steps_that_ran_when_an_attack_has_its_own_budget(tmp_path) -> None:
    path = write_config(tmp_path, attacks=("gifd", "pixel"))
    text = path.read_text().replace('prior = "mnist"\n\n', 'prior = "mnist"\nbudget = { num_restarts = 2 }\n\n')
    path.write_text(text)
    report = run_audit(path, verbose=False)
    ran = {s["attack"]: s["num_restarts"] for s in report.settings}
    assert ran == {"gifd": 2, "pixel": 1}
    assert report.document["attacks"]["restarts"] == "gifd: 2, pixel: 1"
    assert "gifd: 2, pixel: 1 restart(s)" in report.summary.read_text()
    assert any("gifd: 2, pixel: 1 restart(s)" in item for item in report.document["limitations"])


#: Attack tables that an audit and a benchmark profile both take: a restricted baseline, a labelled second GIFD.
SHARED_ATTACKS = (
    ATTACK_HEAD
    + """
[[attacks]]
name = "gifd"
prior = "mnist"

[[attacks]]
name = "gifd"
label = "gifd known"
prior = "mnist"
labels = "known"
budget = { num_restarts = 2 }

[[attacks]]
name = "idlg"
defenses = ["none"]
"""
)


def test_audit_and_bench_read_the_attack_tables_with_one_meaning(tmp_path) -> None:
    from art_gifd.bench.config import parse_document, validate_config

    path = write_config(tmp_path)
    text = path.read_text()
    start, end = text.index("[budget]"), text.index("[utility]")
    path.write_text(text[:start] + SHARED_ATTACKS + "\n" + text[end:])
    cfg = load_audit_config(path)
    bench = validate_config(
        parse_document(
            'name = "same"\nmodels = ["lenet"]\n[[datasets]]\nname = "mnist"\nsource = "mnist32"\nnum_images = 1\n'
            '[[defenses]]\ntype = "none"\n' + SHARED_ATTACKS,
            "toml",
        )
    )
    assert cfg.settings["attacks"] == bench.attacks and cfg.settings["budget"] == bench.budget
    path.write_text(path.read_text().split("[utility]")[0])  # no [utility]: both take measure_utility's defaults
    defaults = load_audit_config(path).settings["utility"]
    assert defaults.pop("test_fraction") == 0.2 and defaults == bench.utility == {
        "rounds": 300,
        "batch_size": 32,
        "learning_rate": 0.05,
        "probe_batches": 8,
    }
    known = cfg.attacks[1]
    assert (known.label, known.labels_known, known.budget.num_restarts, known.budget.steps_per_stage) == (
        "gifd known",
        True,
        2,
        3,
    )
    # the baseline attack runs under the undefended setting only: 2 GIFDs x 2 defences + 1 iDLG
    planned = [(s.defense, s.attack.label) for s in audit_run.plan_settings(cfg)]
    assert len(planned) == 5 and (1, "idlg") not in planned and (0, "idlg") in planned
    assert len({s.id for s in audit_run.plan_settings(cfg)}) == 5  # one file name each


def test_attack_tables_of_the_old_form_repeated_labels_and_unknown_defences_are_named(tmp_path) -> None:
    path = write_config(tmp_path)
    text = path.read_text()
    old = text.replace(attack_tables("gifd"), '[attacks]\nnames = ["gifd"]\n\n')
    path.write_text(old)
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "[[attacks]] table per attack" in problems(err)["attacks"]
    tables = attack_tables("pixel", "pixel", "idlg") + 'defenses = ["shield"]\n'
    path.write_text(text.replace(attack_tables("gifd"), tables))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    found = problems(err)
    assert "duplicated label 'pixel'" in found["attacks[1].label"] and "shield" in found["attacks[2].defenses"]
    # labels that differ only in characters a file name cannot hold, or too long for one, still name distinct files
    slugs = attack_tables("pixel", "pixel", "pixel").replace('"pixel"\n\n', '"pixel"\nlabel = "pixel/1"\n\n', 1)
    slugs = slugs.replace('"pixel"\n\n', '"pixel"\nlabel = "pixel 1"\n\n', 1)
    path.write_text(
        text.replace(attack_tables("gifd"), slugs.replace('"pixel"\n\n', f'"pixel"\nlabel = "{"p" * 80}"\n\n'))
    )
    names = [attack.slug for attack in load_audit_config(path).attacks]
    assert len(set(names)) == 3 and all(0 < len(n) <= 60 and re.fullmatch(r"[\w.+-]+", n) for n in names)


def test_an_audit_expands_a_defence_grid_as_the_bench_does(tmp_path) -> None:
    path = write_config(tmp_path)
    text = path.read_text().replace("params = { ratio = 0.5 }\nadaptive = true", "params = { ratio = [0.5, 0.9] }")
    path.write_text(text.replace('type = "prune"', 'type = "prune"\nlabel = "pruning"\nadaptive = [false, true]'))
    cfg = load_audit_config(path)
    assert [(d.label, d.params, d.adaptive) for d in cfg.defenses] == [
        ("none", {}, False),
        ("pruning ratio=0.5", {"ratio": 0.5}, False),
        ("pruning ratio=0.5 (adaptive)", {"ratio": 0.5}, True),
        ("pruning ratio=0.9", {"ratio": 0.9}, False),
        ("pruning ratio=0.9 (adaptive)", {"ratio": 0.9}, True),
    ]
    path.write_text(text.replace('type = "prune"', 'type = "none"'))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "unknown key" in problems(err)["defenses[0].params.ratio"]  # the baseline takes no parameters
    path.write_text(text.replace('type = "prune"\nparams = { ratio = [0.5, 0.9] }', 'type = "none"\nadaptive = true'))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "nothing to replay" in problems(err)["defenses[0].adaptive"]


def test_known_labels_reach_the_attack_through_the_bench_runner(tmp_path) -> None:
    from art_gifd.bench import load_config, run_benchmark
    from art_gifd.store import ResultsFile

    text = SAME_BENCH.format(batch=1, federated="[federated]\nbatch_sizes = [1]\n") + 'labels = "known"\n'
    (tmp_path / "known.toml").write_text(text)
    run_benchmark(load_config(tmp_path / "known.toml"), tmp_path / "known.jsonl", progress=False)
    (job,) = ResultsFile(tmp_path / "known.jsonl").read()[1]
    assert job["config"]["attack"]["labels"] == "known" and job["result"]["label_accuracy"] == 1.0


def test_the_same_setting_and_seed_give_the_same_numbers_through_audit_and_bench(tmp_path) -> None:
    from art_gifd.bench import load_config, run_benchmark
    from art_gifd.store import ResultsFile

    audit = run_audit(write_config(tmp_path), verbose=False)  # LeNet seed 0, first held-out digit, B=1, GIFD 2x3
    (tmp_path / "same.toml").write_text(SAME_BENCH.format(batch=1, federated="[federated]\nbatch_sizes = [1]\n"))
    run_benchmark(load_config(tmp_path / "same.toml"), tmp_path / "same.jsonl", progress=False)
    (job,) = ResultsFile(tmp_path / "same.jsonl").read()[1]
    undefended = next(s for s in audit.settings if s["defense_label"] == "none")
    assert job["result"]["per_image"]["psnr"] == pytest.approx(undefended["per_image"]["psnr"], abs=1e-9)
    assert job["result"]["final_losses"] == pytest.approx(undefended["final_losses"], rel=1e-9)


@pytest.mark.parametrize(
    ("federated", "key", "message"),
    [
        ('algorithm = "fedsgd"\nlearning_rate = 0.1', "federated.learning_rate", "set algorithm = 'fedavg'"),
        ('algorithm = "fedavg"\nepochs = 2', "federated.learning_rate", "missing"),
        ('algorithm = "fedavg"\nlearning_rate = 0.1\noptimizer = "adamw"', "federated.optimizer", "must be one of"),
        ('algorithm = "fedavg"\nlearning_rate = -1.0', "federated.learning_rate", "must lie in"),
        ('algorithm = "fedavg"\nlearning_rate = 0.1\nepochs = 1\nsteps = 2', "federated", "epochs or steps"),
    ],
)
def test_bad_fedavg_keys_are_named_in_audit_and_bench_configs(tmp_path, federated, key, message) -> None:
    from art_gifd.bench import load_config
    from art_gifd.configfile import ConfigError

    with pytest.raises(AuditConfigError) as err:
        load_audit_config(fedavg_config(tmp_path, federated))
    assert any(p.key == key and message in p.message for p in err.value.problems), err.value
    (tmp_path / "bench.toml").write_text(
        SAME_BENCH.format(batch=2, federated=f"[federated]\nbatch_sizes = [2]\n{federated}")
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(tmp_path / "bench.toml")


def test_a_known_order_batch_size_that_does_not_divide_the_clients_samples_is_named(tmp_path) -> None:
    from art_gifd.bench import load_config
    from art_gifd.configfile import ConfigError

    federated = 'algorithm = "fedavg"\nlearning_rate = 0.1\nlocal_batch_size = 3\nshuffle_seed = 0'
    path = fedavg_config(tmp_path, federated)
    text = path.read_text().replace("images_per_setting = 2", "images_per_setting = 4")
    path.write_text(text.replace("batch_sizes = [2]", "batch_sizes = [4]"))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "batch_size=3 does not divide the client's 4 samples" in problems(err)["federated.local_batch_size"]
    (tmp_path / "bench.toml").write_text(
        SAME_BENCH.format(batch=4, federated=f"[federated]\nbatch_sizes = [4]\n{federated}")
    )
    with pytest.raises(ConfigError, match="batch_size=3 does not divide the client's 4 samples"):
        load_config(tmp_path / "bench.toml")
    path.write_text(path.read_text().replace("batch_sizes = [4]", "batch_sizes = [2]"))  # a batch above 2: one
    path.write_text(path.read_text().replace("images_per_setting = 4", "images_per_setting = 2"))
    assert load_audit_config(path).training is not None


def test_dp_sgd_accounting_fewer_steps_than_the_local_training_is_named_before_any_work(tmp_path) -> None:
    from art_gifd.bench import load_config
    from art_gifd.configfile import ConfigError

    params = "noise_multiplier = 1.0, max_grad_norm = 1.0, sample_rate = 0.5, steps = 3, delta = 1e-5"
    dp = f'type = "dp"\nparams = {{ {params} }}'
    path = fedavg_config(tmp_path)  # 2 epochs in mini-batches of 1 on 2 digits: 4 local steps
    path.write_text(path.read_text().replace('type = "prune"\nparams = { ratio = 0.5 }\nadaptive = true', dp))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "accounts for steps=3, but the client's local training takes 4 step(s)" in str(err.value), err.value
    (tmp_path / "bench.toml").write_text(
        SAME_BENCH.format(batch=2, federated=f"[federated]\nbatch_sizes = [2]\n{FEDAVG}") + f"[[defenses]]\n{dp}\n"
    )
    with pytest.raises(ConfigError, match=r"defenses\[0\]\.params: DPSGD accounts for steps=3, .* at least 4"):
        load_config(tmp_path / "bench.toml")
    path.write_text(path.read_text().replace("steps = 3,", "steps = 4,"))
    assert load_audit_config(path).training is not None  # the whole training accounted for: accepted


def test_fedavg_audit_reports_the_protocol_and_matches_the_bench(tmp_path) -> None:
    from art_gifd.bench import load_config, run_benchmark
    from art_gifd.store import ResultsFile

    report = run_audit(fedavg_config(tmp_path), verbose=False)
    setting = next(s for s in report.settings if s["defense_label"] == "none")
    assert setting["federated"]["algorithm"] == "fedavg" and setting["federated"]["epochs"] == 2
    knowledge = " ".join(report.document["scope"]["attacker_knowledge"])
    assert (
        "after its local training (SGD, 2 epoch(s) in mini-batches of 1, learning rate 0.1, known order)" in knowledge
    )
    assert any("One FedAvg update per client is attacked" in item for item in report.document["limitations"])
    assert "local training: SGD, 2 epoch(s)" in " ".join((tmp_path / "out" / "report.html").read_text().split())
    (tmp_path / "same.toml").write_text(
        SAME_BENCH.format(batch=2, federated=f"[federated]\nbatch_sizes = [2]\n{FEDAVG}")
    )
    run_benchmark(load_config(tmp_path / "same.toml"), tmp_path / "same.jsonl", progress=False)
    (job,) = ResultsFile(tmp_path / "same.jsonl").read()[1]
    assert job["result"]["federated"] == setting["federated"]
    assert job["result"]["per_image"]["psnr"] == pytest.approx(setting["per_image"]["psnr"], abs=1e-9)


def test_limitations_name_wrong_inferred_labels_and_the_worst_case_setting(tiny_report) -> None:
    report, folder = tiny_report
    cfg = load_audit_config(folder / "audit.toml")
    runs = [dict(s) for s in report.settings]
    assert all(run["label_accuracy"] == 1.0 for run in runs)
    assert not any("Labels were inferred" in item for item in audit_run._limitations(cfg, runs, LPIPSMetric()))
    runs[-1]["label_accuracy"] = 0.5
    (item,) = [i for i in audit_run._limitations(cfg, runs, LPIPSMetric()) if "Labels were inferred" in i]
    assert f"lowest label accuracy 0.50, setting {runs[-1]['id']}" in item and 'labels = "known"' in item


def test_limitations_compare_images_that_share_their_label_in_a_batch(tiny_report) -> None:
    report, folder = tiny_report
    cfg = load_audit_config(folder / "audit.toml")
    runs = [dict(s) for s in report.settings]
    assert all(not any(run["per_image"]["shared_label"]) for run in runs)  # batches of one share no label
    assert not any("share their label" in item for item in audit_run._limitations(cfg, runs, LPIPSMetric()))
    runs[0]["per_image"] = {"psnr": [15.0, 17.0, 31.0, 33.0], "shared_label": [True, True, False, False]}
    runs[1]["per_image"] = {"psnr": [20.0, 40.0], "shared_label": [True, False]}
    runs.append({**runs[0], "per_image": {"psnr": [1.0, 2.0]}})  # a record from before the flag was kept: skipped
    (item,) = [i for i in audit_run._limitations(cfg, runs, LPIPSMetric()) if "share their label" in i]
    assert "In 2 batched setting(s), 3 of 6 reconstructions" in item
    assert "at 17.33 dB mean PSNR against 34.67 dB" in item
    assert f"largest gap: setting {runs[1]['id']}, 20.00 against 40.00 dB" in item


def test_prior_tables_use_the_prior_registry_with_the_bench_vocabulary(tmp_path) -> None:
    from art_gifd.priors import DCGANGenerator

    generator = DCGANGenerator(nz=16, ngf=8, nc=1, image_size=32)
    torch.save({"netG": generator.state_dict()}, tmp_path / "g.pt")
    path = write_config(tmp_path)
    table = 'type = "dcgan"\nweights = "g.pt"\nnz = 16\nngf = 8\nnc = 1\nimage_size = 32\nkey = "netG"\n'
    text = path.read_text().replace('type = "embedded"\nname = "mnist32"\n', table)
    path.write_text(text)
    cfg = load_audit_config(path)
    facts = cfg.prior_info["mnist"]
    assert cfg.priors["mnist"].nz == 16 and facts["name"] == str(tmp_path / "g.pt") and len(facts["sha256"]) == 64
    for broken, key, message in [
        (text.replace('type = "dcgan"\n', ""), "priors.mnist", "a prior table needs a type"),
        (text.replace('"dcgan"', '"dcgann"'), "priors.mnist.type", "unknown value 'dcgann'"),
        (text.replace("nz = 16", "nz = 0"), "priors.mnist.nz", "must be a positive integer"),
        (text.replace("nz = 16", "nz = 32"), "priors.mnist.weights", "does not fit DCGANGenerator"),
        (text.replace('"g.pt"', '"missing.pt"'), "priors.mnist.weights", "file not found"),
    ]:
        path.write_text(broken)
        with pytest.raises(AuditConfigError) as err:
            load_audit_config(path)
        assert message in problems(err)[key]


def test_stylegan2_and_biggan_prior_tables_read_as_the_bench_reads_them(tmp_path) -> None:
    from art_gifd.priors import DCGANGenerator
    from art_gifd.priors.registry import prior_facts

    path = write_config(tmp_path)
    table = 'type = "stylegan2"\nweights = "missing.pt"\nsize = 32\nnoise = "random"\ntruncation = 0.7\n'
    path.write_text(path.read_text().replace('type = "embedded"\nname = "mnist32"\n', table))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert set(problems(err)) == {"priors.mnist.weights"}  # noise is the loader's string, as in a bench table
    stand_in = DCGANGenerator(nz=16, ngf=8, nc=1, image_size=32)
    facts = prior_facts({"type": "biggan", "weights": str(tmp_path)}, stand_in)  # a BigGAN checkpoint is a folder
    assert facts["name"] == str(tmp_path) and facts["sha256"] is None


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("seeds = [0]", "seeds = [99999999999999999999]", "seeds", "integers in [0, 9223372036854775807]"),
        (
            'prior = "mnist"\n',
            'prior = "mnist"\nparams = { batch_size = 2 }\n',
            "attacks[0].params.batch_size",
            "the file's client batch sizes set it",
        ),
        (
            'prior = "mnist"\n',
            'prior = "mnist"\nparams = { num_restarts = 2 }\n',
            "attacks[0].params.num_restarts",
            "set it in [budget], or in the attack's budget table",
        ),
        ("input_shape", 'weights_key = "model"\ninput_shape', "model.weights_key", "no weights are given"),
        (
            "num_classes = 10",
            "num_classes = 10\nclip_values = [0.0, 255.0]",
            "model.clip_values",
            "a tenth or less of model.clip_values [0.0, 255.0]",
        ),
        ("steps_per_stage = 3", "steps_per_stage = 10000001", "budget.steps_per_stage", "at most 10000000"),
        (
            'type = "prune"\nparams = { ratio = 0.5 }\nadaptive = true',
            'type = "dp"\nparams = { epsilon = 8.0, delta = 1e-5, max_grad_norm = 1.0, sample_rate = 0.01, '
            "steps = 9223372036854775807 }",
            "defenses[0].params",
            "steps must be a positive integer (at most 1000000000)",  # Opacus' noise search would not end
        ),
        (
            'type = "prune"\nparams = { ratio = 0.5 }\nadaptive = true',
            'type = "gaussian"\nparams = { sigma = 1e300 }',
            "defenses[0].params",
            "returned NaN or infinite values",  # noise beyond float32: found by the probe, not mid-run
        ),
        (
            'output = "out"',
            'output = "/proc/art-gifd-audit"',
            "output",
            "cannot write into '/proc'",
        ),
    ],
)
def test_values_that_would_crash_hang_or_mislead_later_are_named(tmp_path, old, new, key, message) -> None:
    path = write_config(tmp_path)
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert key in problems(err) and message in problems(err)[key], err.value


def test_records_of_the_wrong_shape_or_a_records_folder_are_handled(tmp_path, caplog) -> None:
    path = write_config(tmp_path)
    first = run_audit(path, verbose=False)
    records = tmp_path / "out" / "settings" / "records.jsonl"
    lines = records.read_text().splitlines()
    lines[0] = json.dumps({"job_id": first.settings[0]["id"], "config_hash": first.document["config_hash"]})
    lines[1] = json.dumps({**json.loads(lines[1]), "run": "oops"})  # valid JSON, not a record this audit writes
    records.write_text("\n".join(lines) + "\n")
    first.json.unlink()
    again = run_audit(path, verbose=False)
    assert [s["per_image"] for s in again.settings] == [s["per_image"] for s in first.settings]
    assert not {s["id"] for s in first.settings} & set(again.document["reproducibility"]["resumed"])
    # values of the wrong type, edited by hand: each damaged setting is named and done again, never reported
    lines = records.read_text().splitlines()
    latest = {json.loads(line)["job_id"]: i for i, line in enumerate(lines) if "run" in json.loads(line)}
    for (key, value), index in zip([("ssim", "0.9"), ("psnr", None)], list(latest.values())[:2], strict=True):
        record = json.loads(lines[index])
        record["run"][key] = value
        lines[index] = json.dumps(record)
    records.write_text("\n".join(lines) + "\n")
    again.json.unlink()
    with caplog.at_level("WARNING"):
        third = run_audit(path, verbose=False)
    assert 'run.ssim is "0.9", expected a number' in caplog.text and "run.psnr is null" in caplog.text
    assert not {s["id"] for s in first.settings} & set(third.document["reproducibility"]["resumed"])  # both redone
    assert [s["psnr"] for s in third.settings] == [s["psnr"] for s in first.settings]
    other = write_config(tmp_path, name="other.toml")
    other.write_text(other.read_text().replace('output = "out"', 'output = "out2"'))
    (tmp_path / "out2" / "settings" / "records.jsonl").mkdir(parents=True)
    with pytest.raises(AuditConfigError, match="is a folder where the audit keeps its results file") as err:
        run_audit(other, verbose=False)
    assert err.value.keys == ["output"]


def test_no_resume_runs_every_setting_again_and_deletes_nothing(tmp_path, monkeypatch) -> None:
    path = write_config(tmp_path)
    first = run_audit(path, verbose=False)
    first.json.unlink()  # as if interrupted while writing the report
    records = tmp_path / "out" / "settings" / "records.jsonl"
    before = records.read_text()
    real, rerun = audit_run._run_setting, []

    def counting(cfg, setting, lpips, verbose):
        rerun.append(setting.id)
        return real(cfg, setting, lpips, verbose)

    monkeypatch.setattr(audit_run, "_run_setting", counting)
    again = run_audit(path, resume=False, verbose=False)
    assert sorted(rerun) == sorted(s["id"] for s in first.settings)
    assert again.document["reproducibility"]["resumed"] == []
    assert records.read_text().startswith(before)  # the earlier records stay; the new ones supersede them
    assert [s["per_image"] for s in again.settings] == [s["per_image"] for s in first.settings]  # seeded


def test_every_parameter_the_loop_sets_has_a_hint_where_to_set_it() -> None:
    from art_gifd.attacks.registry import BUDGET_PARAMS, LOOP_PARAMS, PARAM_HINTS

    assert set(PARAM_HINTS) == {*LOOP_PARAMS, *BUDGET_PARAMS}


def test_a_setting_that_fails_mid_run_is_named_and_the_finished_ones_are_kept(tmp_path, monkeypatch, capsys) -> None:
    path = write_config(tmp_path)
    real, ran = audit_run._run_setting, []
    failure: list[Exception] = [ValueError("Gradient of '0.weight' contains NaN or infinite values.")]

    def failing(cfg, setting, lpips, verbose):
        if setting.defense == 1:
            raise failure[0]
        ran.append(setting.id)
        return real(cfg, setting, lpips, verbose)

    monkeypatch.setattr(audit_run, "_run_setting", failing)
    assert main(["audit", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: setting b1-d1-gifd (batch size 1, defence" in err and "NaN or infinite" in err
    assert "1 setting(s) finished before it are kept" in err and "Traceback" not in err
    failure[0] = MemoryError("GIFDAttack ran out of memory: lower num_restarts")  # a search too large for the device
    assert main(["audit", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "ran out of memory: lower num_restarts" in err and "1 setting(s) finished before it are kept" in err
    monkeypatch.setattr(audit_run, "_run_setting", real)
    report = run_audit(path, verbose=False)
    assert report.document["reproducibility"]["resumed"] == ran == ["b1-d0-gifd"]


def test_an_interrupted_overwrite_says_how_to_resume(tmp_path, monkeypatch, capsys) -> None:
    path = write_config(tmp_path)

    def interrupt(cfg, setting, lpips, verbose):
        raise KeyboardInterrupt

    monkeypatch.setattr(audit_run, "_run_setting", interrupt)
    assert main(["audit", str(path), "--no-progress"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    # repeating --overwrite would discard the finished settings again
    assert main(["audit", str(path), "--no-progress", "--overwrite"]) == 130
    assert "run it without --overwrite/--no-resume again to resume" in capsys.readouterr().err


def test_a_batch_size_the_model_cannot_take_in_train_mode_is_named_at_validation(tmp_path, monkeypatch) -> None:
    (tmp_path / "bn1d_model.py").write_text(
        "from torch import nn\n\n\ndef net():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_config(tmp_path)
    text = path.read_text().replace(
        'factory = "art_gifd.models:lenet"\nfactory_kwargs = { seed = 0 }', 'factory = "bn1d_model:net"'
    )
    path.write_text(text.replace("num_classes = 10", "num_classes = 10\ntrain_mode = true"))
    with pytest.raises(
        AuditConfigError, match=r"cannot compute a gradient of 1 image\(s\).*batches of 2 or more"
    ) as err:
        load_audit_config(path)
    assert err.value.keys == ["federated.batch_sizes[0]"]


@pytest.mark.parametrize(
    ("factory", "train_mode", "key", "message"),
    [
        ("soft", False, "model", "outputs probabilities .* Remove the final softmax"),
        ("frozen", False, "model", r"frozen parameters \(requires_grad=False"),
        ("dropout", True, "model.train_mode", r"dropout layers \(\['2'\]\), .* set train_mode = false"),
    ],
)
def test_models_no_client_or_attack_can_use_are_named_at_the_model(
    tmp_path, monkeypatch, factory, train_mode, key, message
):
    (tmp_path / "odd_models.py").write_text(
        "from torch import nn\n\nfrom art_gifd.models import lenet\n\n\n"
        "def soft():\n    return nn.Sequential(lenet(seed=0), nn.Softmax(dim=1))\n\n\n"
        "def frozen():\n    net = lenet(seed=0)\n    net[0].requires_grad_(False)\n    return net\n\n\n"
        "def dropout():\n    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 8), nn.Dropout(), nn.Linear(8, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_config(tmp_path)
    text = path.read_text().replace(
        'factory = "art_gifd.models:lenet"\nfactory_kwargs = { seed = 0 }', f'factory = "odd_models:{factory}"'
    )
    path.write_text(text.replace("num_classes = 10", f"num_classes = 10\ntrain_mode = {str(train_mode).lower()}"))
    with pytest.raises(AuditConfigError, match=message) as err:
        load_audit_config(path)
    assert err.value.keys == [key]  # one problem, at the model: not one per batch size and attack


def test_model_and_data_settings_that_would_mislead_the_audit_are_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "sweepnets.py").write_text(
        "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n\n"
        "class Noisy(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(1024, 10)\n\n"
        "    def forward(self, x):\n        return self.fc(F.dropout(x.flatten(1), 0.5, training=True))\n\n\n"
        "def noisy():\n    return Noisy()\n\n\n"
        "def lazy():\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))\n\n\n"
        "def nograd():\n    torch.set_grad_enabled(False)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))\n"
    )
    (tmp_path / "broken_import.py").write_text("open('missing-classes.txt')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [
        (
            "preprocessing = { mean = [123.675], std = [58.395] }\n",
            "model.preprocessing",
            "not on the scale of clip_values",
        ),
        ("", "data.split", "digits32 has a single split"),
    ]
    for extra, key, message in cases:
        data = 'embedded = "digits32"\nsplit = "tset"' if key == "data.split" else 'embedded = "mnist32"'
        with pytest.raises(AuditConfigError) as err:
            load_audit_config(write_config(tmp_path, model_extra=extra, data=data))
        assert message in problems(err)[key]
    for factory, message in (
        ("sweepnets:noisy", "two forward passes of the model on one batch differ"),
        ("sweepnets:lazy", "hold no data yet (lazy modules"),
        ("broken_import:net", "importing module 'broken_import' failed: FileNotFoundError"),
        ("art_gifd.models:make_classifier", "model.factory: calling art_gifd.models:make_classifier failed"),
        ("sweepnets:nograd", "changed torch's global settings (gradient computation)"),
    ):
        path = write_config(tmp_path)
        text = path.read_text().replace("factory_kwargs = { seed = 0 }\n", "")
        path.write_text(text.replace('factory = "art_gifd.models:lenet"', f'factory = "{factory}"'))
        with pytest.raises(AuditConfigError, match=re.escape(message)):
            load_audit_config(path)
        assert torch.is_grad_enabled()  # what a factory changed is put back


def test_a_utility_run_beyond_its_bounds_is_named_at_its_keys(tmp_path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("rounds = 2\n", "rounds = 3_000_000_000\n"))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "must be an integer in [0, 1000000], got 3000000000" in problems(err)["utility.rounds"]


def test_weights_that_are_not_a_float_state_dict_are_refused(tmp_path) -> None:
    from art_gifd.priors.checkpoints import load_strict

    net = lenet(seed=0)
    integer = {k: v.to(torch.int8) for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"holds integer tensors where Sequential has floating-point ones"):
        load_strict(lenet(seed=1), integer, "'int8.pt'")
    sparse = {k: v.to_sparse() if v.dim() == 2 else v for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"holds sparse tensors"):
        load_strict(lenet(seed=1), sparse, "'sparse.pt'")


def test_the_resume_key_follows_the_model_as_built() -> None:
    from art_gifd.models import load_user_model

    facts = [load_user_model("art_gifd.models:lenet", {"seed": s})[1]["model_sha256"] for s in (0, 0, 1)]
    assert facts[0] == facts[1] != facts[2]  # a factory's other weights (no weights file) change the key


@pytest.mark.parametrize(
    ("share", "chance", "rating"),
    [
        (1.0, None, "high"),  # an attack that starts from noise: the share itself
        (0.25, None, "medium"),
        (0.0, None, "low"),
        (0.8, 0.8, "low"),  # what a batch of 512 decoys reaches by chance is no leak
        (0.85, 0.8, "medium"),
        (0.9, 0.8, "high"),  # half of what chance leaves
        (1.0, 1.0, "undetermined"),  # every decoy passes: the threshold tells nothing, it does not say low
        (0.0, 1.0, "undetermined"),
    ],
)
def test_the_risk_is_rated_on_the_share_beyond_chance(share, chance, rating) -> None:
    assert risk_rating(share, 0.5, 0.0, chance) == rating


def test_an_undetermined_setting_keeps_the_audit_from_reading_low_and_the_threshold_must_be_positive(tmp_path) -> None:
    from art_gifd.report.audit import highest_risk

    assert highest_risk(["low", "undetermined", "low"]) == "undetermined"
    assert highest_risk(["undetermined", "medium"]) == "medium" and highest_risk(["low"]) == "low"
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[report]\nrecognisable_ssim = 0.0\n")
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "(0, 1]" in problems(err)["report.recognisable_ssim"]


def test_decoys_are_the_priors_draws_in_the_clip_range_and_leave_the_prior_alone(lenet_clf, heldout) -> None:
    from art_gifd import GIFDAttack
    from art_gifd.metrics import evaluate_batch
    from art_gifd.priors.embedded import load_default_prior

    prior = load_default_prior().train()
    attack = GIFDAttack(lenet_clf, prior, verbose=False)
    first, again, other = attack.decoys(64, 1), attack.decoys(64, 1), attack.decoys(64, 2)
    assert first.shape == (64, 1, 32, 32) and first.dtype == np.float32 and 0.0 <= first.min() <= first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and prior.training  # seeded draws; the caller's prior keeps its mode
    # matched one to one they rarely pass SSIM 0.5; matched within a batch of 64 they often do: the chance level
    x, y = heldout
    one = [
        evaluate_batch(attack.decoys(1, i), x[i : i + 1], y[i : i + 1], y[i : i + 1])["per_image"]["ssim"][0]
        for i in range(64)
    ]
    many = evaluate_batch(first, x[:64], y[:64], y[:64])["per_image"]["ssim"]
    assert np.mean(np.asarray(one) >= 0.5) < 0.15 < 0.4 < np.mean(np.asarray(many) >= 0.5)
    # a class-conditional prior: the classes given (known labels), else random ones (inferred labels leaked)
    conditional = GIFDAttack(lenet_clf, load_default_prior("mnist32-conditional"), verbose=False)
    with pytest.raises(ValueError, match="3 generator classes for 2 images"):
        conditional.decoys(2, 0, [3, 7, 1])
    given, drawn = conditional.decoys(64, 0, [int(c) for c in y[:64]]), conditional.decoys(64, 0)
    score = [
        evaluate_batch(d[i : i + 1], x[i : i + 1], y[:1], y[:1])["per_image"]["ssim"][0]
        for d in (given, drawn)
        for i in range(64)
    ]
    assert np.mean(np.asarray(score[:64]) >= 0.5) > np.mean(np.asarray(score[64:]) >= 0.5)


def test_an_image_too_large_to_decode_is_named(tmp_path, monkeypatch) -> None:
    from PIL import Image as PILImage

    from art_gifd.data import load_image_folder

    save_png(tmp_path / "faces" / "0" / "big.png", (32, 32), 0)
    save_png(tmp_path / "faces" / "1" / "a.png", (32, 32), 1)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # PIL refuses more than twice this: a decompression bomb
    with pytest.raises(ValueError, match=r"big\.png' is too large to decode .*resize or remove it"):
        load_image_folder(tmp_path / "faces", channels=1)


def test_a_defence_strength_no_attack_can_work_on_is_named_at_validation(tmp_path) -> None:
    path = write_config(tmp_path, defense="gaussian")
    path.write_text(path.read_text().replace("params = { ratio = 0.5 }\nadaptive = true", "params = { sigma = 1e20 }"))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "defenses[0].params" in problems(err)
    assert "update's norm" in problems(err)["defenses[0].params"] and "outside [1e-15, 1e+15]" in str(err.value)


def test_a_fedavg_replay_that_cannot_fit_in_memory_is_named_at_validation(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("art_gifd.attacks.base.available_memory", lambda device: 2**30)  # any machine: 1 GiB free
    path = fedavg_config(tmp_path, 'algorithm = "fedavg"\nlearning_rate = 0.05\nsteps = 100000')
    with pytest.raises(AuditConfigError, match=r"Replaying 100000 local steps .* 1\.0 GiB free: set simulation_steps"):
        load_audit_config(path)
    path = fedavg_config(tmp_path, 'algorithm = "fedavg"\nlearning_rate = 0.05\nsteps = 1000000')
    with pytest.raises(AuditConfigError, match=r"federated\.steps: must be a positive integer \(at most 100000\)"):
        load_audit_config(path)
    path = fedavg_config(tmp_path, 'algorithm = "fedavg"\nlearning_rate = 0.05\nepochs = 100000\nlocal_batch_size = 1')
    with pytest.raises(AuditConfigError, match=r"federated\.epochs: for a client of 2 samples: epochs=100000 over 2"):
        load_audit_config(path)


def test_a_verbose_audit_states_its_size_before_it_starts(tmp_path, capsys) -> None:
    run_audit(write_config(tmp_path), verbose=True)
    captured = capsys.readouterr()
    assert "audit: 2 settings, 2 attack runs (client batches × seeds), 2 utility runs of 2 rounds" in (
        captured.out + captured.err
    )


def test_the_chance_level_is_scored_only_when_asked(lenet_clf, heldout, default_prior) -> None:
    """Benchmarks time the experiment loop: the decoys must not enter their attacks' seconds."""
    from art_gifd.attacks.registry import Budget
    from art_gifd.experiment import attack_batches

    x, y = heldout[0][:1], heldout[1][:1]
    for chance in (False, True):
        ((_, scores, _, _),) = attack_batches(
            lenet_clf, x, y, "gifd", default_prior, Budget(2, 2, 1), 1, 0, chance=chance
        )
        assert ("chance_ssim" in scores) is chance


def test_a_model_factory_beside_the_config_is_found_from_any_folder(tmp_path, monkeypatch) -> None:
    (tmp_path / "beside_config.py").write_text(
        "from art_gifd.models import lenet\n\n\ndef net(seed):\n    return lenet(seed=seed)\n"
    )
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("art_gifd.models:lenet", "beside_config:net"))
    monkeypatch.chdir("/")  # not the config's folder, which is not on sys.path
    assert load_audit_config(path).model["class"]
    path.write_text(path.read_text().replace("beside_config:net", "elsewhere:net"))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert (
        f"put it in '{tmp_path}' (the configuration's folder) or an installed package" in problems(err)["model.factory"]
    )


def test_markdown_cells_cannot_carry_links_or_remote_images() -> None:
    from art_gifd.report.html import markdown_text

    assert markdown_text("![x](http://evil/x.png) [go](javascript:alert(1))") == (
        "![x]\\(http://evil/x.png) [go]\\(javascript:alert(1))"
    )
    assert markdown_text("[attack.budget.steps_per_stage=2]") == "[attack.budget.steps_per_stage=2]"  # no link


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ('"two\\nlines"', "must be one line without control characters"),
        ('"   "', "must hold more than spaces"),
        (f'"{"x" * 81}"', "has 81 characters, more than the 80"),
    ],
)
def test_row_labels_are_one_visible_line(tmp_path, label, message) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("adaptive = true", f"adaptive = true\nlabel = {label}", 1))
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert message in problems(err)["defenses[0].label"]


def test_labels_differing_only_in_surrounding_spaces_are_one_label(tmp_path) -> None:
    path = write_config(tmp_path, attacks=("gifd", "pixel"))
    text = path.read_text().replace('name = "pixel"\n', 'name = "pixel"\nlabel = "gifd "\n', 1)
    path.write_text(text)
    with pytest.raises(AuditConfigError) as err:
        load_audit_config(path)
    assert "duplicated label 'gifd'" in problems(err)["attacks[1].label"]


def test_a_second_baseline_or_an_empty_attacker_list_is_named(tmp_path) -> None:
    path = write_config(tmp_path)
    text = path.read_text()
    extra = '[[defenses]]\ntype = "none"\nlabel = "a"\n\n[[defenses]]\ntype = "none"\nlabel = "b"\n\n'
    path.write_text(text.replace("adaptive = true", "adaptive = []").replace("[[defenses]]", extra + "[[defenses]]", 1))
    with pytest.raises(AuditConfigError) as err:  # the second label silently replaced the first
        load_audit_config(path)
    found = problems(err)
    assert "the undefended baseline 'none' is already defenses[0]" in found["defenses[1].type"]
    assert "is an empty list, which gives no setting" in found["defenses[2].adaptive"]
