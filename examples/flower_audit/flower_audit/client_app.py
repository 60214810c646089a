"""The ClientApp: trains locally on its partition with the configuration the server sends."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from flower_audit.task import accuracy, build_model, partition, train


def _train(msg: Message, context: Context) -> Message:
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])
    x, y = partition(pid)
    config = msg.content["config"]
    loss = train(model, x, y, float(config["lr"]), int(config["local-epochs"]), int(config["batch-size"]))
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(x), "partition-id": pid})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def _evaluate(msg: Message, context: Context) -> Message:
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    from art_gifd.data import load_mnist32

    x, y = load_mnist32("train")
    pid = int(context.node_config["partition-id"])
    x, y = x[200 * pid : 200 * (pid + 1)], y[200 * pid : 200 * (pid + 1)]
    metrics = MetricRecord({"accuracy": accuracy(model, x, y), "num-examples": len(x)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


app = ClientApp()
app.train()(_train)
app.evaluate()(_evaluate)

#: The same client behind Flower's client-side fixed clipping (for the DP run: the server adds the noise). The mod
#: wraps training only: on evaluation messages, which carry no clipping norm, it would answer with an error.
dp_app = ClientApp()
dp_app.train(mods=[fixedclipping_mod])(_train)
dp_app.evaluate()(_evaluate)
