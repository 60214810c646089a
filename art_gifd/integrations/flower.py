"""
Flower: capture what the server of a real Flower run receives, for an audit (``pip install 'art-gifd[flower]'``).

:class:`CaptureStrategy` wraps any strategy of Flower's Message API (``flwr.serverapp.strategy``: ``FedAvg``, the DP
wrappers, a custom one). For the selected rounds it writes the global arrays sent, the train configuration sent and
every selected client's reply (as an update, with its number of examples, node id and metrics) into a capture folder
(:mod:`art_gifd.integrations.captures`), one file per client-round, written atomically as each reply is handed to the
wrapped strategy, so no more than one reply is held by the capture at a time. It never changes what the wrapped
strategy receives or returns. The per-round metrics of the evaluation rounds (e.g. the clients' accuracy) go into the
index too, for the audit's leakage-over-training figure::

    from flwr.serverapp.strategy import FedAvg
    from art_gifd.integrations.flower import CaptureStrategy

    strategy = CaptureStrategy(FedAvg(fraction_train=1.0), out="captures/", rounds=[1, 5, 10])
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10, train_config=ConfigRecord({"lr": 0.05}))

then ``art-gifd audit audit.toml`` with ``[federated] source = "captures/"``.

:class:`LegacyCaptureStrategy` does the same for a strategy of Flower's legacy API (``flwr.server.strategy``:
``configure_fit`` / ``aggregate_fit``), whose parameters are unnamed lists of arrays: it takes the names (the model's
``state_dict`` keys, in the order the clients send them)::

    strategy = LegacyCaptureStrategy(flwr.server.strategy.FedAvg(), out="captures/", names=list(net.state_dict()))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import flwr
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.common import parameters_to_ndarrays
    from flwr.server import strategy as legacy
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "art_gifd.integrations.flower needs Flower's Message API (flwr >= 1.21): pip install 'art-gifd[flower]'"
    ) from err

from art_gifd.integrations.captures import CaptureWriter
from art_gifd.validation import check_integer


def _selection(values: Sequence[int] | None, name: str, low: int) -> frozenset[int] | None:
    """The set of ``values`` (integers >= ``low``), or ``None`` for all; an empty selection would capture nothing."""
    if values is None:
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of integers or None (all), got {values!r}.")
    selected = frozenset(int(check_integer(name, v, low)) for v in values)
    if not selected:
        raise ValueError(f"{name} is empty, so nothing would be captured: list some, or pass None for all.")
    return selected


def _arrays(record: ArrayRecord) -> dict[str, Any]:
    """An ArrayRecord's arrays as numpy, by name."""
    return dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))


def _node(proxy: Any) -> int:
    """A legacy client proxy's node id (its ``cid`` is the node id as a string)."""
    return int(getattr(proxy, "node_id", proxy.cid))


class _Capture:
    """What both strategy wrappers record: the selected rounds and clients, written through one capture writer."""

    def __init__(
        self, out: str | Path, rounds: Sequence[int] | None, clients: Sequence[int] | None, describe: str
    ) -> None:
        self.rounds = _selection(rounds, "rounds", 1)  # Flower's server rounds start at 1
        self.clients = _selection(clients, "clients", 0)
        self._node_configs: dict[int, dict[str, Any]] = {}
        self.writer = CaptureWriter(
            out,
            {
                "strategy": describe,
                "flwr": flwr.__version__,
                "rounds": "all" if rounds is None else sorted(self.rounds),
            },
        )

    def captured(self, server_round: int) -> bool:
        return self.rounds is None or server_round in self.rounds

    def sent(self, server_round: int, arrays: dict[str, Any], configs: dict[int, dict[str, Any]], first: int) -> None:
        """
        Record a captured round's global arrays and the train config sent to each node (``first``'s is the round's).
        """
        round_config = configs[first]
        self.writer.write_global(server_round, arrays, round_config)
        # A strategy may configure clients differently: their own config goes with their update.
        self._node_configs = {node: c for node, c in configs.items() if c != round_config}

    def reply(
        self, server_round: int, node: int, arrays: dict[str, Any], examples: Any, metrics: dict[str, Any]
    ) -> None:
        """Record one client's reply of a captured round, if the client is selected."""
        if self.captured(server_round) and (self.clients is None or node in self.clients):
            examples = None if examples is None else int(examples)
            self.writer.write_update(server_round, node, arrays, examples, metrics, self._node_configs.get(node))


class CaptureStrategy(Strategy):
    """
    A Flower strategy that records the selected rounds' global arrays and client replies, then defers to ``strategy``.

    :param strategy: The strategy of the run (its aggregation, sampling and evaluation are used unchanged).
    :param out: The capture folder (created; an existing capture of the same run there is continued).
    :param rounds: Server rounds to capture, from 1 (``None``: every round).
    :param clients: Client node ids to capture (``None``: every client that replies).
    :param num_examples_key: Metric of a reply that holds its number of training examples (default: the wrapped
                             strategy's ``weighted_by_key``, else ``"num-examples"``).
    """

    def __init__(
        self,
        strategy: Strategy,
        out: str | Path,
        rounds: Sequence[int] | None = None,
        clients: Sequence[int] | None = None,
        num_examples_key: str | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise ValueError(
                f"strategy must be a Flower Message-API strategy (flwr.serverapp.strategy.Strategy), got "
                f"{type(strategy).__name__}; wrap legacy flwr.server.strategy strategies in LegacyCaptureStrategy."
            )
        self.strategy = strategy
        inner = self._chain()[-1]
        self.arrays_key = getattr(inner, "arrayrecord_key", "arrays")
        self.config_key = getattr(inner, "configrecord_key", "config")
        self.num_examples_key = num_examples_key or getattr(inner, "weighted_by_key", "num-examples")
        self.capture = _Capture(out, rounds, clients, self._describe())

    def _chain(self) -> list[Strategy]:
        """The wrapped strategy and those under it, outermost first (Flower's DP wrappers hold theirs in .strategy)."""
        chain, inner = [], self.strategy
        while isinstance(inner, Strategy):
            chain.append(inner)
            inner = getattr(inner, "strategy", None)
        return chain

    def _describe(self) -> str:
        """The wrapped strategies by class, outermost first, e.g. ``"DPWrapper(FedAvg)"``."""
        names = [type(s).__name__ for s in self._chain()]
        return "(".join(names) + ")" * (len(names) - 1)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages; for a captured round, the global arrays and sent config are recorded."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.capture.captured(server_round) and messages:
            configs = {int(m.metadata.dst_node_id): self._config_of(m, config) for m in messages}
            sent = messages[0].content
            record = sent[self.arrays_key] if self.arrays_key in sent.array_records else arrays
            self.capture.sent(server_round, _arrays(record), configs, int(messages[0].metadata.dst_node_id))
        return messages

    def _config_of(self, message: Message, default: ConfigRecord) -> dict[str, Any]:
        """The train configuration a message carries (the one given to the wrapped strategy if it carries none)."""
        content = message.content
        return dict(content[self.config_key]) if self.config_key in content.config_records else dict(default)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregate; each reply of a captured round is recorded as it is handed on."""
        if not self.capture.captured(server_round):
            return self.strategy.aggregate_train(server_round, replies)
        stream = self._record(server_round, replies)
        result = self.strategy.aggregate_train(server_round, stream)
        for _ in stream:  # replies the wrapped strategy did not look at are captured too
            pass
        return result

    def _record(self, server_round: int, replies: Iterable[Message]) -> Iterator[Message]:
        for message in replies:
            content = message.content if not message.has_error() else None
            if content is not None and self.arrays_key in content.array_records:
                metrics = dict(content.metric_records.get("metrics", MetricRecord()))
                node = int(message.metadata.src_node_id)
                arrays = _arrays(content[self.arrays_key])
                self.capture.reply(server_round, node, arrays, metrics.get(self.num_examples_key), metrics)
            yield message

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's evaluation aggregate, also recorded in the capture index (every round)."""
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.capture.writer.write_round_metrics(server_round, "evaluate", dict(metrics))
        return metrics

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.strategy.summary()

    def __getattr__(self, name: str) -> Any:
        # Attributes the wrapped strategy offers (e.g. fraction_train) read through the wrapper.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)


class LegacyCaptureStrategy(legacy.Strategy):
    """
    :class:`CaptureStrategy` for a strategy of Flower's legacy API (``flwr.server.strategy.Strategy``).

    :param strategy: The legacy strategy of the run (used unchanged).
    :param out: The capture folder (created; an existing capture of the same run there is continued).
    :param names: The names of the arrays in the order the clients send them (the model's ``state_dict`` keys, as
                  Flower's PyTorch examples send ``state_dict().values()``).
    :param rounds: Server rounds to capture, from 1 (``None``: every round).
    :param clients: Client node ids to capture (``None``: every client that replies).
    """

    def __init__(
        self,
        strategy: legacy.Strategy,
        out: str | Path,
        names: Sequence[str],
        rounds: Sequence[int] | None = None,
        clients: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(strategy, legacy.Strategy):
            raise ValueError(
                f"strategy must be a legacy Flower strategy (flwr.server.strategy.Strategy), got "
                f"{type(strategy).__name__}; wrap Message-API strategies in CaptureStrategy."
            )
        if isinstance(names, str | bytes) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError("names must be the model's array names (list(model.state_dict())), in the order sent.")
        self.strategy = strategy
        self.names = list(names)
        self.capture = _Capture(out, rounds, clients, type(strategy).__name__)

    def _named(self, parameters: Any, where: str) -> dict[str, Any]:
        arrays = parameters_to_ndarrays(parameters)
        if len(arrays) != len(self.names):
            raise ValueError(
                f"{where}: {len(arrays)} arrays, but names lists {len(self.names)}: pass the names of every array the "
                "clients send (list(model.state_dict()) of the model they train)."
            )
        return dict(zip(self.names, arrays, strict=True))

    def initialize_parameters(self, client_manager: Any) -> Any:
        """The wrapped strategy's initial parameters."""
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
        """The wrapped strategy's fit instructions; for a captured round, the parameters and configs are recorded."""
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if self.capture.captured(server_round) and instructions:
            configs = {_node(proxy): dict(fit_ins.config) for proxy, fit_ins in instructions}
            arrays = self._named(instructions[0][1].parameters, f"round {server_round}, global parameters")
            self.capture.sent(server_round, arrays, configs, _node(instructions[0][0]))
        return instructions

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]
    ) -> tuple[Any, dict[str, Any]]:
        """The wrapped strategy's aggregate; each result of a captured round is recorded first, one at a time."""
        if self.capture.captured(server_round):
            for proxy, fit_res in results:
                node = _node(proxy)
                arrays = self._named(fit_res.parameters, f"round {server_round}, node {node}")
                self.capture.reply(server_round, node, arrays, fit_res.num_examples, dict(fit_res.metrics))
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
        """The wrapped strategy's evaluation instructions."""
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]
    ) -> tuple[float | None, dict[str, Any]]:
        """The wrapped strategy's evaluation aggregate, also recorded in the capture index (loss and metrics)."""
        loss, metrics = self.strategy.aggregate_evaluate(server_round, results, failures)
        if loss is not None or metrics:
            self.capture.writer.write_round_metrics(server_round, "evaluate", {"loss": loss, **dict(metrics or {})})
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Any) -> tuple[float, dict[str, Any]] | None:
        """The wrapped strategy's server-side evaluation."""
        return self.strategy.evaluate(server_round, parameters)
