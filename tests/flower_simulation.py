"""
One Flower simulation (Ray backend) of the example app under a capture strategy, run in its own process by
``test_flower.py``.

A simulation lives in a child process so that a Ray node that starts too slowly on a loaded machine, or Flower's
executor threads that are never joined after a failure, cannot hang the test session: the parent kills the child's
process group after a timeout. Usage::

    python tests/flower_simulation.py {message,legacy} CAPTURES_FOLDER SAME_JSON

``message`` runs the message API (``ServerApp`` + ``CaptureStrategy``), ``legacy`` the legacy API
(``configure_fit`` / ``aggregate_fit``, ``NumPyClient``, ``LegacyCaptureStrategy``). ``SAME_JSON`` receives, per round,
whether the capture's aggregate equals (exactly) that of a bare ``FedAvg`` given the same replies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_audit"
CLIENTS, ROUNDS = 3, 2
BACKEND = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}}


def message_api(captures: Path) -> list[bool]:
    """The example app for ``ROUNDS`` rounds with ``CLIENTS`` clients under ``CaptureStrategy``."""
    from flower_audit.client_app import app as client_app
    from flower_audit.task import RUN_CONFIG, build_model
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from art_gifd.integrations.flower import CaptureStrategy

    same: list[bool] = []

    class Compare(CaptureStrategy):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            bare, _ = FedAvg(fraction_train=1.0).aggregate_train(server_round, replies)
            pairs = zip(arrays.to_numpy_ndarrays(), bare.to_numpy_ndarrays(), strict=True)
            same.append(all(np.array_equal(a, b) for a, b in pairs))
            return arrays, metrics

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = Compare(FedAvg(fraction_train=1.0, fraction_evaluate=1.0), out=captures)
        config = ConfigRecord({k: RUN_CONFIG[k] for k in ("lr", "local-epochs", "batch-size")})
        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(build_model().state_dict()), num_rounds=ROUNDS, train_config=config
        )

    run_simulation(server_app=server, client_app=client_app, num_supernodes=CLIENTS, backend_config=BACKEND)
    return same


def legacy_api(captures: Path) -> list[bool]:
    """The same training through the legacy API: ``NumPyClient`` clients and a legacy ``FedAvg``."""
    from flower_audit.task import RUN_CONFIG, build_model, partition, train
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from art_gifd.integrations.flower import LegacyCaptureStrategy

    names = list(build_model().state_dict())
    config = {k: RUN_CONFIG[k] for k in ("lr", "local-epochs", "batch-size")}

    class Client(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):
            model = build_model()
            model.load_state_dict({n: torch.as_tensor(a) for n, a in zip(names, parameters, strict=True)})
            x, y = partition(self.pid)
            train(model, x, y, float(config["lr"]), int(config["local-epochs"]), int(config["batch-size"]))
            return [v.numpy() for v in model.state_dict().values()], len(x), {"partition-id": self.pid}

    same: list[bool] = []

    class Compare(LegacyCaptureStrategy):
        def aggregate_fit(self, server_round, results, failures):
            aggregate, metrics = super().aggregate_fit(server_round, results, failures)
            bare, _ = FedAvg().aggregate_fit(server_round, results, failures)
            pairs = zip(parameters_to_ndarrays(aggregate), parameters_to_ndarrays(bare), strict=True)
            same.append(all(np.array_equal(a, b) for a, b in pairs))
            return aggregate, metrics

    inner = FedAvg(
        fraction_evaluate=0.0,
        min_fit_clients=CLIENTS,
        min_available_clients=CLIENTS,
        initial_parameters=ndarrays_to_parameters([v.numpy() for v in build_model().state_dict().values()]),
        on_fit_config_fn=lambda _: dict(config),
    )
    run_simulation(
        server_app=ServerApp(
            config=ServerConfig(num_rounds=ROUNDS), strategy=Compare(inner, out=captures, names=names)
        ),
        client_app=ClientApp(client_fn=lambda context: Client(int(context.node_config["partition-id"])).to_client()),
        num_supernodes=CLIENTS,
        backend_config=BACKEND,
    )
    return same


if __name__ == "__main__":
    kind, folder, out = sys.argv[1:]
    sys.path.insert(0, str(EXAMPLE))
    same = {"message": message_api, "legacy": legacy_api}[kind](Path(folder))
    Path(out).write_text(json.dumps(same))
