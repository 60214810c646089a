"""CaptureWriter and the capture strategies' arguments: a capture folder holds one run, continued only by itself."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from art_gifd.integrations.captures import CaptureError, CaptureWriter

RUN_A = {"strategy": "run A", "rounds": (1, 2)}


def capture_round(writer: CaptureWriter, server_round: int, shape: tuple[int, ...] = (2, 2)) -> None:
    writer.write_global(server_round, {"w": np.zeros(shape, np.float32)}, {"lr": 0.1})
    writer.write_update(server_round, 7, {"w": np.ones(shape, np.float32)}, 4)


def test_a_restarted_run_continues_its_folder(tmp_path) -> None:
    capture_round(CaptureWriter(tmp_path, RUN_A), 1)
    again = CaptureWriter(tmp_path, RUN_A)  # the tuple is stored as a list: still the same run
    again.write_global(1, {"w": np.zeros((2, 2), np.float32)}, {"lr": 0.1})
    capture_round(again, 2)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["metadata"] == {"strategy": "run A", "rounds": [1, 2]}
    assert [u["round"] for u in index["updates"]] == [2]  # round 1 captured again: its earlier update is dropped


def test_another_runs_folder_is_refused(tmp_path) -> None:
    capture_round(CaptureWriter(tmp_path, RUN_A), 1)
    before = (tmp_path / "index.json").read_text()
    with pytest.raises(CaptureError, match=r"holds another run \(strategy 'run A', not 'run B'\): use a new folder"):
        CaptureWriter(tmp_path, {**RUN_A, "strategy": "run B"})
    other_model = CaptureWriter(tmp_path, RUN_A)
    with pytest.raises(
        CaptureError, match=r"holds another run \(round 1's arrays differ .*'w' \[2, 2\] there, \[3\] now"
    ):
        other_model.write_global(2, {"w": np.zeros(3, np.float32)}, {"lr": 0.1})
    with pytest.raises(CaptureError, match=r"'v' None there, \[2, 2\] now, 'w' \[2, 2\] there, None now"):
        other_model.write_global(1, {"v": np.zeros((2, 2), np.float32)}, {"lr": 0.1})
    assert (tmp_path / "index.json").read_text() == before


def test_a_new_run_into_a_folder_with_later_rounds_is_refused(tmp_path) -> None:
    first = CaptureWriter(tmp_path, RUN_A)
    for number in (1, 2, 3):
        capture_round(first, number)
    before = (tmp_path / "index.json").read_text()
    second = CaptureWriter(tmp_path, RUN_A)  # the same app run again: Flower starts at round 1
    with pytest.raises(CaptureError, match=r"holds rounds 2–3 of an earlier run, and capturing round 1 again"):
        second.write_global(1, {"w": np.zeros((2, 2), np.float32)}, {"lr": 0.5})
    assert (tmp_path / "index.json").read_text() == before  # the earlier run is kept whole


def test_a_damaged_round_entry_is_named(tmp_path) -> None:
    from art_gifd.integrations.captures import read_index

    capture_round(CaptureWriter(tmp_path, RUN_A), 1)
    index = json.loads((tmp_path / "index.json").read_text())
    for entry, problem in (
        ({k: v for k, v in index["rounds"]["1"].items() if k != "sha256"}, r"rounds\.1\.sha256 is missing"),
        ({**index["rounds"]["1"], "global": 5}, r"rounds\.1\.global is 5, expected a string"),
    ):
        (tmp_path / "index.json").write_text(json.dumps({**index, "rounds": {"1": entry}}))
        with pytest.raises(CaptureError, match=rf"damaged \({problem}\)\. Restore the file"):
            read_index(tmp_path)
    text = (tmp_path / "index.json").read_bytes()
    (tmp_path / "index.json").write_bytes(text.replace(b'"format"', b'"\xffformat"'))  # a byte damaged on disk
    with pytest.raises(CaptureError, match=r"index\.json: unreadable \(.*utf-8.*\)\. Capture the run again"):
        read_index(tmp_path)
    with pytest.raises(CaptureError, match="unreadable"):
        CaptureWriter(tmp_path, RUN_A)


def test_a_file_is_not_a_capture_folder(tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=r"afile' is a file: give a folder to write into"):
        CaptureWriter(tmp_path / "afile")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rounds": []}, "rounds is empty, so nothing would be captured: list some, or pass None for all"),
        ({"rounds": [0, 1]}, "rounds must be a positive integer, got 0"),
        ({"clients": []}, "clients is empty"),
    ],
)
def test_capture_strategy_selections(tmp_path, kwargs, message) -> None:
    pytest.importorskip("flwr")
    from flwr.serverapp.strategy import FedAvg

    from art_gifd.integrations.flower import CaptureStrategy

    with pytest.raises(ValueError, match=message):
        CaptureStrategy(FedAvg(), out=tmp_path / "cap", **kwargs)
    assert not (tmp_path / "cap").exists()
    strategy = CaptureStrategy(FedAvg(), out=tmp_path / "cap", rounds=[2, 1])
    assert strategy.capture.rounds == {1, 2} and not strategy.capture.captured(3)
    metadata = json.loads((tmp_path / "cap" / "index.json").read_text())["metadata"]
    assert metadata["rounds"] == [1, 2]


def test_update_explained_is_the_cosine_of_the_replayed_update_for_every_attack() -> None:
    """An L2 attack's own loss is on another scale: the indicator is recomputed with the cosine distance."""
    from types import SimpleNamespace

    import torch

    from art_gifd import LocalTraining, client_update
    from art_gifd.audit.captures import _update_explained
    from art_gifd.data import load_mnist32
    from art_gifd.models import convnet, make_classifier

    x, y = load_mnist32("heldout")
    x, y = x[:2], y[:2]
    clf = make_classifier(convnet(seed=0), (1, 32, 32))
    training = LocalTraining(0.05, epochs=1, batch_size=1, shuffle=False)
    observed = client_update(clf, x, y, training, seed=0)
    truth = SimpleNamespace(images=x, labels=y, best_loss=0.5)
    assert _update_explained(clf, observed, truth, training, "l2") == pytest.approx(1.0, abs=1e-5)
    noise = SimpleNamespace(images=torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).numpy(), labels=y)
    assert _update_explained(clf, observed, noise, training, "l2") < 0.99
    assert _update_explained(clf, observed, truth, training, "cosine") == 0.5  # a cosine attack's own loss


def lenet_capture(folder, accuracy: object = 0.5, rounds: dict | None = None) -> None:
    """
    Rounds of a LeNet run (``rounds``: round -> its client nodes; default nodes 10 and 11 in rounds 1 and 2) whose
    clients report 2 examples (node 12: none), written as CaptureStrategy writes them.
    """
    from art_gifd.models import lenet

    rng = np.random.default_rng(0)
    net = {k: v.detach().numpy().copy() for k, v in lenet(seed=0).state_dict().items()}
    writer = CaptureWriter(folder, {"strategy": "FedAvg"})
    for server_round, nodes in (rounds or {1: (10, 11), 2: (10, 11)}).items():
        writer.write_global(server_round, net, {"lr": 0.05, "local-epochs": 1, "batch-size": 2})
        for node in nodes:
            returned = {k: v - 1e-3 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in net.items()}
            writer.write_update(server_round, node, returned, 2 if node != 12 else 0)
        writer.write_round_metrics(server_round, "evaluate", {"accuracy": accuracy})


def lenet_audit(folder, **federated) -> dict:
    return {
        "output": str(folder.parent / "audit-out"),
        "model": {"factory": "art_gifd.models:lenet", "input_shape": [1, 32, 32], "num_classes": 10},
        "federated": {"source": str(folder), "shuffle": False, **federated},
        "budget": {"steps_per_stage": 1, "stages": 2, "num_restarts": 1},
        "priors": {"mnist": {"type": "embedded", "name": "mnist32"}},
        "attacks": [{"name": "gifd", "prior": "mnist", "params": {"latent_pool": 1}}],
    }


def test_hand_edited_indexes_and_selections_that_meet_nowhere_are_named(tmp_path) -> None:
    from art_gifd.audit.captures import load_capture_audit
    from art_gifd.audit.config import AuditConfigError
    from art_gifd.integrations.captures import read_index

    folder = tmp_path / "cap"
    lenet_capture(folder, rounds={1: (10, 11, 12), 2: (10, 11)})
    text = (folder / "index.json").read_text()
    index = json.loads(text)
    for edit, problem in (
        (lambda i: i["rounds"].update({"01": i["rounds"]["1"]}), "rounds holds the key '01', not a round number"),
        (lambda i: i["rounds"].update({"²": {}}), "rounds holds the key '²', not a round number"),
        (lambda i: i.update(metadata=None), "metadata is null, expected an object"),
        (lambda i: i["rounds"]["1"].update(capture_seconds="n/a"), "rounds.1.capture_seconds is"),
        (lambda i: i["rounds"]["1"].update(evaluate_metrics=[0.5]), "rounds.1.evaluate_metrics is"),
    ):
        edited = json.loads(text)
        edit(edited)
        (folder / "index.json").write_text(json.dumps(edited))
        with pytest.raises(CaptureError, match=re.escape(problem)):
            read_index(folder)
    # a key given twice in one object: json keeps the last, so round 1 would get round 2's weights without a word
    (folder / "index.json").write_text(text.replace('"2": {', '"1": {', 1))
    with pytest.raises(CaptureError, match="the key '1' is given twice"):
        read_index(folder)
    (folder / "index.json").write_text(text)
    assert index["updates"][2]["num_examples"] == 0  # a client with an empty partition: its capture stays readable
    with pytest.raises(AuditConfigError) as err:
        load_capture_audit(lenet_audit(folder, rounds=[1], clients=[12]))
    assert "reported 0 training examples" in str(err.value) and "leave node 12 out" in str(err.value)
    sampled = tmp_path / "sampled"  # node 11 trained in round 1 only: each list names a captured one, never together
    lenet_capture(sampled, rounds={1: (10, 11), 2: (10,)})
    with pytest.raises(
        AuditConfigError, match=r"no captured update is of round\(s\) \[2\] and client node\(s\) \[11\]"
    ):
        load_capture_audit(lenet_audit(sampled, rounds=[2], clients=[11]))


def test_a_capture_audit_reports_any_round_metric_and_redoes_damaged_reconstructions(tmp_path) -> None:
    import hashlib

    from art_gifd.audit.captures import load_capture_audit, run_capture_audit
    from art_gifd.audit.config import AuditConfigError

    folder = tmp_path / "cap"
    lenet_capture(folder, accuracy="high")  # a framework's metric that is no number: left out of the report
    config = lenet_audit(folder)
    paths = run_capture_audit(config, verbose=False)
    assert "run_evaluate_accuracy" not in json.loads(paths["json"].read_text())["rows"][0]
    for page in ("markdown", "html"):  # the run's own metadata, whatever its keys (no Flower version here)
        assert "(strategy: FedAvg). All numbers:" in paths[page].read_text()
    state = sorted((tmp_path / "audit-out" / "captures-state").glob("*.npz"))
    assert len(state) == 4
    state[0].write_bytes(state[0].read_bytes()[:300])  # a reconstruction file cut short
    (tmp_path / "audit-out" / "report.json").unlink()  # as if interrupted while writing the report
    run_capture_audit(config, verbose=False)  # resumes: the damaged one is searched again, the others reused
    assert np.load(state[0]).files
    index = json.loads((folder / "index.json").read_text())
    entry = index["rounds"]["2"]
    with np.load(folder / entry["global"]) as arrays:
        weights = {k: arrays[k].copy() for k in arrays.files}
    weights["7.bias"][0] = np.nan  # a diverged round
    np.savez(folder / entry["global"], **weights)
    entry["sha256"] = hashlib.sha256((folder / entry["global"]).read_bytes()).hexdigest()
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        AuditConfigError, match=r"round 2: its captured global weights hold NaN .* \[federated\] rounds"
    ):
        load_capture_audit(config)
