"""Flower integration: a real Flower simulation (Ray backend) under CaptureStrategy, then an audit of its captures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

flwr = pytest.importorskip("flwr", reason="needs the flower extra: pip install 'art-gifd[flower]'")
pytest.importorskip("ray", reason="Flower's simulation runtime needs Ray")

from art_gifd.audit.captures import load_capture_audit, run_capture_audit  # noqa: E402
from art_gifd.audit.config import AuditConfigError  # noqa: E402
from art_gifd.cli import main  # noqa: E402
from art_gifd.integrations.captures import CaptureError, CaptureFolder  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_audit"
SIMULATION = Path(__file__).resolve().parent / "flower_simulation.py"
CLIENTS, ROUNDS = 3, 2  # as in flower_simulation.py


#: Seconds one simulation may take (about 10 s alone on 2 cores) before its process group is killed.
SIMULATION_TIMEOUT = 300


def _simulate(kind: str, captures: Path) -> list[bool]:
    """
    Run ``tests/flower_simulation.py`` (``kind``: ``message`` or ``legacy`` API) in a child process of its own process
    group, killed after :data:`SIMULATION_TIMEOUT` seconds, and tried twice: a Ray node that starts too slowly on a
    loaded machine fails one attempt instead of hanging the session. Returns, per round, whether the capture left the
    aggregate unchanged.
    """
    same = captures.parent / f"{captures.name}-same.json"
    logs = []
    for _ in range(2):
        shutil.rmtree(captures, ignore_errors=True)
        command = [sys.executable, str(SIMULATION), kind, str(captures), str(same)]
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            log = child.communicate(timeout=SIMULATION_TIMEOUT)[0]
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            log = child.communicate()[0] + f"\n(killed after {SIMULATION_TIMEOUT} s)"
        if child.returncode == 0:
            return json.loads(same.read_text())
        logs.append(log[-4000:])
    pytest.fail(f"the Flower simulation ({kind} API) failed twice:\n" + "\n---\n".join(logs))


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    """Captures of one simulated run, and per round whether the capture left the aggregate unchanged."""
    folder = tmp_path_factory.mktemp("flower") / "captures"
    return folder, _simulate("message", folder)


def _config(folder: Path, **federated) -> dict:
    return {
        "output": str(folder.parent / "audit-out"),
        "model": {"factory": "art_gifd.models:convnet", "input_shape": [1, 32, 32], "num_classes": 10},
        "federated": {"source": str(folder), "shuffle": False, "rounds": [ROUNDS], **federated},
        "budget": {"steps_per_stage": 50, "stages": 4, "num_restarts": 2},
        "priors": {"mnist": {"type": "embedded", "name": "mnist32"}},
        "attacks": [{"name": "gifd", "prior": "mnist"}],
    }


def _best_psnr(config: dict) -> float:
    sys.path.insert(0, str(EXAMPLE))
    try:
        cfg = load_capture_audit(
            {**config, "federated": {**config["federated"], "client_data": "flower_audit.task:partition"}}
        )
        paths = run_capture_audit(cfg, overwrite=True, verbose=False)
        document = json.loads(paths["json"].read_text())
        paths["json"].unlink()  # as if interrupted while writing the report: the scored records are reused
        again = json.loads(run_capture_audit(cfg, verbose=False)["json"].read_text())
        assert again["records"] == document["records"] and again["rows"] == document["rows"]
    finally:
        sys.path.remove(str(EXAMPLE))
    markdown = paths["markdown"].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| round |"))
    delimiter = markdown.splitlines()[markdown.splitlines().index(header) + 1]
    assert "| chance |" in header and header.count("|") == delimiter.count("|")  # a table that renders
    records = document["records"]
    levels = ("low", "medium", "high")
    assert document["summary"]["highest_risk"] == levels[max(levels.index(r["risk"]) for r in records)]
    assert all(0.0 <= r["chance_share"] <= 1.0 for r in records)  # gifd's decoys: a measured chance level
    return max(r["psnr"] for r in records)


def _assert_replayed(captures: CaptureFolder) -> None:
    """Replaying a round-2 client's training from the captured global arrays gives its captured update."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from flower_audit.task import RUN_CONFIG, build_model, partition, train
    finally:
        sys.path.remove(str(EXAMPLE))
    update = captures.select([2])[0]
    model = build_model()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in captures.global_arrays(2).items()})
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = partition(update.metrics["partition-id"])
    train(model, x, y, RUN_CONFIG["lr"], RUN_CONFIG["local-epochs"], RUN_CONFIG["batch-size"])
    for name, delta in captures.update_arrays(update).items():
        np.testing.assert_allclose(delta, (before[name] - model.state_dict()[name]).numpy(), atol=1e-6)


def test_capture_leaves_aggregation_unchanged_and_records_real_updates(flower_run):
    folder, same = flower_run
    assert same == [True] * ROUNDS
    captures = CaptureFolder(folder)
    assert captures.rounds == [1, 2] and len(captures.updates) == CLIENTS * ROUNDS
    sys.path.insert(0, str(EXAMPLE))
    try:
        from flower_audit.task import RUN_CONFIG, partition
    finally:
        sys.path.remove(str(EXAMPLE))
    for entry in captures.rounds_info.values():  # what the capture cost the run, round by round
        assert 0.0 < entry["capture_seconds"] < 30.0 and entry["sent_at"] > 0
    update = captures.select([2])[0]
    assert update.config["lr"] == RUN_CONFIG["lr"] and update.num_examples == len(partition(0)[0])
    _assert_replayed(captures)


def test_audit_of_captures_needs_the_right_protocol_and_weights(flower_run, tmp_path):
    folder, _ = flower_run
    right = _best_psnr(_config(folder))
    # The wrong local training (ten times the learning rate, five epochs) and the wrong global model (round 1's).
    wrong_protocol = _best_psnr(_config(folder, learning_rate=0.5, epochs=5))
    stale = tmp_path / "captures"
    shutil.copytree(folder, stale)
    index = json.loads((stale / "index.json").read_text())
    shutil.copy(stale / index["rounds"]["1"]["global"], stale / index["rounds"]["2"]["global"])
    index["rounds"]["2"]["sha256"] = index["rounds"]["1"]["sha256"]
    (stale / "index.json").write_text(json.dumps(index))
    wrong_weights = _best_psnr(_config(stale))
    print(
        f"best client PSNR: right {right:.2f}, wrong protocol {wrong_protocol:.2f}, wrong weights {wrong_weights:.2f}"
    )
    assert right > 30.0
    assert wrong_protocol < right - 5.0 and wrong_weights < right - 5.0


def test_capture_audit_without_ground_truth_reports_the_indicator(flower_run):
    folder, _ = flower_run
    config = _config(folder)
    config["budget"]["steps_per_stage"] = 10
    cfg = load_capture_audit(config)
    paths = run_capture_audit(cfg, overwrite=True, verbose=False)
    document = json.loads(paths["json"].read_text())
    # another configuration's images can never stand beside these records, and the report is not replaced unasked
    assert all(r["images"].endswith(f"-{cfg.config_hash[:12]}.npz") for r in document["records"])
    config["budget"]["steps_per_stage"] = 11
    with pytest.raises(AuditConfigError, match=r"already holds a report.*overwrite"):
        run_capture_audit(load_capture_audit(config), verbose=False)
    assert not document["ground_truth"] and all("psnr" not in r for r in document["records"])
    assert document["summary"]["highest_risk"] is None  # nothing to rate without the clients' images
    assert all(0.0 < r["update_explained"] <= 1.0 for r in document["records"])
    assert "No ground truth" in paths["markdown"].read_text() and paths["figure"].is_file()
    html = paths["html"].read_text()
    worst = document["worst"]
    # the most exposed update's row is highlighted, among real tables, with what capturing each round cost
    assert html.count('class="worst"') == 2 and f'<td class="text">{worst["id"]}</td>' in html
    assert "No ground truth" in html and "capture s" in html and "n/a</td></tr>" not in html
    # the report states the budget behind its numbers, and which updates it left out
    assert any(line.startswith("Attack budgets: gifd: 40 steps per restart") for line in document["threat_model"])
    config["federated"]["rounds"] = [1]
    config["output"] = str(Path(config["output"]).parent / "subset")
    subset = json.loads(run_capture_audit(load_capture_audit(config), verbose=False)["json"].read_text())
    left_out = [line for line in subset["threat_model"] if line.startswith("Attacked ")]
    assert left_out and "rounds 1 of 1, 2" in left_out[0] and subset["settings"]["federated"]["rounds"] == [1]


def test_updates_searched_together_match_those_attacked_one_at_a_time(flower_run, tmp_path):
    folder, _ = flower_run
    runs = {}
    # one at a time; the clients of each round together; every client of both rounds in one search
    for together in (1, CLIENTS, 2 * CLIENTS):
        config = _config(folder, rounds=[1, 2], updates_per_search=together, mix_rounds=together > CLIENTS)
        config["budget"]["steps_per_stage"] = 5
        config["output"] = str(tmp_path / f"together-{together}")
        paths = run_capture_audit(load_capture_audit(config), overwrite=True, verbose=False)
        records = json.loads(paths["json"].read_text())["records"]
        assert {r["searched_together"] for r in records} == {together} and len(records) == 2 * CLIENTS
        state = Path(config["output"]) / "captures-state"
        runs[together] = [
            (r["id"], r["matching_loss"], np.load(state / r["images"])["reconstructions"]) for r in records
        ]
    for alone, same_round, two_rounds in zip(*runs.values(), strict=True):
        assert alone[0] == same_round[0] == two_rounds[0]
        # the clients of one round share its weights: for this ConvNet's FedAvg replay (on this torch build), bit for
        # bit the reconstructions of one at a time
        assert same_round[1] == alone[1]
        np.testing.assert_array_equal(same_round[2], alone[2])
        # two rounds' weights batched round differently (tests/test_many.py: equal losses up to 1e-5 at the same
        # images), and the search amplifies that until a stage may carry another restart: the matching loss agrees
        assert two_rounds[1] == pytest.approx(alone[1], rel=0.1)


def test_bad_captures_are_named(flower_run, tmp_path, capsys):
    folder, _ = flower_run
    other_model = _config(folder)
    other_model["model"] = {"factory": "art_gifd.models:lenet", "input_shape": [1, 32, 32], "num_classes": 10}
    with pytest.raises(AuditConfigError, match=r"another model|shape"):
        load_capture_audit(other_model)
    with pytest.raises(AuditConfigError, match=r"round\(s\) \[7\] were not captured"):
        load_capture_audit(_config(folder, rounds=[7]))
    with pytest.raises(AuditConfigError, match=r"federated\.updates_per_search"):
        load_capture_audit(_config(folder, updates_per_search=0))
    with pytest.raises(AuditConfigError, match=r"federated\.mix_rounds"):
        load_capture_audit(_config(folder, mix_rounds="yes"))
    bad_report = {**_config(folder), "report": {"high_share": 0.2, "medium_share": 0.3}}
    with pytest.raises(AuditConfigError, match=r"report\.medium_share.*must be below report\.high_share"):
        load_capture_audit(bad_report)
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    index = json.loads((bare / "index.json").read_text())
    for entry in index["rounds"].values():
        entry["config"] = {}
    (bare / "index.json").write_text(json.dumps(index))
    with pytest.raises(AuditConfigError, match=r"learning_rate.*not in the captured train configuration"):
        load_capture_audit(_config(bare))
    for entry in index["rounds"].values():  # what Flower's app template sends: the clients read the rest themselves
        entry["config"] = {"lr": 0.1}
    (bare / "index.json").write_text(json.dumps(index))
    with pytest.raises(AuditConfigError, match=r"does not say how many local epochs \(or steps\)"):
        load_capture_audit(_config(bare))
    load_capture_audit(_config(bare, epochs=1, local_batch_size=2))  # said in [federated]: accepted
    torn = tmp_path / "torn"
    shutil.copytree(folder, torn)
    victim = torn / CaptureFolder(torn).select([2])[0].file
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(AuditConfigError, match="damaged or truncated"):  # every selected update is read at validation
        load_capture_audit(_config(torn))
    as_file = tmp_path / "torn.yaml"  # the command prints the same message, without a traceback
    as_file.write_text(yaml.safe_dump(_config(torn)))
    assert main(["audit", str(as_file), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "damaged or truncated" in err and "Traceback" not in err
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    index = json.loads((edited / "index.json").read_text())
    index["updates"][0]["num_examples"] = -3
    (edited / "index.json").write_text(json.dumps(index))
    with pytest.raises(AuditConfigError, match=r"index\.json: damaged \(update .* has num_examples -3"):
        load_capture_audit(_config(edited))
    index["updates"][0]["num_examples"] = 2
    index["rounds"].pop(str(index["updates"][0]["round"]))
    (edited / "index.json").write_text(json.dumps(index))
    with pytest.raises(AuditConfigError, match=r"whose global weights were not captured"):
        load_capture_audit(_config(edited))
    (torn / "index.json").unlink()
    with pytest.raises(AuditConfigError, match=r"index\.json: missing"):
        load_capture_audit(_config(torn))


def _rewrite_update(folder: Path, position: int, transform) -> str:
    """Replace the arrays of one captured update by ``transform`` of them, its index entry kept consistent."""
    index = json.loads((folder / "index.json").read_text())
    entry = index["updates"][position]
    path = folder / entry["file"]
    with np.load(path) as arrays:
        changed = {name: transform(arrays[name]) for name in arrays.files}
    buffer = io.BytesIO()
    np.savez(buffer, **changed)
    path.write_bytes(buffer.getvalue())
    entry["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (folder / "index.json").write_text(json.dumps(index))
    return f"r{entry['round']}-n{entry['node_id']}"


def test_updates_and_ground_truth_that_cannot_be_attacked_or_scored_are_named(flower_run, tmp_path, monkeypatch):
    folder, _ = flower_run
    odd = tmp_path / "odd"
    shutil.copytree(folder, odd)
    zero = _rewrite_update(odd, 0, np.zeros_like)  # a client that sent the global weights back unchanged
    nan = _rewrite_update(odd, 1, lambda a: np.full_like(a, np.nan))  # a client that diverged
    with pytest.raises(AuditConfigError) as err:
        load_capture_audit(_config(odd, rounds=None))
    found = str(err.value)
    assert f"update {zero} (" in found and "zero everywhere" in found and "Leave it out with [federated]" in found
    assert f"update {nan} (" in found and "NaN or infinite" in found
    (tmp_path / "odd_task.py").write_text(
        "import numpy as np\n\n\ndef shifted(pid):\n    x = np.zeros((4, 1, 32, 32), np.float32)\n"
        "    return x, np.array([10, 11, 12, 13])\n\n\ndef missing(pid):\n    raise KeyError(pid)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, message in (
        ("odd_task:shifted", r"labels must be class indices in \[0, 9\], got int64 values in \[10, 13\]"),
        ("odd_task:missing", r"client_data\(\d+\) raised KeyError"),
    ):
        with pytest.raises(AuditConfigError, match=message):
            load_capture_audit(_config(folder, client_data=spec))


def test_a_search_that_fails_ends_the_capture_audit_in_one_line(flower_run, tmp_path, monkeypatch, capsys):
    import art_gifd.audit.captures as captures_module
    from art_gifd.cli import main

    folder, _ = flower_run

    def fail(*args, **kwargs):
        raise MemoryError("GIFDAttack ran out of memory: lower num_restarts")

    monkeypatch.setattr(captures_module, "_search_together", fail)
    config = tmp_path / "capture.yaml"  # JSON is YAML
    config.write_text(json.dumps({**_config(folder, rounds=[1]), "output": str(tmp_path / "out")}))
    assert main(["audit", str(config), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: attack 'gifd' (seed 0) on update(s)" in err and "ran out of memory" in err
    assert "0 attack(s) finished before it are kept" in err and "Traceback" not in err


def test_interrupted_write_leaves_no_torn_file(tmp_path, monkeypatch):
    import os

    from art_gifd.integrations.captures import CaptureWriter

    writer = CaptureWriter(tmp_path / "cap")
    writer.write_global(1, {"w": np.ones((2, 2), np.float32)}, {"lr": 0.1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        writer.write_update(1, 5, {"w": np.zeros((2, 2), np.float32)}, 4)
    monkeypatch.undo()
    assert not list((tmp_path / "cap" / "round-0001").glob("node-*")) and not list((tmp_path / "cap").rglob("*.tmp"))
    with pytest.raises(CaptureError, match="no client update was captured"):  # the index still lists no update
        CaptureFolder(tmp_path / "cap")


def test_legacy_strategies_are_captured_the_same_way(tmp_path):
    """A legacy-API run (configure_fit / aggregate_fit, NumPyClient) under LegacyCaptureStrategy."""
    from flwr.server.strategy import FedAvg

    from art_gifd.integrations.flower import LegacyCaptureStrategy

    sys.path.insert(0, str(EXAMPLE))
    try:
        from flower_audit.task import RUN_CONFIG
    finally:
        sys.path.remove(str(EXAMPLE))
    folder = tmp_path / "legacy"
    with pytest.raises(ValueError, match="names must be the model's array names"):
        LegacyCaptureStrategy(FedAvg(), out=folder, names="weight")
    same = _simulate("legacy", folder)
    assert same == [True] * ROUNDS
    captures = CaptureFolder(folder)
    assert captures.rounds == [1, 2] and len(captures.updates) == CLIENTS * ROUNDS
    _assert_replayed(captures)
    assert load_capture_audit(_config(folder)).updates[0].config["lr"] == RUN_CONFIG["lr"]
