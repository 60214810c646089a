"""The ServerApp: FedAvg under art-gifd's CaptureStrategy (optionally behind Flower's client-side DP clipping)."""

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from art_gifd.integrations.flower import CaptureStrategy
from flower_audit.task import RUN_CONFIG, build_model


def make_app(**overrides: Any) -> ServerApp:
    """The ServerApp; ``overrides`` replace entries of :data:`RUN_CONFIG` (as the run configuration of ``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = {**RUN_CONFIG, **dict(context.run_config), **overrides}
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
        if run["dp"]:
            strategy = DifferentialPrivacyClientSideFixedClipping(
                strategy,
                noise_multiplier=float(run["noise-multiplier"]),
                clipping_norm=float(run["clipping-norm"]),
                num_sampled_clients=int(run["num-clients"]),
            )
        strategy = CaptureStrategy(strategy, out=str(run["captures"]))
        train_config = ConfigRecord({key: run[key] for key in ("lr", "local-epochs", "batch-size")})
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(build_model().state_dict()),
            num_rounds=int(run["num-server-rounds"]),
            train_config=train_config,
        )

    return app


app = make_app()
